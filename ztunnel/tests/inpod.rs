//! Shared (in-pod) mode end-to-end (Linux, root): an in-process ztunnel in shared mode, a
//! fake node agent (real SOCK_SEQPACKET socket, real netns fds over SCM_RIGHTS) and real
//! network namespaces for the pods. Without root every test fails loudly (never skips).
//!
//! Run: `cargo test -p ztunnel --test inpod` (as root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::json;

use ztunnel::app::{self, App};
use ztunnel::inpod::READINESS_TASK;
use ztunnel::inpod::manager::PodState;
use ztunnel::test_helpers::eventually;
use ztunnel::test_helpers::netns::{
    LocalConfig, PATIENCE, Protocol, Topology, policy, require_root,
};
use ztunnel::test_helpers::zds::{
    AgentConn, Direction, FakeAgent, TestNetns, add_request, del_request, golden_exchange,
    keep_request, shared_config, snapshot_sent,
};

const OUTBOUND: &str = "127.0.0.1:15001";
const PLAINTEXT: &str = "127.0.0.1:15006";
const HBONE: &str = "127.0.0.1:15008";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Harness {
    agent: FakeAgent,
    app: App,
    _dir: tempfile::TempDir,
}

const EMPTY_CONFIG: &str = "workloads: []\npolicies: []\nservices: []\n";

async fn harness_with(yaml: &str) -> Harness {
    require_root();
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
    let agent = FakeAgent::new();
    let app = app::build(shared_config(dir.path(), agent.path()))
        .await
        .unwrap();
    Harness {
        agent,
        app,
        _dir: dir,
    }
}

async fn harness() -> Harness {
    harness_with(EMPTY_CONFIG).await
}

impl Harness {
    fn not_ready(&self) -> bool {
        self.app
            .readiness
            .pending()
            .contains(&READINESS_TASK.to_string())
    }

    fn pods(&self) -> Vec<(String, PodState, u64)> {
        self.app
            .pods
            .as_ref()
            .expect("shared mode has a pod view")
            .list()
            .into_iter()
            .map(|p| (p.uid, p.state, p.netns.inode))
            .collect()
    }
}

fn info(name: &str) -> (&str, &str, &str) {
    (name, "default", name)
}

/// Every listener of a pod proxy accepts inside `netns`.
fn serving(netns: &TestNetns) -> bool {
    [OUTBOUND, PLAINTEXT, HBONE]
        .iter()
        .all(|a| netns.accepts(addr(a)))
}

/// No listener of a pod proxy accepts inside `netns`.
fn gone(netns: &TestNetns) -> bool {
    [OUTBOUND, PLAINTEXT, HBONE]
        .iter()
        .all(|a| !netns.accepts(addr(a)))
}

fn inode(netns: &TestNetns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    netns.file().metadata().unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_exchange_is_byte_identical() {
    let h = harness().await;
    let netns = TestNetns::new("golden");
    let conn = h.agent.accept().await;
    let mut sent_add = false;
    for d in golden_exchange() {
        match d.direction {
            Direction::ToZtunnel => {
                let files: Vec<std::fs::File> = (0..d.fds).map(|_| netns.file()).collect();
                let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
                conn.send(&d.bytes, &raw).await;
                sent_add = d.fds > 0;
            }
            Direction::ToAgent => {
                let got = conn.recv().await;
                assert_eq!(got, d.bytes, "ztunnel's datagram for `{}`", d.comment);
                if sent_add {
                    assert!(
                        serving(&netns),
                        "the Add started listeners in the pod netns"
                    );
                    sent_add = false;
                }
            }
        }
    }
    // The exchange ends with the Del of the added pod: its listeners are drained.
    eventually("the deleted pod's listeners close", || gone(&netns)).await;
    eventually("the deleted pod leaves the pod view", || {
        h.pods().is_empty()
    })
    .await;
}

/// Expects a nack (non-empty error) followed by a disconnect, then a reconnect with a fresh
/// Hello; returns the new connection.
async fn expect_protocol_error(h: &Harness, conn: AgentConn, what: &str) -> AgentConn {
    let answer = conn
        .try_recv()
        .await
        .unwrap_or_else(|e| panic!("{what}: no nack: {e}"));
    let error = ztunnel::test_helpers::zds::parse_ack(&answer);
    assert!(!error.is_empty(), "{what}: expected a nack, got an ack");
    conn.expect_closed().await;
    drop(conn);
    h.agent.accept_hello().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_nack_and_disconnect() {
    let h = harness().await;
    let netns = TestNetns::new("proto");
    let fd = netns.file();
    let mut conn = h.agent.accept_hello().await;

    conn.send(&add_request("u1", Some(info("a"))), &[]).await;
    conn = expect_protocol_error(&h, conn, "Add without fd").await;

    conn.send(&add_request("u1", None), &[fd.as_raw_fd()]).await;
    conn = expect_protocol_error(&h, conn, "Add without workload_info").await;

    let fd2 = netns.file();
    conn.send(
        &add_request("u1", Some(info("a"))),
        &[fd.as_raw_fd(), fd2.as_raw_fd()],
    )
    .await;
    conn = expect_protocol_error(&h, conn, "Add with two fds").await;

    conn.send(&keep_request("u1"), &[fd.as_raw_fd()]).await;
    conn = expect_protocol_error(&h, conn, "fd on Keep").await;

    conn.send(&[0x55u8; 2048], &[]).await;
    conn = expect_protocol_error(&h, conn, "oversized datagram").await;

    assert_eq!(conn.snapshot_sent().await, "");
    conn.send(&snapshot_sent(), &[]).await;
    conn = expect_protocol_error(&h, conn, "second SnapshotSent").await;

    assert_eq!(conn.snapshot_sent().await, "");
    conn.send(&keep_request("u1"), &[]).await;
    conn = expect_protocol_error(&h, conn, "Keep after SnapshotSent").await;

    assert_eq!(conn.snapshot_sent().await, "");
    conn.send(&del_request("u1"), &[fd.as_raw_fd()]).await;
    conn = expect_protocol_error(&h, conn, "fd on Del").await;

    // After all that, the connection works normally.
    assert_eq!(conn.add("u1", info("a"), &netns.file()).await, "");
    assert_eq!(conn.snapshot_sent().await, "");
    assert!(serving(&netns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_idempotent_and_del_drains() {
    let h = harness().await;
    let netns = TestNetns::new("idem");
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("u1", info("a"), &netns.file()).await, "");
    assert!(serving(&netns));
    // IPv4 and IPv6 wildcard for 15006/15008, and 15001 never on a wildcard.
    let pod_ip_like = netns.run_in(|| {
        std::process::Command::new("ip")
            .args(["addr", "add", "10.99.0.1/32", "dev", "lo"])
            .status()
            .unwrap()
    });
    assert!(pod_ip_like.success());
    assert!(netns.accepts(addr("10.99.0.1:15008")));
    assert!(
        !netns.accepts(addr("10.99.0.1:15001")),
        "15001 must be loopback only"
    );

    let before = h.pods();
    assert_eq!(conn.add("u1", info("a"), &netns.file()).await, "");
    assert_eq!(h.pods(), before, "a repeated Add changes nothing");
    assert_eq!(
        before,
        vec![("u1".into(), PodState::Running, inode(&netns))]
    );

    assert_eq!(conn.snapshot_sent().await, "");
    assert_eq!(conn.del("u1").await, "");
    eventually("Del drains the pod's listeners", || gone(&netns)).await;
    assert_eq!(conn.del("u1").await, "", "Del of an unknown pod is acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_netns_replaces_the_proxy() {
    let h = harness().await;
    let old = TestNetns::new("old");
    let new = TestNetns::new("new");
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("u1", info("a"), &old.file()).await, "");
    assert!(serving(&old));
    assert_eq!(conn.add("u1", info("a"), &new.file()).await, "");
    assert!(serving(&new));
    eventually("the old netns' proxy drains", || gone(&old)).await;
    eventually("only the new proxy is listed", || {
        h.pods() == vec![("u1".into(), PodState::Running, inode(&new))]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reconciliation_drains_unseen_pods_and_readiness_follows() {
    let h = harness().await;
    let a = TestNetns::new("rec-a");
    let b = TestNetns::new("rec-b");
    assert!(h.not_ready(), "not ready before any snapshot");
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("ua", info("a"), &a.file()).await, "");
    assert_eq!(conn.add("ub", info("b"), &b.file()).await, "");
    assert!(h.not_ready(), "not ready until SnapshotSent");
    assert_eq!(conn.snapshot_sent().await, "");
    eventually("ready after the snapshot", || !h.not_ready()).await;

    // The agent restarts: the new connection's snapshot names only `ua` (re-added) and a
    // kept `uc`; `ub` must be drained, `ua` keeps serving.
    drop(conn);
    eventually("not ready while disconnected", || h.not_ready()).await;
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("ua", info("a"), &a.file()).await, "");
    assert_eq!(conn.keep("uc").await, "");
    assert!(serving(&b), "nothing is drained before SnapshotSent");
    assert_eq!(conn.snapshot_sent().await, "");
    eventually("the unseen pod is drained", || gone(&b)).await;
    assert!(serving(&a));
    eventually("ready again", || !h.not_ready()).await;
    // `ub` is listed as Draining until its drain task finishes, just after its listeners close.
    eventually("only ua is listed", || {
        h.pods() == vec![("ua".into(), PodState::Running, inode(&a))]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_before_snapshot_forgets_the_pod() {
    let h = harness().await;
    let a = TestNetns::new("early-del");
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("ua", info("a"), &a.file()).await, "");
    assert_eq!(conn.del("ua").await, "");
    assert!(serving(&a), "a Del before the snapshot does not drain yet");
    assert_eq!(conn.snapshot_sent().await, "");
    eventually("drained at reconciliation", || gone(&a)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_conflict_is_nacked_then_retried() {
    let h = harness().await;
    let a = TestNetns::new("conflict");
    let squatter = a.occupy(addr(HBONE)).unwrap();
    let conn = h.agent.accept_hello().await;
    let nack = conn.add("ua", info("a"), &a.file()).await;
    assert!(nack.contains("15008"), "nack names the port: {nack:?}");
    assert_eq!(h.pods(), vec![("ua".into(), PodState::Pending, inode(&a))]);
    assert_eq!(conn.snapshot_sent().await, "");
    assert!(h.not_ready(), "a pending pod holds readiness");
    drop(squatter);
    eventually("the pending pod starts on retry", || {
        h.pods() == vec![("ua".into(), PodState::Running, inode(&a))]
    })
    .await;
    assert!(serving(&a));
    eventually("ready once nothing is pending", || !h.not_ready()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_pod_and_config_dump_lists_them() {
    let h = harness().await;
    let a = TestNetns::new("shut-a");
    let conn = h.agent.accept_hello().await;
    assert_eq!(conn.add("ua", info("a"), &a.file()).await, "");
    assert_eq!(conn.snapshot_sent().await, "");
    let dump = http_get(h.app.bound.admin, "/config_dump").await;
    assert!(dump.contains("\"uid\": \"ua\""), "{dump}");
    assert!(dump.contains("\"state\": \"running\""), "{dump}");
    assert!(
        dump.contains(&format!("\"inode\": {}", inode(&a))),
        "{dump}"
    );
    h.app.shutdown().await;
    assert!(gone(&a), "shutdown drained the pod proxies");
    conn.expect_closed().await;
}

async fn http_get(to: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A shared-mode ztunnel serving three pods on two linked node bridges (Istio's in-pod
/// iptables rules in each; one ztunnel serves both "nodes" here): client → server goes through HBONE with the client's identity (the server only
/// allows that principal) and reaches the app from the client's pod IP; `other` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_through_hbone_with_their_identities() {
    require_root();
    init_logs();
    let mut topo = Topology::new("inpod-traffic");
    let node1 = topo.add_node("node1");
    let node2 = topo.add_node("node2");
    let client = topo.add_pod(&node1, "client");
    let server = topo.add_pod(&node2, "server");
    let other = topo.add_pod(&node1, "other");
    let echo = server.start_echo_server(8080);
    for pod in [&client, &server, &other] {
        topo.apply_inpod_redirect(pod);
    }
    let rules = json!([[[{"principals": [{"Exact": client.principal()}]}]]]);
    let config = LocalConfig::new()
        .workload(&client, Protocol::Hbone)
        .workload_with_policies(&server, Protocol::Hbone, &["default/only-client"])
        .workload(&other, Protocol::Hbone)
        .policy(policy(
            "only-client",
            "default",
            "WorkloadSelector",
            "Allow",
            rules,
        ));
    let h = harness_with(&config.to_yaml()).await;
    let conn = h.agent.accept_hello().await;
    for pod in [&client, &server, &other] {
        let netns = std::fs::File::open(pod.netns_path()).unwrap();
        let info = (
            pod.name.as_str(),
            pod.namespace.as_str(),
            pod.service_account.as_str(),
        );
        assert_eq!(
            conn.add(&format!("uid-{}", pod.name), info, &netns).await,
            ""
        );
    }
    assert_eq!(conn.snapshot_sent().await, "");
    eventually("ready", || !h.not_ready()).await;

    let dst = server.addr(8080);
    let from = client.clone();
    tokio::task::spawn_blocking(move || from.echo(dst, b"hello through HBONE", PATIENCE))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("client -> server through the pod proxies: {e}"));
    let peer = echo
        .next_peer(PATIENCE)
        .expect("the server app saw the connection");
    assert_eq!(peer.ip(), client.ip, "the app sees the client's pod IP");

    let from = other.clone();
    let refused =
        tokio::task::spawn_blocking(move || from.echo(dst, b"denied", Duration::from_secs(3)))
            .await
            .unwrap();
    assert!(
        refused.is_err(),
        "`other` has its own identity and is refused"
    );
    assert!(
        echo.drain_peers().is_empty(),
        "nothing from `other` reached the app"
    );
    drop(topo);
}

/// Shared mode fails fast, naming the capability, when it may not `setns` (reference §3.2
/// start-up check). The real binary runs without CAP_SYS_ADMIN in its bounding set.
#[test]
fn startup_check_names_the_missing_capability() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), EMPTY_CONFIG).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-sys_admin", "--"])
        .arg(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", dir.path().join("none.sock"))
        .env("LOCAL_XDS_PATH", dir.path().join("config.yaml"))
        .env("LOCAL_CA_DIR", dir.path().join("ca"))
        .env("NO_COLOR", "1")
        .output()
        .expect("running ztunnel under setpriv");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "must fail without CAP_SYS_ADMIN: {log}"
    );
    assert!(
        log.contains("CAP_SYS_ADMIN"),
        "the error names the capability: {log}"
    );
}
