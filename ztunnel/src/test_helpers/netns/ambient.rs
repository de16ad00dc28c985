//! The ambient capture path end to end (Linux, root): per node a `redirect-agent` and a
//! shared-mode `ztunnel`, pods enrolled by the `mesh-cni` plugin invoked the way a container
//! runtime invokes it, and `istiod-compat` on the local-files registry in node1's netns.
//!
//! Per node (all names carry the topology prefix, so parallel tests never share anything):
//! - a cgroup `<cgroup2>/<prefix>/<node>` (the agent's `CGROUP_PATH`) holding the node's
//!   ztunnel, and one sub-cgroup per pod holding the pod's processes;
//! - a bpffs pin directory `/sys/fs/bpf/<prefix>-<node>` (bpffs is mounted if needed);
//! - a state directory and the two unix sockets (ZDS, CNI events) under the work directory.
//!
//! The agent and the ztunnel run in the node's netns (the node's "host network") and cgroup.
//! The registry file [`REGISTRY_FILE`] is rewritten from the pods and namespaces known here;
//! both istiod-compat and the agents read it (enrollment = `istio.io/dataplane-mode` label of
//! the pod or its namespace).

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

use serde_json::json;

use super::{
    CLUSTER_ID, ControlPlane, LoggedProc, Node, OrPanic, Pod, READY_TIMEOUT, TRUST_DOMAIN,
    Topology, eventually, istiod_compat_bin, lock,
};

mod registry;
mod system;
mod workload;

use registry::{PodEntry, Registry};
pub use system::{cgroup_of, cgroup2_mount, http_get, netfilter_rules};
use system::{cleanup_stale_ambient, mount_bpffs, remove_cgroup_tree};
use workload::in_netns_and_cgroup;
pub use workload::{PodEchoServer, PodShell};

/// The registry file the harness writes (nodes, namespaces, pods).
pub const REGISTRY_FILE: &str = "10-mesh.yaml";
/// Pod/namespace label deciding enrollment.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The agent's readiness endpoint inside the node netns (`READINESS_ADDR`).
pub const AGENT_READINESS_ADDR: &str = "127.0.0.1:8000";
/// ztunnel's readiness port (in the node netns: its own netns in shared mode).
pub const ZTUNNEL_READINESS_PORT: u16 = 15021;
/// ztunnel's metrics port.
pub const ZTUNNEL_METRICS_PORT: u16 = 15020;
/// The node proxy's own workload identity (trusted by istiod-compat to impersonate pods).
pub const ZTUNNEL_NAMESPACE: &str = "istio-system";
/// Service account of the node proxy.
pub const ZTUNNEL_SERVICE_ACCOUNT: &str = "ztunnel";
const BPFFS: &str = "/sys/fs/bpf";

static BPFFS_MOUNT: Once = Once::new();
static STALE_CLEANUP: Once = Once::new();

/// The four binaries of the capture path. Integration tests only get `CARGO_BIN_EXE_*` for
/// their own package, so the others are taken from the same directory as `ztunnel`.
#[derive(Debug, Clone)]
pub struct AmbientBins {
    /// `ztunnel`.
    pub ztunnel: PathBuf,
    /// `istiod-compat`.
    pub istiod_compat: PathBuf,
    /// `redirect-agent`.
    pub agent: PathBuf,
    /// `mesh-cni`.
    pub cni: PathBuf,
}

impl AmbientBins {
    /// The binaries next to `ztunnel`; panics with the build command when one is missing.
    pub fn next_to(ztunnel: impl Into<PathBuf>) -> AmbientBins {
        let ztunnel = ztunnel.into();
        let sibling = |name: &str, package: &str| {
            let bin = ztunnel.with_file_name(name);
            if !bin.is_file() {
                panic!(
                    "{} does not exist: build it first with `cargo build -p {package} --bins` \
                     (same profile and target directory as this test; `cargo test --workspace` \
                     builds it by itself)",
                    bin.display()
                );
            }
            bin
        };
        AmbientBins {
            istiod_compat: istiod_compat_bin(&ztunnel),
            agent: sibling("redirect-agent", "redirect-agent"),
            cni: sibling("mesh-cni", "mesh-cni"),
            ztunnel,
        }
    }
}

/// How the agent redirects pod traffic (`REDIRECT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectMode {
    /// cgroup + sk_lookup eBPF programs.
    Ebpf,
    /// An nftables table inside each enrolled pod's netns.
    Nftables,
}

impl RedirectMode {
    /// The `REDIRECT_MODE` value.
    pub fn as_env(self) -> &'static str {
        match self {
            RedirectMode::Ebpf => "ebpf",
            RedirectMode::Nftables => "nftables",
        }
    }
}

/// One node of an [`Ambient`] mesh: its netns, cgroup, pin directory, sockets and the two
/// node-level processes.
pub struct AmbientNode {
    /// The node (netns, addresses).
    pub node: Node,
    /// `CGROUP_PATH` of the agent; the node's ztunnel runs in it, pods in sub-cgroups.
    pub cgroup: PathBuf,
    /// `BPF_PIN_DIR`.
    pub pin_dir: PathBuf,
    /// `STATE_DIR`.
    pub state_dir: PathBuf,
    /// `ZDS_SOCKET` = ztunnel's `INPOD_UDS`.
    pub zds_socket: PathBuf,
    /// `CNI_EVENT_SOCKET`.
    pub cni_socket: PathBuf,
    agent: Option<LoggedProc>,
    ztunnel: Option<LoggedProc>,
}

/// A pod of an [`Ambient`] mesh: its netns (a [`Pod`]), its cgroup and its sandbox ids.
#[derive(Debug, Clone)]
pub struct AmbientPod {
    /// The pod's netns, IP and workload identity.
    pub pod: Pod,
    /// The pod's cgroup (under its node's cgroup).
    pub cgroup: PathBuf,
    /// `metadata.uid` (`K8S_POD_UID`).
    pub uid: String,
    /// The sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    node_index: usize,
}

/// What a CNI plugin invocation returned.
#[derive(Debug)]
pub struct CniOutcome {
    /// Exit status.
    pub success: bool,
    /// Stdout (the result or error JSON).
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// Two nodes with an agent and a shared-mode ztunnel each, istiod-compat on node1, and the
/// pods added with [`Ambient::add_pod`]. Tears everything down on drop: processes, pins,
/// cgroups, then the namespaces.
pub struct Ambient {
    nodes: Vec<AmbientNode>,
    istiod: Option<LoggedProc>,
    cp: ControlPlane,
    registry: Mutex<Registry>,
    bins: AmbientBins,
    mode: RedirectMode,
    ztunnel_env: Vec<(String, String)>,
    cgroup_root: PathBuf,
    topo: Topology,
}

impl Ambient {
    /// Builds the two nodes, starts istiod-compat, then per node the agent (waiting for its
    /// `/readyz`) and the shared-mode ztunnel (waiting for its `/healthz/ready`).
    pub fn new(name: &str, bins: AmbientBins, mode: RedirectMode) -> Ambient {
        Ambient::with_ztunnel_env(name, bins, mode, &[])
    }

    /// Like [`Ambient::new`], with extra environment variables for both ztunnels (e.g.
    /// `("RUST_LOG", "debug")`); they override the harness's own.
    pub fn with_ztunnel_env(
        name: &str,
        bins: AmbientBins,
        mode: RedirectMode,
        ztunnel_env: &[(&str, &str)],
    ) -> Ambient {
        let mut topo = Topology::new(name).with_ztunnel_bin(&bins.ztunnel);
        STALE_CLEANUP.call_once(cleanup_stale_ambient);
        mount_bpffs();
        let cgroup_root = cgroup2_mount().join(&topo.prefix);
        fs::create_dir_all(&cgroup_root)
            .or_panic(|| format!("creating cgroup {}", cgroup_root.display()));
        let node1 = topo.add_node("node1");
        let node2 = topo.add_node("node2");
        let cp = topo.control_plane(&bins.istiod_compat, &node1);
        let mut nodes = Vec::new();
        for node in [node1, node2] {
            let dir = topo.work_dir().join(&node.name);
            let state_dir = dir.join("state");
            fs::create_dir_all(&state_dir).or_panic(|| format!("creating {}", state_dir.display()));
            let cgroup = cgroup_root.join(&node.name);
            fs::create_dir_all(&cgroup)
                .or_panic(|| format!("creating cgroup {}", cgroup.display()));
            nodes.push(AmbientNode {
                pin_dir: Path::new(BPFFS).join(format!("{}-{}", topo.prefix, node.name)),
                zds_socket: dir.join("zds.sock"),
                cni_socket: dir.join("cni.sock"),
                state_dir,
                cgroup,
                node,
                agent: None,
                ztunnel: None,
            });
        }
        let mut mesh = Ambient {
            nodes,
            istiod: None,
            cp,
            registry: Mutex::new(Registry::default()),
            bins,
            mode,
            ztunnel_env: ztunnel_env
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            cgroup_root,
            topo,
        };
        mesh.sync_registry();
        mesh.istiod = Some(mesh.cp.start());
        for index in 0..mesh.nodes.len() {
            mesh.start_agent(index);
            mesh.start_ztunnel(index);
        }
        mesh
    }

    /// The topology (captures, node access).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The control plane (registry directory for policy files).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The control plane process.
    pub fn istiod(&self) -> &LoggedProc {
        self.istiod
            .as_ref()
            .unwrap_or_else(|| panic!("istiod-compat is not running"))
    }

    /// The redirect mode of the agents.
    pub fn mode(&self) -> RedirectMode {
        self.mode
    }

    /// Node `index` (0 or 1).
    pub fn node(&self, index: usize) -> &AmbientNode {
        &self.nodes[index]
    }

    /// The node's shared-mode ztunnel.
    pub fn ztunnel(&self, index: usize) -> &LoggedProc {
        self.nodes[index]
            .ztunnel
            .as_ref()
            .unwrap_or_else(|| panic!("ztunnel of node {index} is not running"))
    }

    /// The node's agent.
    pub fn agent(&self, index: usize) -> &LoggedProc {
        self.nodes[index]
            .agent
            .as_ref()
            .unwrap_or_else(|| panic!("agent of node {index} is not running"))
    }

    fn agent_command(&self, index: usize) -> Command {
        let n = &self.nodes[index];
        let mut cmd = in_netns_and_cgroup(&n.node.netns_path(), &n.cgroup, &self.bins.agent);
        cmd.env("NODE_NAME", &n.node.name)
            .env("REDIRECT_MODE", self.mode.as_env())
            .env("ZDS_SOCKET", &n.zds_socket)
            .env("CNI_EVENT_SOCKET", &n.cni_socket)
            .env("BPF_PIN_DIR", &n.pin_dir)
            .env("CGROUP_PATH", &n.cgroup)
            .env("REGISTRY", "files")
            .env("LOCAL_DIR", self.cp.registry_dir())
            .env("STATE_DIR", &n.state_dir)
            .env("READINESS_ADDR", AGENT_READINESS_ADDR)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// Starts (or restarts) the node's agent and waits until `/readyz` answers 200.
    pub fn start_agent(&mut self, index: usize) {
        let mut cmd = self.agent_command(index);
        cmd.arg("run");
        let label = format!("redirect-agent on {}", self.nodes[index].node.name);
        let proc = LoggedProc::spawn(cmd, label.clone());
        let ready_addr: SocketAddr = AGENT_READINESS_ADDR
            .parse()
            .or_panic(|| "AGENT_READINESS_ADDR".to_owned());
        let node = self.nodes[index].node.clone();
        let ready = eventually(READY_TIMEOUT, || {
            !proc.is_running() || http_get(&node, ready_addr, "/readyz").is_ok_and(|r| r.0 == 200)
        });
        if !ready || !proc.is_running() {
            panic!(
                "{label} did not answer 200 on http://{AGENT_READINESS_ADDR}/readyz within \
                 {READY_TIMEOUT:?} ({}); its log:\n{}",
                match proc.exit_status() {
                    Some(status) => format!("exited: {status}"),
                    None => "still running".to_owned(),
                },
                proc.log_text()
            );
        }
        self.nodes[index].agent = Some(proc);
    }

    /// Kills the node's agent with SIGKILL (no cleanup on its side).
    pub fn kill_agent(&mut self, index: usize) {
        if let Some(agent) = self.nodes[index].agent.take() {
            agent.kill();
        }
    }

    /// The node proxy's own identity as a [`Pod`] (for its istiod-compat token).
    fn ztunnel_identity(&self, index: usize) -> Pod {
        let node = &self.nodes[index].node;
        Pod {
            name: format!("ztunnel-{}", node.name),
            namespace: ZTUNNEL_NAMESPACE.to_owned(),
            service_account: ZTUNNEL_SERVICE_ACCOUNT.to_owned(),
            node: node.name.clone(),
            netns: node.netns.clone(),
            ip: node.gateway,
        }
    }

    fn start_ztunnel(&mut self, index: usize) {
        let identity = self.ztunnel_identity(index);
        let n = &self.nodes[index];
        let mut cmd = in_netns_and_cgroup(&n.node.netns_path(), &n.cgroup, &self.bins.ztunnel);
        cmd.arg("proxy");
        for (key, value) in self.cp.proxy_env(&identity) {
            if value.is_empty() {
                cmd.env_remove(key);
            } else {
                cmd.env(key, value);
            }
        }
        cmd.env("PROXY_MODE", "shared")
            .env_remove("PROXY_WORKLOAD_INFO")
            .env("INPOD_UDS", &n.zds_socket)
            .env("SERVICE_ACCOUNT", ZTUNNEL_SERVICE_ACCOUNT)
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("CLUSTER_ID", CLUSTER_ID)
            .env("RUST_LOG", "info,ztunnel::xds=debug")
            .env("NO_COLOR", "1");
        for (key, value) in &self.ztunnel_env {
            cmd.env(key, value);
        }
        let label = format!("shared ztunnel on {}", n.node.name);
        let proc = LoggedProc::spawn(cmd, label);
        self.nodes[index].ztunnel = Some(proc);
        self.wait_ztunnel_ready(index);
    }

    /// Waits until the node's ztunnel answers 200 on `/healthz/ready` (xDS synced, ZDS
    /// snapshot received, no pod pending); panics with its log otherwise.
    pub fn wait_ztunnel_ready(&self, index: usize) {
        let proc = self.ztunnel(index);
        let node = &self.nodes[index].node;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ZTUNNEL_READINESS_PORT));
        let mut last = String::new();
        let ready = eventually(READY_TIMEOUT, || {
            if !proc.is_running() {
                return true;
            }
            match http_get(node, addr, "/healthz/ready") {
                Ok((200, _)) => true,
                Ok((status, body)) => {
                    last = format!("{status} {}", body.trim());
                    false
                }
                Err(err) => {
                    last = err.to_string();
                    false
                }
            }
        });
        if !ready || !proc.is_running() {
            panic!(
                "shared ztunnel on {} is not ready within {READY_TIMEOUT:?} (last answer: \
                 {last}; {}); its log:\n{}",
                node.name,
                match proc.exit_status() {
                    Some(status) => format!("exited: {status}"),
                    None => "still running".to_owned(),
                },
                proc.log_text()
            );
        }
    }

    /// The node ztunnel's `/metrics` text.
    pub fn ztunnel_metrics(&self, index: usize) -> String {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ZTUNNEL_METRICS_PORT));
        match http_get(&self.nodes[index].node, addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET /metrics of ztunnel {index}: {other:?}"),
        }
    }

    /// Adds a pod on node `node_index` as `<namespace>/<name>` (service account `<name>`)
    /// with an optional pod label `istio.io/dataplane-mode`: creates its netns + veth and its
    /// cgroup, writes it to the registry, then runs the CNI ADD (which must succeed) and
    /// waits for the node's ztunnel to be ready again (no pod pending).
    pub fn add_pod(
        &mut self,
        node_index: usize,
        name: &str,
        namespace: &str,
        mode_label: Option<&str>,
    ) -> AmbientPod {
        let (pod, outcome) = self.try_add_pod(node_index, name, namespace, mode_label);
        assert!(
            outcome.success,
            "CNI ADD for pod {} failed: stdout {} stderr {}\nagent log:\n{}",
            pod.pod.name,
            outcome.stdout,
            outcome.stderr,
            self.agent(node_index).log_text()
        );
        self.wait_ztunnel_ready(node_index);
        pod
    }

    /// Like [`Ambient::add_pod`], but returns what the CNI ADD returned instead of requiring
    /// success, and does not wait for the ztunnel.
    pub fn try_add_pod(
        &mut self,
        node_index: usize,
        name: &str,
        namespace: &str,
        mode_label: Option<&str>,
    ) -> (AmbientPod, CniOutcome) {
        let node = self.nodes[node_index].node.clone();
        let pod = self.topo.add_pod_as(&node, name, namespace, name);
        let cgroup = self.nodes[node_index].cgroup.join(format!("pod-{name}"));
        fs::create_dir_all(&cgroup).or_panic(|| format!("creating cgroup {}", cgroup.display()));
        let pod = AmbientPod {
            uid: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                rand::random::<u32>(),
                rand::random::<u16>(),
                rand::random::<u16>() & 0xfff,
                rand::random::<u16>() & 0xfff,
                rand::random::<u64>() & 0xffff_ffff_ffff
            ),
            container_id: format!("{:064x}", rand::random::<u128>()),
            pod,
            cgroup,
            node_index,
        };
        {
            let mut registry = lock(&self.registry);
            registry
                .namespaces
                .entry(namespace.to_owned())
                .or_insert(None);
            registry.pods.push(PodEntry {
                pod: pod.clone(),
                mode_label: mode_label.map(str::to_owned),
            });
        }
        self.sync_registry();
        let outcome = self.cni(&pod, "ADD");
        (pod, outcome)
    }

    /// Removes the pod from the registry and runs the CNI DEL (which must succeed).
    pub fn delete_pod(&self, pod: &AmbientPod) {
        let outcome = self.cni(pod, "DEL");
        assert!(
            outcome.success,
            "CNI DEL for pod {} failed: {outcome:?}",
            pod.pod.name
        );
        lock(&self.registry).pods.retain(|e| e.pod.uid != pod.uid);
        self.sync_registry();
    }

    /// Runs the `mesh-cni` plugin for `pod` the way a runtime does: in the node's netns,
    /// `CNI_*` variables set, the chained network configuration (with a bridge-plugin
    /// `prevResult`) on stdin.
    pub fn cni(&self, pod: &AmbientPod, command: &str) -> CniOutcome {
        let n = &self.nodes[pod.node_index];
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "ztt-pods",
            "type": "mesh-cni",
            "agent_socket": n.cni_socket,
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    { "name": "br0" },
                    { "name": "eth0", "sandbox": pod.pod.netns_path() },
                ],
                "ips": [{
                    "address": format!("{}/24", pod.pod.ip),
                    "gateway": n.node.gateway.to_string(),
                    "interface": 1,
                }],
                "routes": [{ "dst": "0.0.0.0/0", "gw": n.node.gateway.to_string() }],
                "dns": {},
            },
        });
        let bin_dir = self
            .bins
            .cni
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", n.node.netns_path().display()))
            .arg("--")
            .arg(&self.bins.cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.pod.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
                     K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.pod.namespace, pod.pod.name, pod.container_id, pod.uid
                ),
            )
            .env("CNI_PATH", bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .or_panic(|| format!("starting {}", self.bins.cni.display()));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .or_panic(|| "writing the CNI config to the plugin".to_owned());
        }
        let out = child
            .wait_with_output()
            .or_panic(|| format!("waiting for CNI {command}"));
        CniOutcome {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Ambient {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.ztunnel = None;
            n.agent = None;
        }
        self.istiod = None;
        // Detach and unpin what the agents left (their own uninstall), then remove the pins.
        for index in 0..self.nodes.len() {
            let mut cmd = self.agent_command(index);
            cmd.arg("uninstall");
            match cmd.output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "ambient harness: `redirect-agent uninstall` on {}: {}",
                    self.nodes[index].node.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("ambient harness: redirect-agent uninstall: {err}"),
            }
            let _ = fs::remove_dir_all(&self.nodes[index].pin_dir);
        }
        remove_cgroup_tree(&self.cgroup_root);
    }
}
