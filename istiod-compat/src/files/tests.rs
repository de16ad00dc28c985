//! Files registry tests: parsing, start-up loading, live reloading, and the example directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use test_case::test_case;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::translate::{TranslateConfig, translate};

fn parse(text: &str) -> Result<Parsed, FilesError> {
    parse_documents(Path::new("t.yaml"), text)
}

fn snapshot_of(text: &str) -> Snapshot {
    build_snapshot(parse(text).expect("parses").objects).0
}

#[test]
fn multi_document_with_comments_lists_and_defaults() {
    let text = "# a comment-only document\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: demo, namespace: ignored}\n---\n---\n\
        apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n---\n\
        apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec: {action: DENY}\n---\n\
        apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: demo}\naddressType: IPv4\nendpoints: []\n---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
    let parsed = parse(text).expect("parses");
    assert_eq!(parsed.objects.len(), 6);
    assert_eq!(
        parsed.warnings,
        ["t.yaml: document 6: unsupported apps/v1 Deployment; skipped"]
    );
    let (s, warnings) = build_snapshot(parsed.objects);
    assert!(warnings.is_empty());
    assert_eq!(s.namespaces["demo"].metadata.namespace, None);
    assert!(s.nodes.contains_key("n1"));
    assert!(s.services.contains_key(&("default".into(), "s".into())));
    let ap = &s.authorization_policies[&("demo".into(), "a".into())];
    assert_eq!(ap.spec.action.as_deref(), Some("DENY"));
    assert!(
        s.peer_authentications
            .contains_key(&("demo".into(), "pa".into()))
    );
    assert!(s.endpoint_slices.contains_key(&("demo".into(), "e".into())));
}

#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.1}\n", Some("Running"), &["10.0.0.1"], Some("True"); "status filled in")]
#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", Some("Running"), &[], Some("True"); "no status")]
#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {phase: Pending, podIP: 10.0.0.1}\n", Some("Pending"), &["10.0.0.1"], None; "pending stays unready")]
#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}], conditions: [{type: Ready, status: 'False'}]}\n", Some("Running"), &["10.0.0.1", "fd00::1"], Some("False"); "explicit condition kept")]
fn pod_defaults_for_files(text: &str, phase: Option<&str>, ips: &[&str], ready: Option<&str>) {
    let s = snapshot_of(text);
    let status = s.pods[&("default".into(), "p".into())]
        .status
        .clone()
        .expect("status");
    assert_eq!(status.phase.as_deref(), phase);
    let got: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .collect();
    assert_eq!(got, ips);
    let ready_condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready_condition.as_deref(), ready);
}

#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {name: [oops}\n", "document 0: invalid YAML"; "bad yaml")]
#[test_case("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 5}\n", "document 1: invalid Pod"; "bad type")]
#[test_case("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n", "document 0: metadata.name is required"; "no name")]
#[test_case("kind: Pod\nmetadata: {name: p}\n", "document 0: missing apiVersion"; "no api version")]
#[test_case("apiVersion: v1\nmetadata: {name: p}\n", "document 0: missing kind"; "no kind")]
#[test_case("- just\n- a list\n", "document 0: a document must be a mapping"; "not a mapping")]
#[test_case("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n", "nested List"; "nested list")]
fn file_errors(text: &str, want: &str) {
    let err = parse(text).expect_err("fails").to_string();
    assert!(err.starts_with("t.yaml: "), "{err}");
    assert!(err.contains(want), "{err}");
}

#[test]
fn duplicates_later_wins() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a, labels: {n: '1'}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a, labels: {n: '2'}}\n";
    let (s, warnings) = build_snapshot(parse(text).expect("parses").objects);
    let svc = &s.services[&("a".into(), "s".into())];
    assert_eq!(
        svc.metadata.labels.as_ref().map(|l| l["n"].as_str()),
        Some("2")
    );
    assert_eq!(warnings, ["duplicate Service a/s: the later one wins"]);
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
const NS_B: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";

#[test]
fn load_dir_reads_yaml_files_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), NS).expect("write");
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("c.yml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "{{{").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "{{{").expect("write");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    let s = load_dir(dir.path()).expect("loads");
    assert_eq!(s.namespaces.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.nodes.contains_key("n"));

    std::fs::write(
        dir.path().join("d.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
    )
    .expect("write");
    let err = load_dir(dir.path())
        .expect_err("bad file fails start-up")
        .to_string();
    assert!(
        err.contains("d.yaml") && err.contains("metadata.name is required"),
        "{err}"
    );

    let missing = load_dir(&dir.path().join("missing")).expect_err("no dir");
    assert!(matches!(missing, FilesError::ReadDir { .. }), "{missing}");
}

/// Waits (bounded) until the next published snapshot satisfies `pred`.
async fn next_matching(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        loop {
            rx.changed().await.expect("registry running");
            let s = rx.borrow_and_update().clone();
            if pred(&s) {
                return s;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("snapshot within 10s")
}

/// Polls `cond` every 5ms for at most 10s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn names(s: &Snapshot) -> Vec<String> {
    s.namespaces.keys().cloned().collect()
}

fn replace_file(path: &Path, text: &str) {
    // Atomic replace, as editors and ConfigMap updates do (new inode).
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn run_reloads_on_change_and_keeps_last_good_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, NS).expect("write");
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let registry = FilesRegistry::new(dir.path());
    let stats = registry.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(registry.run(tx, Duration::from_millis(10), shutdown.clone()));

    let s = next_matching(&mut rx, |s| !s.namespaces.is_empty()).await;
    assert_eq!(names(&s), ["a"]);

    // A new file is picked up.
    let b = dir.path().join("b.yaml");
    std::fs::write(&b, NS_B).expect("write");
    let s = next_matching(&mut rx, |s| s.namespaces.len() == 2).await;
    assert_eq!(names(&s), ["a", "b"]);

    // A broken file is logged and counted; its last good version stays.
    let errors = stats.parse_errors();
    replace_file(
        &b,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: [broken\n",
    );
    eventually("the parse error to be counted", || {
        stats.parse_errors() > errors
    })
    .await;
    assert_eq!(names(&rx.borrow()), ["a", "b"]);

    // Other files still apply meanwhile.
    replace_file(
        &a,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a2}\n",
    );
    let s = next_matching(&mut rx, |s| s.namespaces.contains_key("a2")).await;
    assert_eq!(names(&s), ["a2", "b"]);

    // Fixed: the new content applies.
    replace_file(
        &b,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b2}\n",
    );
    let s = next_matching(&mut rx, |s| s.namespaces.contains_key("b2")).await;
    assert_eq!(names(&s), ["a2", "b2"]);

    // A removed file takes its objects with it.
    std::fs::remove_file(&b).expect("remove");
    let s = next_matching(&mut rx, |s| s.namespaces.len() == 1).await;
    assert_eq!(names(&s), ["a2"]);
    assert_eq!(stats.files(), 1);
    assert!(stats.reloads() >= 5);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}

#[tokio::test]
async fn run_sees_same_size_rewrites_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, NS).expect("write");
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        dir.path().to_owned(),
        tx,
        Duration::from_millis(10),
        shutdown.clone(),
    ));
    next_matching(&mut rx, |s| s.namespaces.contains_key("a")).await;
    // Same size, same inode, likely the same mtime tick: only the content differs.
    std::fs::write(&a, NS.replace("name: a", "name: z")).expect("write");
    next_matching(&mut rx, |s| s.namespaces.contains_key("z")).await;
    shutdown.cancel();
    task.await.expect("no panic");
}

#[tokio::test]
async fn run_survives_a_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("later");
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let registry = FilesRegistry::new(&path);
    let stats = registry.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(registry.run(tx, Duration::from_millis(10), shutdown.clone()));
    eventually("the error to be counted", || stats.parse_errors() == 1).await;
    // Nothing published while the directory is missing.
    assert!(!rx.has_changed().expect("registry running"));
    assert_eq!(stats.reloads(), 0);
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("a.yaml"), NS).expect("write");
    next_matching(&mut rx, |s| s.namespaces.contains_key("a")).await;
    assert_eq!(stats.parse_errors(), 1, "counted once, not on every poll");
    shutdown.cancel();
    task.await.expect("no panic");
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/two-nodes")
}

#[test]
fn example_two_nodes() {
    use std::collections::BTreeSet;
    use xds_proto::workload::{Port, TunnelProtocol, address};

    let snapshot = load_dir(&example_dir()).expect("example loads");
    let x = translate(&snapshot, &TranslateConfig::default());
    assert!(x.warnings.is_empty(), "{:?}", x.warnings);
    assert!(x.authorizations.is_empty(), "policies are commented out");
    let keys: Vec<&str> = x.addresses.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "Kubernetes//v1/Pod/backend/server",
            "Kubernetes//v1/Pod/frontend/client",
            "backend/server.backend.svc.cluster.local",
        ]
    );
    let workload = |uid: &str| match &x.addresses[uid].resource.r#type {
        Some(address::Type::Workload(w)) => w.clone(),
        other => panic!("{other:?}"),
    };
    let client = workload("Kubernetes//v1/Pod/frontend/client");
    assert_eq!(client.addresses, vec![vec![10, 0, 1, 2]]);
    assert_eq!(
        (client.node.as_str(), client.service_account.as_str()),
        ("node1", "client")
    );
    assert_eq!(client.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(
        client.locality.as_ref().map(|l| l.zone.as_str()),
        Some("zone-1")
    );

    let server = workload("Kubernetes//v1/Pod/backend/server");
    assert_eq!(server.addresses, vec![vec![10, 0, 2, 2]]);
    assert_eq!(
        (server.node.as_str(), server.service_account.as_str()),
        ("node2", "server")
    );
    assert_eq!(server.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(server.canonical_revision, "v1");
    assert_eq!(
        server.services["backend/server.backend.svc.cluster.local"].ports,
        vec![Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0
        }]
    );

    match &x.addresses["backend/server.backend.svc.cluster.local"]
        .resource
        .r#type
    {
        Some(address::Type::Service(s)) => {
            assert_eq!(
                s.addresses.first().map(|a| a.address.clone()),
                Some(vec![10, 96, 0, 10])
            );
            assert_eq!(
                s.ports.first().map(|p| (p.service_port, p.target_port)),
                Some((80, 0))
            );
        }
        other => panic!("{other:?}"),
    }
    let id = |s: &str| BTreeSet::from([s.to_owned()]);
    assert_eq!(
        x.identities_by_node["node1"],
        id("spiffe://cluster.local/ns/frontend/sa/client")
    );
    assert_eq!(
        x.identities_by_node["node2"],
        id("spiffe://cluster.local/ns/backend/sa/server")
    );
}

/// The commented-out example policies stay valid: uncomment them (everything after the
/// first line that is just `#`) and check what they become.
#[test]
fn example_policies_when_uncommented() {
    let uncomment = |file: &str| {
        let text = std::fs::read_to_string(example_dir().join(file)).expect("read");
        text.lines()
            .skip_while(|l| *l != "#")
            .skip(1)
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(example_dir()).expect("example dir") {
        let path = entry.expect("entry").path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            std::fs::copy(&path, dir.path().join(name)).expect("copy");
        }
    }
    for file in [
        "40-authorization-policy.yaml",
        "50-peer-authentication.yaml",
    ] {
        std::fs::write(dir.path().join(file), uncomment(file)).expect("write");
    }
    let x = translate(
        &load_dir(dir.path()).expect("loads"),
        &TranslateConfig::default(),
    );
    assert!(x.warnings.is_empty(), "{:?}", x.warnings);
    let keys: Vec<&str> = x.authorizations.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "backend/converted_peer_authentication_strict",
            "backend/server-allow-client"
        ]
    );
    let server = match &x.addresses["Kubernetes//v1/Pod/backend/server"]
        .resource
        .r#type
    {
        Some(xds_proto::workload::address::Type::Workload(w)) => w.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        server.authorization_policies,
        [
            "backend/server-allow-client",
            "backend/converted_peer_authentication_strict"
        ]
    );
}
