//! In-process end-to-end: SOCKS5 → proxy A → HBONE (real mTLS, real certificates from the
//! local CA) → proxy B → echo server, all on loopback addresses, no root needed.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use ztunnel::app::{self, App};
use ztunnel::test_helpers::inprocess::{echo_server, loopback_config, two_workloads_yaml};

async fn socks_connect(socks: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(b, [5, 0]);
    let SocketAddr::V4(t) = target else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 reply");
    s
}

/// Sends `msg`, half-closes, returns everything echoed back.
async fn round_trip(mut s: TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

struct Mesh {
    _dir: tempfile::TempDir,
    a: App,
    b: App,
    echo: SocketAddr,
    echo_peers: mpsc::UnboundedReceiver<SocketAddr>,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Each test passes its own `net` so parallel tests never share a listener address
/// (SO_REUSEPORT would otherwise spread connections across tests).
async fn mesh(net: u8, policies: &str) -> Mesh {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        two_workloads_yaml(net, policies),
    )
    .unwrap();
    let (echo, echo_peers) = echo_server(&format!("127.0.{net}.2")).await;
    let b = app::build(loopback_config(
        dir.path(),
        "default/server/server",
        &format!("127.0.{net}.2"),
        &[],
        false,
    ))
    .await
    .unwrap();
    let a = app::build(loopback_config(
        dir.path(),
        "default/client/client",
        &format!("127.0.{net}.1"),
        &[("UNSTABLE_ENABLE_SOCKS5", "true")],
        false,
    ))
    .await
    .unwrap();
    Mesh {
        _dir: dir,
        a,
        b,
        echo,
        echo_peers,
    }
}

#[tokio::test]
async fn socks5_to_hbone_to_echo_with_identity_policy() {
    // B only allows A's identity: success proves B saw A's SPIFFE identity over mTLS.
    let policies = r#"
  - name: only-client
    namespace: default
    scope: Namespace
    action: Allow
    rules:
    - - - principals: [{Exact: "cluster.local/ns/default/sa/client"}]
"#;
    let mut m = mesh(10, policies).await;
    let s = socks_connect(m.a.bound.socks5.unwrap(), m.echo).await;
    let out = round_trip(s, b"hello through hbone").await;
    assert_eq!(out, b"hello through hbone");
    let peer = m.echo_peers.recv().await.unwrap();
    assert!(peer.ip().is_loopback(), "B delivers locally, got {peer}");
    assert_eq!(
        m.b.inputs.connections.len(),
        0,
        "finished connections are unregistered"
    );
    m.a.shutdown().await;
    m.b.shutdown().await;
}

#[tokio::test]
async fn policy_for_another_identity_denies() {
    let policies = r#"
  - name: only-someone-else
    namespace: default
    scope: Namespace
    action: Allow
    rules:
    - - - principals: [{Exact: "cluster.local/ns/default/sa/someone-else"}]
"#;
    let m = mesh(11, policies).await;
    let s = socks_connect(m.a.bound.socks5.unwrap(), m.echo).await;
    let out = round_trip(s, b"should not arrive").await;
    assert!(
        out.is_empty(),
        "denied connection must not carry data, got {out:?}"
    );
}

#[tokio::test]
async fn pool_reuses_one_connection_for_many_streams() {
    let m = mesh(12, "[]").await;
    let socks = m.a.bound.socks5.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let echo = m.echo;
        tasks.push(tokio::spawn(async move {
            let s = socks_connect(socks, echo).await;
            let msg = format!("message {i}");
            assert_eq!(round_trip(s, msg.as_bytes()).await, msg.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        m.a.inputs.pool.pooled_connections(),
        1,
        "20 tunnels from one client identity to one server must share one HBONE connection"
    );
}
