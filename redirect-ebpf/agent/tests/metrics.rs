//! `/metrics` on the agent's readiness address, scraped after real events: the whole agent
//! (nftables mode, files registry) in-process, the real `mesh-cni` binary for ADD and DEL,
//! a malformed line on the CNI socket, and a ztunnel-side ZDS client that nacks once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::{Netns, Ztunnel, eventually, require_root, run_cni};
use redirect_agent::app::{self, Agent, Options};
use redirect_agent::config::{Config, env};
use redirect_agent::redirect::NftRedirection;
use xds_proto::workload::zds::workload_request::Payload;

const REGISTRY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh, uid: uid-m1}
spec: {nodeName: node1, containers: [{name: c, image: i}]}
status: {podIP: 10.79.5.2}
"#;

/// `GET path` on the agent's readiness address: (head, body).
fn get(agent: &Agent, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(agent.readiness_addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of one sample line (`name{labels}`) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_events() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    std::fs::create_dir(path("registry")).unwrap();
    std::fs::write(path("registry/objects.yaml"), REGISTRY).unwrap();
    let vars: HashMap<String, String> = [
        (env::NODE_NAME, "node1".to_string()),
        (env::REDIRECT_MODE, "nftables".into()),
        (env::ZDS_SOCKET, path("zds.sock").display().to_string()),
        (
            env::CNI_EVENT_SOCKET,
            path("cni.sock").display().to_string(),
        ),
        (env::STATE_DIR, path("state").display().to_string()),
        (env::LOCAL_DIR, path("registry").display().to_string()),
        (env::READINESS_ADDR, "127.0.0.1:0".into()),
        (env::CGROUP_PATH, "/unused".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = Config::parse(&vars, || PathBuf::from("/unused")).unwrap();
    let opts = Options {
        files_poll: Duration::from_millis(50),
        retry_interval: Duration::from_millis(100),
    };
    let agent = app::build(cfg, Box::new(NftRedirection::new()), opts)
        .await
        .unwrap();
    let pod = Netns::new("10.79.5.2");

    // Before any event: every series present at zero (counters with labels appear when
    // first counted).
    let (head, body) = get(&agent, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert_eq!(sample(&body, "redirect_agent_enrolled_pods"), Some(0.0));
    assert_eq!(
        sample(&body, "redirect_agent_zds_connections_total"),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "redirect_agent_cni_bad_requests_total"),
        Some(0.0)
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // ztunnel connects (snapshot: only SnapshotSent, acked).
    let ztunnel = Ztunnel::connect(&path("zds.sock")).await;
    assert!(ztunnel.take_snapshot().await.is_empty());
    eventually("ztunnel ready", || agent.hub.newest().is_some()).await;

    // ADD: enrolled, sent over ZDS, nacked once, acked on the retry.
    let (ok, out) = run_cni(
        "ADD",
        &path("cni.sock"),
        &pod.path,
        ("mesh", "client", "uid-m1"),
        &["10.79.5.2"],
    );
    assert!(ok, "{out}");
    let (p, _) = ztunnel.next().await;
    assert!(matches!(p, Payload::Add(_)), "{p:?}");
    ztunnel.ack("not yet").await;
    let (p, _) = ztunnel.next().await;
    assert!(matches!(p, Payload::Add(_)), "retried: {p:?}");
    ztunnel.ack("").await;

    // Malformed input on the CNI socket: refused and counted.
    let mut s = std::os::unix::net::UnixStream::connect(path("cni.sock")).unwrap();
    s.write_all(b"{\"command\":\"ADD\"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":false"), "{reply}");

    let scrape = |want: &[(&str, f64)]| {
        let body = get(&agent, "/metrics").1;
        want.iter()
            .all(|(series, v)| sample(&body, series) == Some(*v))
    };
    let after_add = [
        (
            r#"redirect_agent_cni_events_total{command="ADD",result="ok"}"#,
            1.0,
        ),
        ("redirect_agent_cni_bad_requests_total", 1.0),
        ("redirect_agent_zds_connections_total", 1.0),
        (r#"redirect_agent_zds_responses_total{result="ack"}"#, 2.0),
        (r#"redirect_agent_zds_responses_total{result="nack"}"#, 1.0),
        (r#"redirect_agent_enrollments_total{result="success"}"#, 1.0),
        (
            r#"redirect_agent_reconcile_errors_total{stage="zds_add"}"#,
            1.0,
        ),
        ("redirect_agent_enrolled_pods", 1.0),
    ];
    eventually("metrics after ADD", || scrape(&after_add)).await;

    // DEL: unenrolled, Del acked.
    let (ok, out) = run_cni(
        "DEL",
        &path("cni.sock"),
        &pod.path,
        ("mesh", "client", "uid-m1"),
        &[],
    );
    assert!(ok, "{out}");
    let (p, _) = ztunnel.next().await;
    assert!(matches!(p, Payload::Del(_)), "{p:?}");
    ztunnel.ack("").await;
    let after_del = [
        (
            r#"redirect_agent_cni_events_total{command="DEL",result="ok"}"#,
            1.0,
        ),
        (
            r#"redirect_agent_unenrollments_total{result="success"}"#,
            1.0,
        ),
        (r#"redirect_agent_zds_responses_total{result="ack"}"#, 3.0),
        ("redirect_agent_enrolled_pods", 0.0),
    ];
    eventually("metrics after DEL", || scrape(&after_del)).await;
    let body = get(&agent, "/metrics").1;
    assert_eq!(
        sample(
            &body,
            r#"redirect_agent_enrollments_total{result="failure"}"#
        ),
        None,
        "{body}"
    );
    agent.shutdown().await;
}
