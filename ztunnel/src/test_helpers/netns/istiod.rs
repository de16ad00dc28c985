//! The real `istiod-compat` binary as its own process in a node netns, on the local-files
//! registry: Kubernetes objects, per-pod bearer tokens and a plug-in CA directory, all under
//! the topology's work directory.
//!
//! It listens on `0.0.0.0` in the node's netns; proxies dial the node's bridge address
//! ([`ControlPlane::address`], `https://10.0.1.1:15012` on node1). Pods of that node reach it
//! on their own subnet, pods of the other node through the node link (each node routes the
//! other's pod subnet), and the in-pod redirect rules let the proxies' sockets through
//! because they carry the proxy mark (0x539).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::{
    LoggedProc, Node, OrPanic, Pod, READY_TIMEOUT, TRUST_DOMAIN, Topology, ZtunnelProc, lock,
    nsenter,
};

/// Plaintext gRPC port (ADS + CA) of the control plane.
pub const XDS_PLAINTEXT_PORT: u16 = 15010;
/// TLS gRPC port (ADS + CA): what the proxies dial.
pub const XDS_TLS_PORT: u16 = 15012;
/// Monitoring port (`/ready`, `/metrics`).
pub const MONITORING_PORT: u16 = 15014;
/// `istiod-compat` logs this once its listeners are bound.
pub const LOG_ISTIOD_SERVING: &str = "istiod-compat serving";
/// `istiod-compat` logs this once the first registry snapshot is translated (`/ready`).
pub const LOG_ISTIOD_READY: &str = "first snapshot translated: ready";
/// Cluster id of the control plane and of the proxies using it.
pub const CLUSTER_ID: &str = "Kubernetes";

/// The `istiod-compat` binary built next to `ztunnel_bin` (integration tests only get
/// `CARGO_BIN_EXE_*` for their own package's binaries). Panics with the command to build it
/// when it is missing.
pub fn istiod_compat_bin(ztunnel_bin: &Path) -> PathBuf {
    let bin = ztunnel_bin.with_file_name("istiod-compat");
    if !bin.is_file() {
        panic!(
            "{} does not exist: `cargo test --workspace` builds it; otherwise build it first \
             with `cargo build -p istiod-compat` (same profile and target directory as this \
             test)",
            bin.display()
        );
    }
    bin
}

/// An `istiod-compat` configuration for one node of a [`Topology`]: its files (registry
/// directory, tokens, CA directory) and how to start it. Start it with
/// [`ControlPlane::start`]; restarting it with the same files keeps the CA and addresses.
pub struct ControlPlane {
    bin: PathBuf,
    node: Node,
    dir: PathBuf,
    /// `tokens.yaml` entries so far.
    tokens: Mutex<Vec<Value>>,
}

impl Topology {
    /// A control plane to run on `node` with the binary `bin` (see [`istiod_compat_bin`]);
    /// creates its empty registry directory, CA directory and token list.
    pub fn control_plane(&self, bin: impl Into<PathBuf>, node: &Node) -> ControlPlane {
        let dir = self.work_dir().join("istiod-compat");
        for sub in ["registry", "ca", "tokens"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).or_panic(|| format!("creating {}", path.display()));
        }
        let cp = ControlPlane {
            bin: bin.into(),
            node: node.clone(),
            dir,
            tokens: Mutex::new(Vec::new()),
        };
        cp.write_tokens(&[]);
        cp
    }

    /// Starts the pod's dedicated-mode `ztunnel` on the control plane only (no local config
    /// file, no local CA), with its own bearer token, and waits for `proxy ready` (which
    /// needs the first xDS sync). `env` adds or overrides variables as in
    /// [`Topology::start_ztunnel`].
    pub fn start_ztunnel_with_control_plane(
        &self,
        pod: &Pod,
        cp: &ControlPlane,
        env: &[(&str, &str)],
    ) -> ZtunnelProc {
        let mut all = cp.proxy_env(pod);
        all.extend(env.iter().map(|&(k, v)| (k, v.to_owned())));
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.start_ztunnel(pod, &refs)
    }
}

impl ControlPlane {
    /// The node it runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// `XDS_ADDRESS`/`CA_ADDRESS` for the proxies: `https://<node bridge IP>:15012`.
    pub fn address(&self) -> String {
        format!("https://{}:{XDS_TLS_PORT}", self.node.gateway)
    }

    /// `LOCAL_DIR`: Kubernetes YAML files, re-read by the control plane when they change.
    pub fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }

    /// `CA_DIR`: the plug-in CA directory (a self-signed root is created on first start).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// `TOKENS_FILE`.
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.join("tokens.yaml")
    }

    /// The root certificate proxies verify the control plane with (`XDS_ROOT_CA`,
    /// `CA_ROOT_CA`): `root-cert.pem` of the CA directory, or `ca-cert.pem` when the CA is
    /// its own root (as created on first start).
    pub fn root_cert(&self) -> PathBuf {
        let ca = self.ca_dir();
        ["root-cert.pem", "ca-cert.pem"]
            .into_iter()
            .map(|name| ca.join(name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{} holds no root certificate yet: start the control plane once first",
                    ca.display()
                )
            })
    }

    /// Atomically writes `name` (e.g. `10-pods.yaml`) in the registry directory: the temp
    /// file starts with `.`, which the registry skips.
    pub fn write_registry_file(&self, name: &str, contents: &str) {
        let path = self.registry_dir().join(name);
        let tmp = self.registry_dir().join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).or_panic(|| format!("writing {}", tmp.display()));
        fs::rename(&tmp, &path).or_panic(|| format!("renaming to {}", path.display()));
    }

    /// Removes `name` from the registry directory.
    pub fn remove_registry_file(&self, name: &str) {
        let path = self.registry_dir().join(name);
        fs::remove_file(&path).or_panic(|| format!("removing {}", path.display()));
    }

    /// The pod's bearer token file (`AUTH_TOKEN`), listed in `tokens.yaml` with the pod's
    /// namespace, service account and node; created on first use.
    pub fn token_file(&self, pod: &Pod) -> PathBuf {
        let path = self
            .dir
            .join("tokens")
            .join(format!("{}.{}.token", pod.namespace, pod.name));
        let mut tokens = lock(&self.tokens);
        if !path.is_file() {
            let token = format!("ztt-{}-{:032x}", pod.name, rand::random::<u128>());
            fs::write(&path, &token).or_panic(|| format!("writing {}", path.display()));
            tokens.push(json!({
                "token": token,
                "namespace": pod.namespace,
                "serviceAccount": pod.service_account,
                "node": pod.node,
            }));
            self.write_tokens(&tokens);
        }
        path
    }

    fn write_tokens(&self, entries: &[Value]) {
        let path = self.tokens_file();
        let tmp = path.with_extension("yaml.tmp");
        let text = serde_yaml::to_string(entries).or_panic(|| "serializing tokens".to_owned());
        fs::write(&tmp, text).or_panic(|| format!("writing {}", tmp.display()));
        fs::rename(&tmp, &path).or_panic(|| format!("renaming to {}", path.display()));
    }

    /// The environment of a pod's proxy using this control plane only: xDS and CA at
    /// [`ControlPlane::address`], verified with [`ControlPlane::root_cert`], the pod's token,
    /// its xDS node identity; `LOCAL_XDS_PATH` and `LOCAL_CA_DIR` removed.
    pub fn proxy_env(&self, pod: &Pod) -> Vec<(&'static str, String)> {
        let root = self.root_cert().display().to_string();
        vec![
            ("LOCAL_XDS_PATH", String::new()),
            ("LOCAL_CA_DIR", String::new()),
            ("XDS_ADDRESS", self.address()),
            ("CA_ADDRESS", self.address()),
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("AUTH_TOKEN", self.token_file(pod).display().to_string()),
            ("NODE_NAME", pod.node.clone()),
            ("CLUSTER_ID", CLUSTER_ID.to_owned()),
            ("POD_NAME", pod.name.clone()),
            ("POD_NAMESPACE", pod.namespace.clone()),
            ("INSTANCE_IP", pod.ip.to_string()),
        ]
    }

    /// Starts `istiod-compat serve` in the node's netns on 0.0.0.0 (15010, 15012, 15014;
    /// the serving certificate also names the node's bridge IP) and waits until it is bound
    /// and has translated its first snapshot.
    pub fn start(&self) -> LoggedProc {
        let mut cmd = nsenter(&self.node.netns);
        cmd.arg(&self.bin)
            .arg("serve")
            .env("REGISTRY", "files")
            .env("LOCAL_DIR", self.registry_dir())
            .env("TOKENS_FILE", self.tokens_file())
            .env("CA_DIR", self.ca_dir())
            .env("CLUSTER_ID", CLUSTER_ID)
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env(
                "XDS_PLAINTEXT_ADDR",
                format!("0.0.0.0:{XDS_PLAINTEXT_PORT}"),
            )
            .env("XDS_TLS_ADDR", format!("0.0.0.0:{XDS_TLS_PORT}"))
            .env("MONITORING_ADDR", format!("0.0.0.0:{MONITORING_PORT}"))
            .env("SERVING_CERT_SANS", self.node.gateway.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let proc = LoggedProc::spawn(cmd, format!("istiod-compat in node {}", self.node.name));
        proc.wait_for_log(LOG_ISTIOD_SERVING, READY_TIMEOUT);
        proc.wait_for_log(LOG_ISTIOD_READY, READY_TIMEOUT);
        proc
    }
}

/// Kubernetes objects for the registry directory, as multi-document YAML.
#[derive(Debug, Clone, Default)]
pub struct RegistryObjects {
    docs: Vec<Value>,
}

impl RegistryObjects {
    /// No objects.
    pub fn new() -> RegistryObjects {
        RegistryObjects::default()
    }

    /// The pods, their nodes and their namespaces (enrolled in ambient), each once.
    pub fn ambient_pods(self, pods: &[&Pod]) -> RegistryObjects {
        let mut objects = self;
        let mut seen = Vec::new();
        for pod in pods {
            for (kind, name) in [("Node", &pod.node), ("Namespace", &pod.namespace)] {
                if !seen.contains(&(kind, name)) {
                    seen.push((kind, name));
                    objects.docs.push(cluster_object(kind, name));
                }
            }
        }
        for pod in pods {
            objects = objects.pod(pod);
        }
        objects
    }

    /// A pod (label `app: <name>`) on its node with its service account and IP; the
    /// registry fills in phase Running and Ready.
    pub fn pod(mut self, pod: &Pod) -> RegistryObjects {
        self.docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": { "app": pod.name },
            },
            "spec": {
                "nodeName": pod.node,
                "serviceAccountName": pod.service_account,
                "containers": [{ "name": "app", "image": "app" }],
            },
            "status": { "podIP": pod.ip.to_string() },
        }));
        self
    }

    /// A Service named after `pod` selecting it: `cluster_ip:port` → `target_port`.
    pub fn service(
        mut self,
        pod: &Pod,
        cluster_ip: std::net::Ipv4Addr,
        port: u16,
        target_port: u16,
    ) -> RegistryObjects {
        self.docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": pod.name, "namespace": pod.namespace },
            "spec": {
                "clusterIP": cluster_ip.to_string(),
                "selector": { "app": pod.name },
                "ports": [{ "name": "tcp", "port": port, "targetPort": target_port }],
            },
        }));
        self
    }

    /// A namespace-wide AuthorizationPolicy `action` (`ALLOW`/`DENY`) for callers with one
    /// of `principals` (`cluster.local/ns/<ns>/sa/<sa>`).
    pub fn authorization_policy(
        mut self,
        name: &str,
        namespace: &str,
        action: &str,
        principals: &[String],
    ) -> RegistryObjects {
        self.docs.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": { "name": name, "namespace": namespace },
            "spec": {
                "action": action,
                "rules": [{ "from": [{ "source": { "principals": principals } }] }],
            },
        }));
        self
    }

    /// The YAML documents, `---`-separated.
    pub fn to_yaml(&self) -> String {
        self.docs
            .iter()
            .map(|doc| serde_yaml::to_string(doc).or_panic(|| format!("serializing {doc}")))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

fn cluster_object(kind: &str, name: &str) -> Value {
    let mut object = json!({ "apiVersion": "v1", "kind": kind, "metadata": { "name": name } });
    if kind == "Namespace" {
        object["metadata"]["labels"] = json!({ "istio.io/dataplane-mode": "ambient" });
    }
    object
}
