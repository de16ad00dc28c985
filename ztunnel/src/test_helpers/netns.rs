//! Network-namespace topology for end-to-end tests (root only; Linux).
//!
//! ```text
//!   pod netns            node1 netns                       node2 netns            pod netns
//!  eth0 10.0.1.x/24 ─veth─ br0 10.0.1.1   uplink ══════ uplink   br0 10.0.2.1 ─veth─ eth0 10.0.2.x/24
//!                                       172.31.255.1/30   172.31.255.2/30
//!                                            (the node link: captures are taken here)
//! ```
//!
//! Every address lives inside namespaces created here; the host netns is never touched. Names
//! are `ztt-<pid>-<n>-<test name>-<role>`, so tests of one process run in parallel and
//! [`cleanup_stale`] can remove what a killed run left behind. Interface names are the same
//! in every namespace (`eth0`, `br0`, `uplink`, `vethN`) because each netns has its own.
//!
//! [`Pod::run_in`] runs a closure on a fresh thread that has `setns`'d into the pod's netns:
//! sockets it creates live there for good, whichever thread uses them later. Processes
//! (`ztunnel`, `tcpdump`, `iptables`) run through `nsenter --net=` (not `ip netns exec`, which
//! remounts /sys). Everything panics with a clear message: this is test code.

use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

mod ambient;
mod capture;
mod istiod;
mod proc;

pub use ambient::{
    Ambient, AmbientBins, AmbientNode, AmbientPod, CniOutcome, PodEchoServer, PodShell,
    RedirectMode, cgroup_of, cgroup2_mount, http_get, netfilter_rules,
};
pub use capture::{Capture, PcapData, TcpSegment};
pub use istiod::{
    CLUSTER_ID, ControlPlane, LOG_ISTIOD_READY, LOG_ISTIOD_SERVING, MONITORING_PORT,
    RegistryObjects, XDS_PLAINTEXT_PORT, XDS_TLS_PORT, istiod_compat_bin,
};
pub use proc::{LoggedProc, ZtunnelProc};

/// Default patience for anything the harness waits on (readiness, config reloads, closes).
pub const PATIENCE: Duration = Duration::from_secs(10);
/// Trust domain of every proxy the harness starts.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Prefix of every netns (and work directory) the harness creates.
pub const NETNS_PREFIX: &str = "ztt-";
/// Istio's in-pod capture script (reference §3.4), run inside a pod netns.
pub const REDIRECT_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/ztunnel-redirect-inpod.sh"
);
/// The proxy logs this once every listener is bound and the config is loaded.
pub const LOG_READY: &str = "proxy ready";
/// The proxy logs this each time it re-reads and applies `LOCAL_XDS_PATH`.
pub const LOG_CONFIG_APPLIED: &str = "local config applied";

const BRIDGE: &str = "br0";
const UPLINK: &str = "uplink";
const NODE_LINK: [Ipv4Addr; 2] = [
    Ipv4Addr::new(172, 31, 255, 1),
    Ipv4Addr::new(172, 31, 255, 2),
];
/// A debug build generating its first certificates can be slow on 2 shared cores.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

/// `Result::unwrap` with a message saying what was being done (test code may panic).
trait OrPanic<T> {
    fn or_panic(self, doing: impl FnOnce() -> String) -> T;
}

impl<T, E: Display> OrPanic<T> for Result<T, E> {
    fn or_panic(self, doing: impl FnOnce() -> String) -> T {
        match self {
            Ok(value) => value,
            Err(err) => panic!("{}: {err}", doing()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Panics with a clear message unless the process runs as root. Namespaced tests call this
/// first: they must fail loudly without privileges, never skip.
pub fn require_root() {
    match fs::metadata("/proc/self").map(|meta| meta.uid()) {
        Ok(0) => {}
        Ok(uid) => panic!(
            "this test needs root (it creates network namespaces, veths and iptables rules) \
             but runs as uid {uid}; run it as root, e.g. `sudo -E cargo test -p ztunnel \
             --test namespaced`. It fails instead of skipping on purpose."
        ),
        Err(err) => panic!("cannot tell whether this process is root (/proc/self: {err})"),
    }
}

/// Polls `condition` with a short backoff until it holds or `timeout` passes; returns whether
/// it held. Only for the rare case where nothing can be waited on (a file being written).
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(5);
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    checked(&mut cmd)
}

fn checked(cmd: &mut Command) -> String {
    let line = format!("{cmd:?}");
    let out = cmd.output().or_panic(|| format!("spawning {line}"));
    if !out.status.success() {
        panic!(
            "{line} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

fn nsenter(netns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(netns).display()))
        .arg("--");
    cmd
}

fn ip(netns: &str, args: &[&str]) {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full);
}

fn sysctl(netns: &str, settings: &[&str]) {
    checked(nsenter(netns).arg("sysctl").arg("-qw").args(settings));
}

fn run_in_netns<R: Send>(netns: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = netns_path(netns);
    let file = File::open(&path).or_panic(|| format!("opening {}", path.display()));
    thread::scope(|scope| {
        let handle = scope.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .or_panic(|| format!("setns into {}", path.display()));
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Two node namespaces joined by one veth link, and pod namespaces hanging off them. Deletes
/// every namespace and its work directory on drop.
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    next_host: Vec<u8>,
    work_dir: PathBuf,
    ztunnel_bin: Option<PathBuf>,
}

/// A node: a netns with a bridge for its pods, routing its pod subnet `10.0.<index>.0/24`.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (`NODE_NAME` of the proxies on it).
    pub name: String,
    /// Name of the node's netns under /run/netns.
    pub netns: String,
    /// 1 or 2: the third octet of the pod subnet.
    pub index: u8,
    /// Bridge address, the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// The node's address on the node-to-node link.
    pub link_ip: Ipv4Addr,
}

/// A pod: a netns with `eth0` on its node's bridge, and the workload identity it runs as.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod (workload) name.
    pub name: String,
    /// Kubernetes namespace of the workload.
    pub namespace: String,
    /// Service account of the workload.
    pub service_account: String,
    /// Name of the node the pod runs on.
    pub node: String,
    /// Name of the pod's netns under /run/netns.
    pub netns: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
}

impl Topology {
    /// An empty topology for the test `name` (also removes namespaces of dead earlier runs).
    pub fn new(name: &str) -> Topology {
        require_root();
        STALE_CLEANUP.call_once(|| cleanup_stale(NETNS_PREFIX));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let short: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let prefix = format!("{NETNS_PREFIX}{}-{id}-{short}", std::process::id());
        let work_dir = std::env::temp_dir().join(&prefix);
        // A leftover of a reused pid would only hold stale files.
        let _ = fs::remove_dir_all(&work_dir);
        fs::create_dir_all(work_dir.join("ca"))
            .or_panic(|| format!("creating {}", work_dir.display()));
        Topology {
            prefix,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            next_host: Vec::new(),
            work_dir,
            ztunnel_bin: None,
        }
    }

    /// Sets the `ztunnel` binary [`Topology::start_ztunnel`] runs (in integration tests
    /// `env!("CARGO_BIN_EXE_ztunnel")`).
    pub fn with_ztunnel_bin(mut self, path: impl Into<PathBuf>) -> Topology {
        self.ztunnel_bin = Some(path.into());
        self
    }

    /// Scratch directory of this topology (config, CA, captures); removed on drop.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// `LOCAL_XDS_PATH` shared by every proxy of this topology.
    pub fn local_config_path(&self) -> PathBuf {
        self.work_dir.join("local-config.yaml")
    }

    /// `LOCAL_CA_DIR` shared by every proxy of this topology.
    pub fn ca_dir(&self) -> PathBuf {
        self.work_dir.join("ca")
    }

    fn add_netns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"]);
        sysctl(
            &name,
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );
        name
    }

    /// Adds a node; the second one is linked to the first and each routes the other's pods.
    pub fn add_node(&mut self, name: &str) -> Node {
        let index = self.nodes.len() + 1;
        assert!(
            index <= NODE_LINK.len(),
            "the harness builds at most two nodes joined by one link; asked for node #{index} ({name})"
        );
        let netns = self.add_netns(&format!("node-{name}"));
        sysctl(&netns, &["net.ipv4.ip_forward=1"]);
        let index = index as u8;
        let gateway = Ipv4Addr::new(10, 0, index, 1);
        ip(&netns, &["link", "add", BRIDGE, "type", "bridge"]);
        ip(
            &netns,
            &["addr", "add", &format!("{gateway}/24"), "dev", BRIDGE],
        );
        ip(&netns, &["link", "set", BRIDGE, "up"]);
        let node = Node {
            name: name.to_owned(),
            netns,
            index,
            gateway,
            link_ip: NODE_LINK[usize::from(index) - 1],
        };
        if let Some(first) = self.nodes.first() {
            link_nodes(first, &node);
        }
        self.nodes.push(node.clone());
        self.next_host.push(2);
        node
    }

    /// Adds a pod on `node` as workload `default/<name>` with service account `<name>`.
    pub fn add_pod(&mut self, node: &Node, name: &str) -> Pod {
        self.add_pod_as(node, name, "default", name)
    }

    /// Adds a pod on `node` running as `<namespace>/<name>` with `service_account`.
    pub fn add_pod_as(
        &mut self,
        node: &Node,
        name: &str,
        namespace: &str,
        service_account: &str,
    ) -> Pod {
        let slot = usize::from(node.index) - 1;
        let host = self.next_host[slot];
        assert!(host < 255, "node {} is out of pod addresses", node.name);
        self.next_host[slot] += 1;
        let pod_ip = Ipv4Addr::new(10, 0, node.index, host);
        let netns = self.add_netns(&format!("pod-{name}"));
        let host_if = format!("veth{host}");
        ip(
            &node.netns,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        ip(
            &node.netns,
            &["link", "set", &host_if, "master", BRIDGE, "up"],
        );
        ip(
            &netns,
            &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
        );
        ip(&netns, &["link", "set", "eth0", "up"]);
        ip(
            &netns,
            &["route", "add", "default", "via", &node.gateway.to_string()],
        );
        Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            node: node.name.clone(),
            netns,
            ip: pod_ip,
        }
    }

    /// Installs Istio's in-pod capture rules ([`REDIRECT_SCRIPT`]) in the pod's netns.
    pub fn apply_inpod_redirect(&self, pod: &Pod) {
        pod.exec_ok(&["sh", REDIRECT_SCRIPT]);
    }

    /// Removes the in-pod capture rules again (`--clean`).
    pub fn clean_inpod_redirect(&self, pod: &Pod) {
        pod.exec_ok(&["sh", REDIRECT_SCRIPT, "--clean"]);
    }

    /// Atomically replaces the shared `LOCAL_XDS_PATH` file (write a temp file, rename).
    pub fn write_local_config(&self, config: &LocalConfig) {
        let path = self.local_config_path();
        let tmp = path.with_extension("yaml.tmp");
        fs::write(&tmp, config.to_yaml()).or_panic(|| format!("writing {}", tmp.display()));
        fs::rename(&tmp, &path).or_panic(|| format!("renaming to {}", path.display()));
    }

    /// Writes `config` and waits until each proxy in `proxies` logs that it applied it.
    pub fn apply_local_config(&self, config: &LocalConfig, proxies: &[&ZtunnelProc]) {
        let marks: Vec<usize> = proxies.iter().map(|proxy| proxy.log_mark()).collect();
        self.write_local_config(config);
        for (proxy, mark) in proxies.iter().zip(marks) {
            proxy.wait_for_log_since(mark, LOG_CONFIG_APPLIED, PATIENCE);
        }
    }
}

fn link_nodes(a: &Node, b: &Node) {
    ip(
        &a.netns,
        &[
            "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK, "netns", &b.netns,
        ],
    );
    for (node, peer) in [(a, b), (b, a)] {
        ip(
            &node.netns,
            &[
                "addr",
                "add",
                &format!("{}/30", node.link_ip),
                "dev",
                UPLINK,
            ],
        );
        ip(&node.netns, &["link", "set", UPLINK, "up"]);
        ip(
            &node.netns,
            &[
                "route",
                "add",
                &peer.pod_cidr(),
                "via",
                &peer.link_ip.to_string(),
            ],
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for netns in self.namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", netns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "netns harness: deleting netns {netns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("netns harness: deleting netns {netns}: {err}"),
            }
        }
        let _ = fs::remove_dir_all(&self.work_dir);
    }
}

/// Removes namespaces and work directories named `<prefix><pid>-…` whose creating process no
/// longer runs (a killed test run), first killing the processes the harness left inside them.
pub fn cleanup_stale(prefix: &str) {
    let dead_owner = |name: &str| {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        let pid = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
    };
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                let names = entries.flatten();
                names
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for netns in names(Path::new("/run/netns"))
        .into_iter()
        .filter(|n| dead_owner(n))
    {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &netns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if let (Ok(pid), "ztunnel" | "tcpdump" | "istiod-compat") =
                    (pid.parse::<i32>(), comm.trim())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
    }
    let tmp = std::env::temp_dir();
    for dir in names(&tmp).into_iter().filter(|n| dead_owner(n)) {
        let _ = fs::remove_dir_all(tmp.join(dir));
    }
}

impl Node {
    /// The node's pod subnet, `10.0.<index>.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("10.0.{}.0/24", self.index)
    }

    /// Path of the node's netns (for `nsenter --net=`).
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// Runs `f` on a fresh thread inside the node's netns.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in_netns(&self.netns, f)
    }

    /// Runs a command in the node's netns (`nsenter --net=`).
    pub fn exec(&self, args: &[&str]) -> Output {
        exec_in(&self.netns, args)
    }
}

fn exec_in(netns: &str, args: &[&str]) -> Output {
    nsenter(netns)
        .args(args)
        .output()
        .or_panic(|| format!("running {args:?} in netns {netns}"))
}

impl Pod {
    /// Path of the pod's netns (for `nsenter --net=`).
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// `podIP:port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// `PROXY_WORKLOAD_INFO` for this pod: `<namespace>/<name>/<service account>`.
    pub fn workload_info(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.service_account)
    }

    /// The principal policies match: `cluster.local/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// Runs `f` on a fresh thread inside the pod's netns; sockets it creates live there.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in_netns(&self.netns, f)
    }

    /// Runs a command in the pod's netns (`nsenter --net=`).
    pub fn exec(&self, args: &[&str]) -> Output {
        exec_in(&self.netns, args)
    }

    /// Runs a command in the pod's netns; panics with its stderr unless it succeeds.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        checked(nsenter(&self.netns).args(args))
    }

    /// Connects from the pod to `dst` (a plain `connect`: in-pod rules apply).
    pub fn connect(&self, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run_in(|| TcpStream::connect_timeout(&dst, timeout))
    }

    /// Connects from the pod to `dst`, sends `payload` and expects it echoed back.
    pub fn echo(&self, dst: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<()> {
        let mut stream = self.connect(dst, timeout)?;
        echo_roundtrip(&mut stream, payload, timeout)
    }

    /// Starts a TCP echo server on `0.0.0.0:port` in the pod; it records each peer it sees.
    pub fn start_echo_server(&self, port: u16) -> EchoServer {
        let listener = self
            .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .or_panic(|| {
                format!(
                    "binding echo server {}:{port} in pod {}",
                    self.ip, self.name
                )
            });
        let listener = Arc::new(listener);
        let stopped = Arc::new(AtomicBool::new(false));
        let (tx, peers) = mpsc::channel();
        let (accept, stop) = (Arc::clone(&listener), Arc::clone(&stopped));
        thread::spawn(move || {
            loop {
                match accept.accept() {
                    Ok((stream, peer)) => {
                        let _ = tx.send(peer);
                        thread::spawn(move || echo_until_eof(stream));
                    }
                    Err(_) if stop.load(Ordering::SeqCst) => return,
                    Err(_) => continue,
                }
            }
        });
        EchoServer {
            addr: self.addr(port),
            listener,
            stopped,
            peers,
        }
    }
}

fn echo_until_eof(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP echo server running in a pod. Stops accepting on drop.
pub struct EchoServer {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stopped: Arc<AtomicBool>,
    peers: Receiver<SocketAddr>,
}

impl EchoServer {
    /// `podIP:port` the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer address of the next accepted connection, if one arrives within `timeout`.
    pub fn next_peer(&self, timeout: Duration) -> Option<SocketAddr> {
        self.peers.recv_timeout(timeout).ok()
    }

    /// Peer addresses of connections accepted so far and not yet taken.
    pub fn drain_peers(&self) -> Vec<SocketAddr> {
        self.peers.try_iter().collect()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // shutdown() on a listening socket wakes the blocked accept() with an error.
        let _ = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Both);
    }
}

/// Sends `payload` on `stream` and reads it back; an error if the peer closes, resets, sends
/// something else, or `timeout` passes.
pub fn echo_roundtrip(stream: &mut TcpStream, payload: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    let mut filled = 0;
    while filled < got.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "echo timed out"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut got[filled..])? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed after {filled} of {} echoed bytes", payload.len()),
                ));
            }
            n => filled += n,
        }
    }
    if got != payload {
        return Err(io::Error::other("echoed bytes differ from what was sent"));
    }
    Ok(())
}

/// Waits until the peer closes or resets `stream` (data still arriving is discarded); false
/// if it is still open after `timeout`.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Workload protocol in the local config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Captured by a proxy: reached through HBONE on 15008.
    Hbone,
    /// Not captured: reached with plain TCP.
    Tcp,
}

/// The `LOCAL_XDS_PATH` YAML (reference §16.2): workloads and policies.
#[derive(Debug, Clone, Default)]
pub struct LocalConfig {
    workloads: Vec<Value>,
    policies: Vec<Value>,
}

impl LocalConfig {
    /// No workloads, no policies.
    pub fn new() -> LocalConfig {
        LocalConfig::default()
    }

    /// Adds the pod as a workload.
    pub fn workload(self, pod: &Pod, protocol: Protocol) -> LocalConfig {
        self.workload_with_policies(pod, protocol, &[])
    }

    /// Adds the pod as a workload selecting the policies `policy_keys` (`namespace/name`).
    pub fn workload_with_policies(
        mut self,
        pod: &Pod,
        protocol: Protocol,
        policy_keys: &[&str],
    ) -> LocalConfig {
        let mut workload = json!({
            "uid": format!("Kubernetes//v1/Pod/{}/{}", pod.namespace, pod.name),
            "name": pod.name,
            "namespace": pod.namespace,
            "serviceAccount": pod.service_account,
            "trustDomain": TRUST_DOMAIN,
            "node": pod.node,
            "workloadIps": [pod.ip.to_string()],
            "protocol": match protocol { Protocol::Hbone => "HBONE", Protocol::Tcp => "TCP" },
        });
        if !policy_keys.is_empty() {
            workload["authorizationPolicies"] = json!(policy_keys);
        }
        self.workloads.push(workload);
        self
    }

    /// Adds a policy (see [`policy`]).
    pub fn policy(mut self, policy: Value) -> LocalConfig {
        self.policies.push(policy);
        self
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let doc = json!({ "workloads": self.workloads, "policies": self.policies, "services": [] });
        serde_yaml::to_string(&doc).or_panic(|| "serializing the local config".to_owned())
    }
}

/// One policy in the local-config schema. `scope` is `Global|Namespace|WorkloadSelector`,
/// `action` is `Allow|Deny`, `rules` nests rules → clauses → matches, e.g.
/// `json!([[[{"principals": [{"Exact": "cluster.local/ns/a/sa/b"}]}]]])`.
pub fn policy(name: &str, namespace: &str, scope: &str, action: &str, rules: Value) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "scope": scope,
        "action": action,
        "rules": rules,
        "dryRun": false,
    })
}
