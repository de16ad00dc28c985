//! A fake node agent for ZDS tests (reference §3.2): a real SOCK_SEQPACKET listener in a
//! scratch directory that sends datagrams with real SCM_RIGHTS netns descriptors, plus
//! scratch network namespaces (`ip netns add`, root) for the pods.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helper: a panic is a test failure"
)]

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use xds_proto::workload::zds;

use super::PATIENCE;
use super::netns::{NETNS_PREFIX, require_root};
use crate::inpod::packet::{self, RecvError};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(role: &str) -> String {
    format!(
        "{NETNS_PREFIX}{}-zds{}-{role}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The agent side: listens on a SOCK_SEQPACKET socket in a scratch directory (removed on
/// drop).
pub struct FakeAgent {
    dir: PathBuf,
    path: PathBuf,
    listener: AsyncFd<Socket>,
}

impl FakeAgent {
    /// Listens on `<tmp>/ztt-<pid>-zds<n>-agent/ztunnel.sock`.
    pub fn new() -> FakeAgent {
        let dir = std::env::temp_dir().join(unique("agent"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ztunnel.sock");
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
        sock.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        sock.listen(16).unwrap();
        sock.set_nonblocking(true).unwrap();
        FakeAgent {
            dir,
            path,
            listener: packet::register(sock).unwrap(),
        }
    }

    /// The socket path (`INPOD_UDS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next ztunnel connection (fails the test after [`PATIENCE`]).
    pub async fn accept(&self) -> AgentConn {
        let accept = self
            .listener
            .async_io(Interest::READABLE, |l| l.accept().map(|(s, _)| s));
        let sock = tokio::time::timeout(PATIENCE, accept)
            .await
            .expect("ztunnel did not connect to the fake agent in time")
            .unwrap();
        sock.set_nonblocking(true).unwrap();
        AgentConn {
            fd: packet::register(sock).unwrap(),
        }
    }

    /// Accepts a connection and checks it starts with `ZdsHello{V1}`.
    pub async fn accept_hello(&self) -> AgentConn {
        let conn = self.accept().await;
        assert_eq!(conn.recv().await, [0x08, 0x01], "ZdsHello{{V1}} first");
        conn
    }
}

impl Default for FakeAgent {
    fn default() -> FakeAgent {
        FakeAgent::new()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One accepted ztunnel connection.
pub struct AgentConn {
    fd: AsyncFd<Socket>,
}

impl AgentConn {
    /// Sends one datagram with `fds` attached (SCM_RIGHTS).
    pub async fn send(&self, bytes: &[u8], fds: &[RawFd]) {
        packet::send_datagram(&self.fd, bytes, fds).await.unwrap();
    }

    /// The next datagram from ztunnel (fails the test after [`PATIENCE`]).
    pub async fn recv(&self) -> Vec<u8> {
        match self.try_recv().await {
            Ok(bytes) => bytes,
            Err(e) => panic!("no datagram from ztunnel: {e}"),
        }
    }

    /// The next datagram, or why there is none (closed, timed out).
    pub async fn try_recv(&self) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(PATIENCE, packet::recv_datagram(&self.fd)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(RecvError::Closed)) => Err("closed".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(d)) => Ok(d.bytes),
        }
    }

    /// Waits until ztunnel closes the connection (fails the test after [`PATIENCE`]).
    pub async fn expect_closed(&self) {
        match self.try_recv().await {
            Err(e) if e == "closed" => {}
            other => panic!("expected ztunnel to disconnect, got {other:?}"),
        }
    }

    /// Sends `bytes` (+ `fds`) and returns the `Ack.error` of the answer ("" = ack).
    pub async fn request(&self, bytes: &[u8], fds: &[RawFd]) -> String {
        self.send(bytes, fds).await;
        parse_ack(&self.recv().await)
    }

    /// AddWorkload for `uid` with the netns of `netns`.
    pub async fn add(&self, uid: &str, info: (&str, &str, &str), netns: &File) -> String {
        self.request(&add_request(uid, Some(info)), &[netns.as_raw_fd()])
            .await
    }

    /// KeepWorkload.
    pub async fn keep(&self, uid: &str) -> String {
        self.request(&keep_request(uid), &[]).await
    }

    /// DelWorkload.
    pub async fn del(&self, uid: &str) -> String {
        self.request(&del_request(uid), &[]).await
    }

    /// SnapshotSent.
    pub async fn snapshot_sent(&self) -> String {
        self.request(&snapshot_sent(), &[]).await
    }
}

fn request(payload: zds::workload_request::Payload) -> Vec<u8> {
    zds::WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

/// `WorkloadRequest{add}`; `info` is (name, namespace, service account).
pub fn add_request(uid: &str, info: Option<(&str, &str, &str)>) -> Vec<u8> {
    request(zds::workload_request::Payload::Add(zds::AddWorkload {
        uid: uid.into(),
        workload_info: info.map(|(name, namespace, sa)| zds::WorkloadInfo {
            name: name.into(),
            namespace: namespace.into(),
            service_account: sa.into(),
        }),
    }))
}

/// `WorkloadRequest{keep}`.
pub fn keep_request(uid: &str) -> Vec<u8> {
    request(zds::workload_request::Payload::Keep(zds::KeepWorkload {
        uid: uid.into(),
    }))
}

/// `WorkloadRequest{del}`.
pub fn del_request(uid: &str) -> Vec<u8> {
    request(zds::workload_request::Payload::Del(zds::DelWorkload {
        uid: uid.into(),
    }))
}

/// `WorkloadRequest{snapshot_sent}`.
pub fn snapshot_sent() -> Vec<u8> {
    request(zds::workload_request::Payload::SnapshotSent(
        zds::SnapshotSent {},
    ))
}

/// The `Ack.error` of a `WorkloadResponse` (panics on anything else).
pub fn parse_ack(bytes: &[u8]) -> String {
    let resp = zds::WorkloadResponse::decode(bytes).expect("a WorkloadResponse");
    match resp.payload {
        Some(zds::workload_response::Payload::Ack(ack)) => ack.error,
        None => panic!("WorkloadResponse without an ack: {bytes:02x?}"),
    }
}

/// Direction of a golden datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// ztunnel → agent (`z>a`).
    ToAgent,
    /// agent → ztunnel (`a>z`).
    ToZtunnel,
}

/// One line of `proto/xds/testdata/zds/golden-exchange.txt`.
#[derive(Debug, Clone)]
pub struct GoldenDatagram {
    /// Who sends it.
    pub direction: Direction,
    /// How many SCM_RIGHTS descriptors it carries.
    pub fds: usize,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The line's comment.
    pub comment: String,
}

/// Path of the hand-encoded golden exchange.
pub const GOLDEN_EXCHANGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../proto/xds/testdata/zds/golden-exchange.txt"
);

/// Parses the golden exchange file.
pub fn golden_exchange() -> Vec<GoldenDatagram> {
    let text = fs::read_to_string(GOLDEN_EXCHANGE).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (data, comment) = line.split_once('#').unwrap_or((line, ""));
        let fields: Vec<&str> = data.split_whitespace().collect();
        let [dir, fds, hex] = fields.as_slice() else {
            panic!("bad golden line: {line}");
        };
        let direction = match *dir {
            "z>a" => Direction::ToAgent,
            "a>z" => Direction::ToZtunnel,
            other => panic!("bad direction {other} in {line}"),
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push(GoldenDatagram {
            direction,
            fds: fds.parse().unwrap(),
            bytes,
            comment: comment.trim().to_string(),
        });
    }
    out
}

/// A scratch network namespace (`ip netns add`, loopback up); deleted on drop. Root only.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `ztt-<pid>-zds<n>-<role>` (fails loudly without root).
    pub fn new(role: &str) -> TestNetns {
        require_root();
        let name = unique(role);
        run(&["netns", "add", &name]);
        let ns = TestNetns { name };
        run(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A fresh fd for it (what the agent sends in SCM_RIGHTS).
    pub fn file(&self) -> File {
        File::open(self.path()).unwrap()
    }

    /// Runs `f` on a thread inside the netns.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = self.file();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether something accepts TCP connections on `addr` inside the netns.
    pub fn accepts(&self, addr: SocketAddr) -> bool {
        self.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    }

    /// Binds `addr` inside the netns WITHOUT SO_REUSEPORT (a port conflict for a proxy).
    pub fn occupy(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.run_in(|| std::net::TcpListener::bind(addr))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A shared-mode config for in-process tests: ZDS at `uds`, local config `<dir>/config.yaml`,
/// CA `<dir>/ca`, admin/metrics/readiness on 127.0.0.1 port 0, fast config polling. Pod
/// listeners bind their fixed ports inside each pod's netns.
pub fn shared_config(dir: &Path, uds: &Path) -> crate::config::Config {
    use std::collections::HashMap;
    let src: HashMap<String, String> = HashMap::from([
        ("PROXY_MODE".into(), "shared".into()),
        ("INPOD_UDS".into(), uds.display().to_string()),
        (
            "LOCAL_XDS_PATH".into(),
            dir.join("config.yaml").display().to_string(),
        ),
        ("LOCAL_CA_DIR".into(), dir.join("ca").display().to_string()),
        ("NODE_NAME".into(), "node1".into()),
    ]);
    let mut cfg = crate::config::Config::from_source(&src).unwrap();
    let local = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
    cfg.admin_addr = local(0);
    cfg.metrics_addr = local(0);
    cfg.readiness_addr = local(0);
    cfg.local_config_poll = Duration::from_millis(20);
    cfg.termination_deadline = Duration::from_secs(1);
    cfg
}
