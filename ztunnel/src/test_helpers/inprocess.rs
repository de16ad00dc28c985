//! In-process end-to-end scaffolding shared by `tests/direct.rs`, `tests/hostile.rs` and
//! `tests/operations.rs`: two workloads on a loopback /24, a dedicated proxy config bound
//! there, and an echo server.
//!
//! Each test uses its own `net` (127.0.<net>.x): parallel tests must never share a listener
//! address, or SO_REUSEPORT would spread connections across tests.
#![allow(clippy::unwrap_used, reason = "test helper: a panic is a test failure")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::{Config, OrigSrc};

/// Local config YAML with `client` (127.0.<net>.1) and `server` (127.0.<net>.2), both HBONE,
/// in namespace `default` with service accounts `client` and `server`. `policies` is the YAML
/// value of the `policies` key (e.g. `[]`, or an indented block list).
pub fn two_workloads_yaml(net: u8, policies: &str) -> String {
    format!(
        r#"
workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: client
  node: node1
  workloadIps: ["127.0.{net}.1"]
  protocol: HBONE
- uid: cluster1//v1/Pod/default/server
  name: server
  namespace: default
  serviceAccount: server
  node: node2
  workloadIps: ["127.0.{net}.2"]
  protocol: HBONE
policies: {policies}
"#
    )
}

/// A dedicated-mode config serving `workload_info` from `ip`: local config
/// `<dir>/config.yaml`, CA `<dir>/ca`, HBONE on `ip:15008`, every other listener on `ip`
/// with port 0 (or its well-known port when `fixed_ports`), no mark, no source spoofing
/// (no root needed), fast config polling. `env` adds or overrides variables.
pub fn loopback_config(
    dir: &Path,
    workload_info: &str,
    ip: &str,
    env: &[(&str, &str)],
    fixed_ports: bool,
) -> Config {
    let mut src: HashMap<String, String> = HashMap::from([
        ("PROXY_MODE".into(), "dedicated".into()),
        ("PROXY_WORKLOAD_INFO".into(), workload_info.into()),
        (
            "LOCAL_XDS_PATH".into(),
            dir.join("config.yaml").display().to_string(),
        ),
        ("LOCAL_CA_DIR".into(), dir.join("ca").display().to_string()),
    ]);
    for (k, v) in env {
        src.insert(k.to_string(), v.to_string());
    }
    let mut cfg = Config::from_source(&src).unwrap();
    cfg.packet_mark = None;
    cfg.orig_src = OrigSrc::Disabled;
    let addr = |port: u16| -> SocketAddr {
        format!("{ip}:{}", if fixed_ports { port } else { 0 })
            .parse()
            .unwrap()
    };
    cfg.inbound_addr = format!("{ip}:15008").parse().unwrap();
    cfg.outbound_addr = addr(15001);
    cfg.inbound_plaintext_addr = addr(15006);
    cfg.socks5_addr = addr(15080);
    cfg.admin_addr = addr(15000);
    cfg.metrics_addr = addr(15020);
    cfg.readiness_addr = addr(15021);
    cfg.local_config_poll = Duration::from_millis(20);
    cfg
}

/// An echo server on `ip` (port 0): copies each connection back until EOF, then
/// half-closes. Reports every accepted peer address on the returned channel.
pub async fn echo_server(ip: &str) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = tx.send(peer);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// Opens a SOCKS5 (no auth) CONNECT to the IPv4 `target` through `socks`.
pub async fn socks5_connect(socks: SocketAddr, target: SocketAddr) -> TcpStream {
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

/// Sends `msg`, half-closes, returns everything read back (within 10 s).
pub async fn round_trip(mut s: TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}
