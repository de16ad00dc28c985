use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::{Identity, NamespacedHostname, NetworkAddress};
use test_case::test_case;
use tokio_util::sync::CancellationToken;

use super::{LocalConfigError, LocalConfigMetrics, MAX_FILE_BYTES, load_file, parse, watch};
use crate::rbac::{Denied, RbacConnection};
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, GatewayAddress, GatewayDestination, HealthStatus,
    InboundProtocol, IpFamilies, LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode,
    LoadBalancerScope, NetworkMode, PolicyAction, PolicyMatch, PolicyScope, ServiceAccountMatch,
    StateStore, StringMatch,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nh(s: &str) -> NamespacedHostname {
    s.parse().unwrap()
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/localhost.yaml")
}

#[test]
fn example_localhost_parses() {
    let state = load_file(&example_path()).unwrap();
    assert_eq!(state.workloads.len(), 2);
    let local = state.workload_by_ip("", ip("127.0.0.1")).unwrap();
    assert_eq!(local.protocol, InboundProtocol::Hbone);
    assert_eq!(
        local.identity(),
        Identity::new("cluster.local", "default", "default")
    );
    assert!(
        state
            .workload_by_info("default", "local", "default")
            .is_some()
    );
    let tcp = state.workload_by_ip("", ip("127.0.0.2")).unwrap();
    assert_eq!(tcp.protocol, InboundProtocol::Tcp);

    let example = state
        .service_by_vip("", ip("127.10.0.1"), "default")
        .unwrap();
    assert_eq!(example.hostname, "example.com");
    assert_eq!(example.endpoints.len(), 2);
    assert_eq!(
        example.subject_alt_names,
        ["spiffe://cluster.local/ns/default/sa/local"]
    );
    let up = state.load_balance(&example, 80, Some(&local)).unwrap();
    assert_eq!(up.port, 8080);

    let remote = state
        .service_by_vip("remote", ip("127.10.0.2"), "default")
        .unwrap();
    assert_eq!(remote.hostname, "example2.com");
    assert!(
        state
            .service_by_vip("", ip("127.10.0.2"), "default")
            .is_none()
    );

    let conn = |port: u16| RbacConnection {
        src: "127.0.0.2:5000".parse().unwrap(),
        src_identity: None,
        dst: (ip("127.0.0.1"), port).into(),
        dst_network: String::new(),
    };
    assert_eq!(state.assert_rbac(&local, &conn(8080)), Ok(()));
    assert_eq!(
        state.assert_rbac(&local, &conn(9999)),
        Err(Denied::NotAllowed)
    );
}

const FULL: &str = r#"
workloads:
  - name: full
    namespace: ns1
    workloadIps: ["10.0.0.1", "fd00::1"]
    hostname: full.example
    network: net1
    protocol: HBONE
    trustDomain: td.example
    serviceAccount: sa1
    node: node1
    waypoint: {destination: "ns1/waypoint.ns1.svc.cluster.local", hboneMtlsPort: 15009}
    networkGateway: {destination: "net1/172.16.0.1"}
    nativeTunnel: true
    applicationTunnel: {protocol: PROXY, port: 15088}
    authorizationPolicies: ["ns1/selected"]
    status: Unhealthy
    clusterId: c1
    locality: {region: r1, zone: z1, subzone: s1}
    capacity: 7
    canonicalName: full-app
    canonicalRevision: v2
    workloadName: full-deploy
    workloadType: Deployment
    networkMode: HostNetwork
    services:
      "ns1/svc.example": {80: 8080, "443": "8443"}
services:
  - name: svc
    namespace: ns1
    hostname: svc.example
    vips: ["/10.96.0.1", "net2/10.96.0.2", "10.96.0.3"]
    ports: {80: 8080, 443: 0}
    subjectAltNames: ["spiffe://td.example/ns/ns1/sa/other"]
    waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
    loadBalancer: {routingPreferences: [Network, Region, Zone], mode: Failover, healthPolicy: AllowAll}
    ipFamilies: Dual
    canonical: true
    visibility: Public
policies:
  - name: selected
    namespace: ns1
    scope: WorkloadSelector
    action: Deny
    dryRun: true
    rules:
      - - - namespaces: [{Exact: ns2}, {Prefix: team-}, {Suffix: -prod}, {Presence: []}]
            notNamespaces: [{Presence: {}}, {Presence: null}, {Presence: }, !Exact tagged]
            principals: [{Exact: td.example/ns/ns2/sa/client}]
            notPrincipals: [{Prefix: bad/}]
            sourceIps: ["10.0.0.0/8", "10.1.2.3", "fd00::/8", "10.9.9.9/16"]
            notSourceIps: ["10.0.0.1"]
            destinationIps: ["10.0.0.1/32"]
            notDestinationIps: ["::1"]
            destinationPorts: [8080]
            notDestinationPorts: [9999]
            serviceAccounts: [{namespace: ns2, serviceAccount: client}]
            notServiceAccounts: [{namespace: ns2, serviceAccount: bad}]
        - []
      - []
  - name: global
    scope: Global
    action: Allow
"#;

#[test]
fn every_field_is_converted() {
    let state = parse(FULL).unwrap();
    let w = &state.workloads["c1//v1/Pod/ns1/full"];
    assert_eq!(w.workload_ips, [ip("10.0.0.1"), ip("fd00::1")]);
    assert_eq!(w.hostname, "full.example");
    assert_eq!(w.network, "net1");
    assert_eq!(w.protocol, InboundProtocol::Hbone);
    assert_eq!(w.identity(), Identity::new("td.example", "ns1", "sa1"));
    assert_eq!(w.node, "node1");
    assert_eq!(
        w.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname(nh("ns1/waypoint.ns1.svc.cluster.local")),
            hbone_mtls_port: 15009,
        })
    );
    assert_eq!(
        w.network_gateway,
        Some(GatewayAddress {
            destination: GatewayDestination::Address("net1/172.16.0.1".parse().unwrap()),
            hbone_mtls_port: 15008,
        })
    );
    assert!(w.native_tunnel);
    assert_eq!(
        w.application_tunnel,
        Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088),
        })
    );
    assert_eq!(w.authorization_policies, ["ns1/selected"]);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.cluster_id, "c1");
    assert_eq!(
        (
            w.locality.region.as_str(),
            w.locality.zone.as_str(),
            w.locality.subzone.as_str()
        ),
        ("r1", "z1", "s1")
    );
    assert_eq!(w.capacity, 7);
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("full-app", "v2")
    );
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type.as_str()),
        ("full-deploy", "deployment")
    );
    assert_eq!(w.network_mode, NetworkMode::HostNetwork);
    assert_eq!(
        w.services[&nh("ns1/svc.example")],
        [(80, 8080), (443, 8443)].into_iter().collect()
    );
    assert!(
        state.workload_by_ip("net1", ip("10.0.0.1")).is_none(),
        "host network"
    );

    let s = &state.services[&nh("ns1/svc.example")];
    let vips: Vec<NetworkAddress> = ["/10.96.0.1", "net2/10.96.0.2", "/10.96.0.3"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(s.vips, vips);
    assert_eq!(s.ports, [(80, 8080), (443, 0)].into_iter().collect());
    assert_eq!(s.subject_alt_names, ["spiffe://td.example/ns/ns1/sa/other"]);
    assert_eq!(
        s.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Address("/10.0.0.9".parse().unwrap())
    );
    assert_eq!(
        s.load_balancer,
        Some(LoadBalancer {
            routing_preferences: vec![
                LoadBalancerScope::Network,
                LoadBalancerScope::Region,
                LoadBalancerScope::Zone
            ],
            mode: LoadBalancerMode::Failover,
            health_policy: LoadBalancerHealthPolicy::AllowAll,
        })
    );
    assert_eq!(s.ip_families, IpFamilies::Dual);
    assert_eq!(s.endpoints.len(), 1, "merged from the workload");

    let p = &state.policies["ns1/selected"];
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (PolicyScope::WorkloadSelector, PolicyAction::Deny, true)
    );
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].len(), 2);
    assert!(p.rules[0][1].is_empty() && p.rules[1].is_empty());
    let net = |s: &str| s.parse().unwrap();
    let exact = |s: &str| StringMatch::Exact(s.into());
    assert_eq!(
        p.rules[0][0][0],
        PolicyMatch {
            namespaces: vec![
                exact("ns2"),
                StringMatch::Prefix("team-".into()),
                StringMatch::Suffix("-prod".into()),
                StringMatch::Presence
            ],
            not_namespaces: vec![
                StringMatch::Presence,
                StringMatch::Presence,
                StringMatch::Presence,
                exact("tagged")
            ],
            principals: vec![exact("td.example/ns/ns2/sa/client")],
            not_principals: vec![StringMatch::Prefix("bad/".into())],
            source_ips: vec![
                net("10.0.0.0/8"),
                net("10.1.2.3/32"),
                net("fd00::/8"),
                net("10.9.0.0/16")
            ],
            not_source_ips: vec![net("10.0.0.1/32")],
            destination_ips: vec![net("10.0.0.1/32")],
            not_destination_ips: vec![net("::1/128")],
            destination_ports: vec![8080],
            not_destination_ports: vec![9999],
            service_accounts: vec![ServiceAccountMatch {
                namespace: "ns2".into(),
                service_account: "client".into()
            }],
            not_service_accounts: vec![ServiceAccountMatch {
                namespace: "ns2".into(),
                service_account: "bad".into()
            }],
        }
    );
    let g = &state.policies["/global"];
    assert_eq!(
        (g.scope, g.action, g.dry_run),
        (PolicyScope::Global, PolicyAction::Allow, false)
    );
    assert!(g.rules.is_empty());
    assert_eq!(state.policies_by_namespace[""], ["/global"]);
}

#[test]
fn defaults_and_derived_uid() {
    let state = parse("workloads: [{name: a, namespace: ns, workloadIps: []}]").unwrap();
    let w = &state.workloads["Kubernetes//v1/Pod/ns/a"];
    assert_eq!(
        w.identity(),
        Identity::new("cluster.local", "ns", "default")
    );
    assert_eq!(
        (w.protocol, w.status, w.capacity),
        (InboundProtocol::Tcp, HealthStatus::Healthy, 1)
    );
    assert_eq!(w.workload_type, "pod");
    assert!(state.services.is_empty() && state.policies.is_empty());
}

#[test_case("workloads: ~\nservices: []" ; "null list")]
#[test_case("{}" ; "empty map")]
#[test_case("services:\n- {name: s, namespace: n, hostname: h, weightedWaypoints: [{}], cidrVips: [\"10.0.0.0/24\"], visibility: Namespace, endpoints: {}}" ; "istio fields we do not model are accepted")]
fn accepted(yaml: &str) {
    parse(yaml).unwrap();
}

const W: &str = "workloads:\n- name: w\n  namespace: ns\n  workloadIps: [\"10.0.0.1\"]\n";
const P: &str =
    "policies:\n- name: p\n  namespace: ns\n  scope: Namespace\n  action: Allow\n  rules: [[[";

#[test_case("", &["empty"] ; "empty document")]
#[test_case("# only a comment\n", &["empty"] ; "comments only")]
#[test_case("~", &["empty"] ; "null document")]
#[test_case("- 1\n- 2", &["invalid type"] ; "not a map")]
#[test_case("workloads: [", &["line 2"] ; "truncated yaml")]
#[test_case("workload: []", &["unknown field `workload`"] ; "unknown top level key")]
#[test_case("workloads:\n- name: w\n  namespace: ns\n  workloadIps: []\n  colour: red", &["unknown field `colour`"] ; "unknown workload key")]
#[test_case("workloads:\n- name: w\n  namespace: x/y\n  workloadIps: []", &["namespace/serviceAccount/trustDomain", "not a valid SPIFFE identity"] ; "slash in namespace")]
#[test_case("workloads:\n- name: w\n  namespace: ns\n  serviceAccount: a/b\n  workloadIps: []", &["not a valid SPIFFE identity"] ; "slash in service account")]
#[test_case("workloads:\n- name: w\n  namespace: ns", &["missing field `workloadIps`"] ; "missing workload ips")]
#[test_case("workloads:\n- name: w\n  workloadIps: []", &["missing field `namespace`"] ; "missing namespace")]
#[test_case("workloads:\n- {name: w, namespace: \"\", workloadIps: []}", &["workloads[0]", "namespace"] ; "empty namespace")]
#[test_case("workloads:\n- {namespace: ns, workloadIps: []}", &["workloads[0]", "name (or uid)"] ; "no uid and no name")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [\"10.0.0.300\"]}", &["workload ns/w", "workloadIps[0]", "10.0.0.300"] ; "bad workload ip")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], protocol: LEGACY_ISTIO_MTLS}", &["protocol", "LEGACY_ISTIO_MTLS"] ; "unsupported protocol")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], services: {nohost: {80: 80}}}", &["workload ns/w", "services[\"nohost\"]"] ; "bad service key")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], services: {ns/h: {80: 70000}}}", &["workload ns/w", "services[\"ns/h\"]", "70000"] ; "target port out of range")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], services: {ns/h: [80]}}", &["services[\"ns/h\"]", "servicePort"] ; "service ports not a map")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], waypoint: {destination: \"not a thing\"}}", &["workload ns/w", "waypoint.destination"] ; "bad waypoint")]
#[test_case("workloads:\n- {name: w, namespace: ns, workloadIps: [], capacity: -1}", &["capacity"] ; "negative capacity")]
#[test_case("services:\n- {name: s, namespace: ns, hostname: h, vips: [\"net/nope\"]}", &["service ns/h", "vips[0]"] ; "bad vip")]
#[test_case("services:\n- {name: s, namespace: ns, hostname: h, ports: {http: 80}}", &["service ns/h", "ports", "http"] ; "bad service port")]
#[test_case("services:\n- {name: s, namespace: ns, hostname: \"\"}", &["services[0]", "hostname"] ; "empty hostname")]
#[test_case("services:\n- {name: s, namespace: ns, hostname: h, loadBalancer: {mode: Random}}", &["Random"] ; "unknown lb mode")]
#[test_case("policies:\n- {name: p, namespace: ns, scope: Namespace}", &["missing field `action`"] ; "missing action")]
#[test_case("policies:\n- {name: p, scope: Namespace, action: Allow}", &["policy /p", "namespace"] ; "namespace scope without namespace")]
#[test_case("policies:\n- {name: p, namespace: ns, scope: Cluster, action: Allow}", &["Cluster"] ; "unknown scope")]
#[test_case(&format!("{P}{{namespaces: [{{Regex: x}}]}}]]]"), &["policy ns/p", "rules[0][0][0].namespaces[0]", "Regex"] ; "unknown string match")]
#[test_case(&format!("{P}{{principals: [{{Presence: [x]}}]}}]]]"), &["policy ns/p", "rules[0][0][0].principals[0]", "Presence"] ; "presence with a value")]
#[test_case(&format!("{P}{{principals: [{{Exact: a, Prefix: b}}]}}]]]"), &["principals[0]", "expected one of"] ; "two string match kinds")]
#[test_case(&format!("{P}{{principals: [exact]}}]]]"), &["principals[0]", "expected one of"] ; "bare string match")]
#[test_case(&format!("{P}{{principals: [{{Exact: [a]}}]}}]]]"), &["principals[0]", "needs a string"] ; "exact with a list")]
#[test_case(&format!("{P}{{sourceIps: [\"10.0.0.0/33\"]}}]]]"), &["policy ns/p", "rules[0][0][0].sourceIps[0]"] ; "bad cidr")]
#[test_case(&format!("{P}{{notDestinationIps: [\"host\"]}}]]]"), &["notDestinationIps[0]"] ; "bad ip")]
#[test_case(&format!("{P}{{destinationPorts: [70000]}}]]]"), &["policy ns/p", "rules[0][0][0].destinationPorts[0]", "70000"] ; "port out of range")]
#[test_case(&format!("{P}{{destinationPort: [80]}}]]]"), &["unknown field `destinationPort`"] ; "misspelled match key")]
#[test_case(&format!("{P}{{serviceAccounts: [{{namespace: a}}]}}]]]"), &["serviceAccount"] ; "incomplete service account")]
#[test_case(&format!("{W}{}", &W[10..]), &["more than once", "workload Kubernetes//v1/Pod/ns/w"] ; "duplicate workload uid")]
#[test_case("services:\n- {name: a, namespace: ns, hostname: h}\n- {name: b, namespace: ns, hostname: h}", &["service ns/h", "more than once"] ; "duplicate service")]
#[test_case("policies:\n- {name: p, namespace: ns, scope: Global, action: Allow}\n- {name: p, namespace: ns, scope: Namespace, action: Deny}", &["policy ns/p", "more than once"] ; "duplicate policy")]
#[test_case("a: &a [*a]", &["a"] ; "recursive alias")]
fn rejected(yaml: &str, wanted: &[&str]) {
    let err = parse(yaml)
        .err()
        .unwrap_or_else(|| panic!("accepted: {yaml}"));
    let text = err.to_string();
    for want in wanted {
        assert!(text.contains(want), "{text:?} should mention {want:?}");
    }
}

#[test]
fn malformed_input_never_panics() {
    let example = std::fs::read_to_string(example_path()).unwrap();
    let docs = [example.as_str(), FULL];
    for doc in docs {
        for end in (0..doc.len()).filter(|i| doc.is_char_boundary(*i)) {
            let _ = parse(&doc[..end]);
            let _ = parse(&doc[end..]);
        }
    }
    for garbage in [
        "\0",
        "{",
        "}",
        "[[[[[[[[[[",
        "!!binary x",
        "? a\n: b",
        "\u{feff}",
        "*x",
    ] {
        let _ = parse(garbage);
    }
    let deep = format!("workloads: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse(&deep).is_err());
}

#[test]
fn load_file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let err = load_file(&missing).err().unwrap();
    assert!(matches!(err, LocalConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "workloads: [{name: w}]").unwrap();
    let err = load_file(&bad).err().unwrap();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    assert!(err.to_string().contains("namespace"), "{err}");

    let huge = dir.path().join("huge.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = load_file(&huge).err().unwrap();
    assert!(matches!(err, LocalConfigError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("huge.yaml"), "{err}");
}

// === watch ===

fn doc(workloads: usize) -> String {
    let mut out = String::from("workloads:\n");
    for i in 0..workloads {
        out.push_str(&format!(
            "- {{name: w{i}, namespace: ns, workloadIps: [\"10.0.0.{}\"]}}\n",
            i + 1
        ));
    }
    out
}

/// Replaces the file in one rename, so the watcher never sees a half-written version.
fn replace(dir: &Path, path: &Path, content: &str) {
    let mut tmp = tempfile::NamedTempFile::new_in(dir).unwrap();
    tmp.write_all(content.as_bytes()).unwrap();
    tmp.persist(path).unwrap();
}

async fn next_outcome(rx: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the watcher did not react within 10s")
        .unwrap();
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn watch_applies_rejects_and_keeps_the_last_good_state() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    replace(dir.path(), &path, &doc(1));
    let store = Arc::new(StateStore::default());
    store.publish(load_file(&path).unwrap());
    let metrics = Arc::new(LocalConfigMetrics::default());
    let mut outcomes = metrics.subscribe();
    let mut versions = store.subscribe();
    versions.borrow_and_update();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watch(
        path.clone(),
        store.clone(),
        Duration::from_millis(10),
        shutdown.clone(),
        metrics.clone(),
    ));
    let counts = || {
        (
            metrics.applied.load(Ordering::Relaxed),
            metrics.rejected.load(Ordering::Relaxed),
        )
    };

    // A valid change is published.
    replace(dir.path(), &path, &doc(2));
    tokio::time::timeout(Duration::from_secs(10), versions.changed())
        .await
        .unwrap()
        .unwrap();
    next_outcome(&mut outcomes).await;
    assert_eq!(store.snapshot().workloads.len(), 2);
    assert_eq!((store.version(), counts()), (2, (1, 0)));

    // An invalid version is rejected; the last good state stays.
    replace(dir.path(), &path, "workloads: [{name: broken}]");
    next_outcome(&mut outcomes).await;
    assert_eq!(counts(), (1, 1));
    assert_eq!((store.version(), store.snapshot().workloads.len()), (2, 2));

    // So is a missing file.
    std::fs::remove_file(&path).unwrap();
    next_outcome(&mut outcomes).await;
    assert_eq!(counts(), (1, 2));
    assert_eq!((store.version(), store.snapshot().workloads.len()), (2, 2));

    // It comes back.
    replace(dir.path(), &path, &doc(3));
    next_outcome(&mut outcomes).await;
    assert_eq!(counts(), (2, 2));
    assert_eq!((store.version(), store.snapshot().workloads.len()), (3, 3));

    // Rewriting the same content is not a new version; the next real change is.
    replace(dir.path(), &path, &doc(3));
    replace(dir.path(), &path, &doc(4));
    next_outcome(&mut outcomes).await;
    assert_eq!(store.snapshot().workloads.len(), 4);
    assert_eq!(store.version(), 4);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("local config applied"), "{text}");
    assert!(text.contains("version=2"), "{text}");
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("local config rejected"), "{text}");
    assert!(
        text.contains("namespace"),
        "the warning carries the error: {text}"
    );
}

#[tokio::test]
async fn watch_catches_a_change_made_before_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    replace(dir.path(), &path, &doc(1));
    let store = Arc::new(StateStore::default());
    store.publish(load_file(&path).unwrap());
    replace(dir.path(), &path, &doc(2));

    let metrics = Arc::new(LocalConfigMetrics::default());
    let mut versions = store.subscribe();
    versions.borrow_and_update();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watch(
        path,
        store.clone(),
        Duration::from_secs(3600),
        shutdown.clone(),
        metrics,
    ));
    tokio::time::timeout(Duration::from_secs(10), versions.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.snapshot().workloads.len(), 2);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
