//! In-process tests of the operations surface: Prometheus metrics after real tunnelled
//! traffic (SOCKS5 → A → HBONE → B → echo), the admin API, readiness, run-time log levels
//! and the drain lifecycle. Each test owns one loopback subnet (127.0.3x.0/24) so parallel
//! tests never share a listener address.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::app::{self, App, BuildOptions};
use ztunnel::config::Config;
use ztunnel::drain::DrainOutcome;
use ztunnel::logging::{self, LogControl};
use ztunnel::readiness::Readiness;
use ztunnel::test_helpers::inprocess::{echo_server, loopback_config, two_workloads_yaml};

/// Bound on every wait: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(15);

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

struct Mesh {
    dir: tempfile::TempDir,
    net: u8,
    a: App,
    b: App,
    echo: SocketAddr,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn mesh(net: u8, policies: &str, fixed: bool) -> Mesh {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        two_workloads_yaml(net, policies),
    )
    .unwrap();
    let (echo, _) = echo_server(&format!("127.0.{net}.2")).await;
    let b = app::build(proxy_config(
        dir.path(),
        "default/server/server",
        &format!("127.0.{net}.2"),
        fixed,
    ))
    .await
    .unwrap();
    let a = app::build(client_config(dir.path(), net, fixed))
        .await
        .unwrap();
    Mesh {
        dir,
        net,
        a,
        b,
        echo,
    }
}

/// Both proxies get SOCKS5 and a long drain deadline (the drain test needs time to look).
fn proxy_config(dir: &Path, info: &str, ip: &str, fixed: bool) -> Config {
    let env = [
        ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ("CONNECTION_TERMINATION_DEADLINE", "20s"),
    ];
    loopback_config(dir, info, ip, &env, fixed)
}

fn client_config(dir: &Path, net: u8, fixed: bool) -> Config {
    proxy_config(
        dir,
        "default/client/client",
        &format!("127.0.{net}.1"),
        fixed,
    )
}

async fn socks_connect(socks: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(socks).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await?;
    assert_eq!(b, [5, 0]);
    let SocketAddr::V4(t) = target else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    assert_eq!(reply[1], 0, "SOCKS5 reply");
    Ok(s)
}

/// Writes `msg` and reads the echo, leaving the connection open.
async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// Sends `msg`, half-closes, returns everything echoed back.
async fn round_trip(mut s: TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    out
}

/// A one-shot HTTP/1.1 request; returns the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

async fn scrape(app: &App) -> String {
    let (status, body) = http(app.bound.metrics, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Polls `check` until it holds (bounded by [`PATIENCE`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until both reporters counted `n` closed connections.
async fn wait_closed(m: &Mesh, n: u64) {
    for (app, reporter) in [(&m.a, "source"), (&m.b, "destination")] {
        eventually(&format!("{reporter} closed={n}"), || async {
            let text = scrape(app).await;
            sample(
                &text,
                "istio_tcp_connections_closed_total",
                &[("reporter", reporter)],
            ) == n
        })
        .await;
    }
}

#[tokio::test]
async fn metrics_count_tunnelled_traffic_on_both_reporters() {
    let m = mesh(30, "[]", false).await;
    let s = socks_connect(m.a.bound.socks5.unwrap(), m.echo)
        .await
        .unwrap();
    let msg = b"hello through hbone";
    assert_eq!(round_trip(s, msg).await, msg);
    wait_closed(&m, 1).await;

    let len = msg.len() as u64;
    for (app, reporter) in [(&m.a, "source"), (&m.b, "destination")] {
        let text = scrape(app).await;
        let labels = [
            ("reporter", reporter),
            ("source_principal", CLIENT_ID),
            ("source_workload_namespace", "default"),
            ("destination_workload", "server"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", SERVER_ID),
            ("request_protocol", "tcp"),
            ("connection_security_policy", "mutual_tls"),
        ];
        let count = |name: &str| sample(&text, name, &labels);
        assert_eq!(count("istio_tcp_connections_opened_total"), 1, "{text}");
        assert_eq!(count("istio_tcp_connections_closed_total"), 1, "{text}");
        assert_eq!(count("istio_tcp_received_bytes_total"), len, "{text}");
        assert_eq!(count("istio_tcp_sent_bytes_total"), len, "{text}");
        assert_eq!(count("istio_tcp_connections_failed_total"), 0, "{text}");
        let closed = [("reporter", reporter), ("response_flags", "-")];
        assert_eq!(
            sample(&text, "istio_tcp_connections_closed_total", &closed),
            1
        );
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.contains("process_max_fds "), "{text}");
        assert!(
            text.contains("ztunnel_local_config_applied_total"),
            "{text}"
        );
    }
    let text = scrape(&m.a).await;
    let source = [("reporter", "source"), ("source_workload", "client")];
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &source),
        1
    );
    // The same exposition is served on Istio's second path.
    let (status, body) = http(m.a.bound.metrics, "GET", "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(body.contains("istio_tcp_connections_opened_total"));
}

#[tokio::test]
async fn byte_counters_move_while_the_connection_is_open() {
    let m = mesh(31, "[]", false).await;
    let mut s = socks_connect(m.a.bound.socks5.unwrap(), m.echo)
        .await
        .unwrap();
    for (round, chunk) in [1000usize, 500].into_iter().enumerate() {
        echo_once(&mut s, &vec![b'x'; chunk]).await;
        let total = if round == 0 { 1000 } else { 1500 };
        for (app, reporter) in [(&m.a, "source"), (&m.b, "destination")] {
            eventually(&format!("{reporter} bytes={total} while open"), || async {
                let text = scrape(app).await;
                let labels = [("reporter", reporter)];
                sample(&text, "istio_tcp_received_bytes_total", &labels) == total
                    && sample(&text, "istio_tcp_sent_bytes_total", &labels) == total
                    && sample(&text, "istio_tcp_connections_closed_total", &labels) == 0
            })
            .await;
        }
    }
    drop(s);
    wait_closed(&m, 1).await;
}

#[tokio::test]
async fn denied_connection_counts_a_failure_with_deny() {
    let policies = r#"
  - name: only-someone-else
    namespace: default
    scope: Namespace
    action: Allow
    rules:
    - - - principals: [{Exact: "cluster.local/ns/default/sa/someone-else"}]
"#;
    let m = mesh(32, policies, false).await;
    let s = socks_connect(m.a.bound.socks5.unwrap(), m.echo)
        .await
        .unwrap();
    assert!(round_trip(s, b"should not arrive").await.is_empty());
    eventually("a DENY failure on the destination reporter", || async {
        let text = scrape(&m.b).await;
        let labels = [
            ("reporter", "destination"),
            ("response_flags", "DENY"),
            ("source_principal", CLIENT_ID),
        ];
        sample(&text, "istio_tcp_connections_failed_total", &labels) == 1
            && sample(&text, "istio_tcp_connections_closed_total", &labels) == 1
    })
    .await;
    let text = scrape(&m.b).await;
    assert_eq!(
        sample(&text, "istio_tcp_received_bytes_total", &[]),
        0,
        "{text}"
    );
    // The client side saw its CONNECT refused: a failure too, with its own flag.
    eventually("a failure on the source reporter", || async {
        let text = scrape(&m.a).await;
        sample(
            &text,
            "istio_tcp_connections_failed_total",
            &[("reporter", "source")],
        ) == 1
    })
    .await;
}

#[tokio::test]
async fn config_dump_lists_certificates_and_workloads() {
    let m = mesh(33, "[]", false).await;
    let s = socks_connect(m.a.bound.socks5.unwrap(), m.echo)
        .await
        .unwrap();
    assert_eq!(round_trip(s, b"warm").await, b"warm");

    let (status, body) = http(m.a.bound.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client", "server"]);
    assert!(dump["services"].as_array().unwrap().is_empty());
    assert!(dump["policies"].as_array().unwrap().is_empty());
    assert_eq!(dump["config"]["proxyMode"], "dedicated");
    let certs = dump["certificates"].as_array().unwrap();
    let client = certs
        .iter()
        .find(|c| c["identity"] == CLIENT_ID)
        .unwrap_or_else(|| panic!("no client certificate in {certs:?}"));
    let leaf = &client["certChain"][0];
    for field in ["pem", "serialNumber", "validFrom", "expirationTime"] {
        assert!(
            !leaf[field].as_str().unwrap_or_default().is_empty(),
            "{field} missing in {leaf}"
        );
    }
    assert!(!client["rootCerts"].as_array().unwrap().is_empty());

    assert_eq!(http(m.a.bound.admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(m.a.bound.admin, "GET", "/quitquitquit").await.0, 405);
}

#[tokio::test]
async fn readiness_reports_pending_tasks_until_they_finish() {
    init_logs();
    let net = 34;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        two_workloads_yaml(net, "[]"),
    )
    .unwrap();
    let readiness = Readiness::new();
    let gate = readiness.register("test gate");
    let app = app::build_with(
        client_config(dir.path(), net, false),
        BuildOptions {
            readiness: Some(readiness),
            ..BuildOptions::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = http(app.bound.readiness, "GET", "/healthz/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (500, "not ready, pending: test gate\n")
    );
    drop(gate);
    let (status, body) = http(app.bound.readiness, "GET", "/healthz/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(http(app.bound.readiness, "GET", "/other").await.0, 404);
}

#[tokio::test]
async fn logging_levels_change_at_run_time() {
    init_logs();
    let net = 35;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        two_workloads_yaml(net, "[]"),
    )
    .unwrap();
    // The filter layer is not installed globally (tests share one process); its handle
    // still reloads, which is what `/logging` drives.
    let (_layer, control) = logging::reloadable("info");
    let app = app::build_with(
        client_config(dir.path(), net, false),
        BuildOptions {
            log: Some(control.clone()),
            ..BuildOptions::default()
        },
    )
    .await
    .unwrap();
    let admin = app.bound.admin;
    assert_eq!(
        http(admin, "GET", "/logging").await,
        (200, "current log level is info\n".to_string())
    );
    assert_eq!(
        http(admin, "POST", "/logging?level=debug").await,
        (200, "current log level is debug\n".to_string())
    );
    assert_eq!(control.current(), "debug");
    assert_eq!(
        http(
            admin,
            "POST",
            "/logging?level=access:trace,ztunnel::proxy:warn"
        )
        .await,
        (
            200,
            "current log level is debug,access=trace,ztunnel::proxy=warn\n".to_string()
        )
    );
    let (status, body) = http(admin, "POST", "/logging?level=loud").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(control.current(), "debug,access=trace,ztunnel::proxy=warn");
    assert_eq!(http(admin, "GET", "/logging?level=debug").await.0, 405);
    assert_eq!(
        http(admin, "POST", "/logging?level=reset").await,
        (200, "current log level is info\n".to_string())
    );
}

#[tokio::test]
async fn quitquitquit_drains_open_connections_and_refuses_new_ones() {
    let m = mesh(36, "[]", false).await;
    let socks = m.a.bound.socks5.unwrap();
    let mut open = socks_connect(socks, m.echo).await.unwrap();
    echo_once(&mut open, b"before").await;

    assert_eq!(
        http(m.a.bound.admin, "POST", "/quitquitquit").await,
        (200, "OK\n".to_string())
    );
    tokio::time::timeout(PATIENCE, m.a.shutdown_requested())
        .await
        .unwrap();
    eventually("new connections refused", || async {
        match socks_connect(socks, m.echo).await {
            Err(_) => true,
            // Accepted into the closing listener's backlog: it must not carry data.
            Ok(s) => round_trip(s, b"late").await.is_empty(),
        }
    })
    .await;
    // The open connection keeps working while the drain waits for it.
    echo_once(&mut open, b"during the drain").await;
    assert_eq!(round_trip(open, b"last").await, b"last");
    let outcome = tokio::time::timeout(PATIENCE, m.a.drained()).await.unwrap();
    assert_eq!(outcome, Some(DrainOutcome::Completed));
    // Readiness stopped with the other listeners.
    assert!(TcpStream::connect(m.a.bound.readiness).await.is_err());
}

#[tokio::test]
async fn a_new_proxy_binds_beside_a_draining_one() {
    let m = mesh(37, "[]", true).await;
    let Mesh {
        dir,
        net,
        a,
        b,
        echo,
    } = m;
    let socks = a.bound.socks5.unwrap();
    let mut open = socks_connect(socks, echo).await.unwrap();
    echo_once(&mut open, b"old proxy").await;

    let draining = tokio::spawn(a.shutdown());
    // Same addresses, fixed ports: SO_REUSEPORT lets the new proxy bind beside the old one.
    let a2 = app::build(client_config(dir.path(), net, true))
        .await
        .unwrap();
    assert_eq!(a2.bound.socks5, Some(socks));
    assert_eq!(a2.bound.admin.port(), 15000);
    assert_eq!(a2.bound.metrics.port(), 15020);
    assert_eq!(a2.bound.readiness.port(), 15021);

    // New connections reach the new proxy once the old one stopped accepting.
    eventually("a new connection through the new proxy", || async {
        match socks_connect(socks, echo).await {
            Ok(s) => round_trip(s, b"new proxy").await == b"new proxy",
            Err(_) => false,
        }
    })
    .await;
    // Both processes' metrics sockets share the address, so read the new one's registry.
    let text = a2.metrics.encode().unwrap();
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &[]),
        1,
        "{text}"
    );
    // The old proxy still carries its open connection to the end.
    echo_once(&mut open, b"still draining").await;
    assert_eq!(round_trip(open, b"bye").await, b"bye");
    let outcome = tokio::time::timeout(PATIENCE, draining)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Completed);
    a2.shutdown().await;
    b.shutdown().await;
}
