//! Pod → Workload.

use std::collections::BTreeSet;

use test_case::test_case;
use xds_proto::workload::{
    Locality, NetworkMode, Port, TunnelProtocol, WorkloadStatus, WorkloadType,
};

use super::*;

const UID: &str = "Kubernetes//v1/Pod/demo/p";

/// Namespace `demo` with `ns_labels`, and pod `demo/p` with the given metadata lines (each
/// indented two spaces under `metadata:`), spec lines and status lines.
fn pod(ns_labels: &str, meta: &str, spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels: {{{ns_labels}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: demo\n{meta}spec:\n  nodeName: node1\n{spec}status:\n{status}"
    )
}

fn simple(ns_labels: &str, meta: &str, spec: &str) -> String {
    pod(ns_labels, meta, spec, "  podIP: 10.0.1.2\n")
}

const AMBIENT: &str = "istio.io/dataplane-mode: ambient";

#[test]
fn fields() {
    let x = run(&simple(
        AMBIENT,
        "  labels: {app: web}\n",
        "  serviceAccountName: web-sa\n",
    ));
    let w = workload(&x, UID);
    assert_eq!(w.uid, UID);
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("p", "demo"));
    assert_eq!(w.addresses, vec![vec![10, 0, 1, 2]]);
    assert_eq!(w.node, "node1");
    assert_eq!(w.service_account, "web-sa");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.network, "");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    assert_eq!(w.network_mode, NetworkMode::Standard as i32);
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("web", "latest")
    );
    assert_eq!(w.workload_type, WorkloadType::Pod as i32);
    assert_eq!(w.workload_name, "p");
    assert!(w.services.is_empty() && w.authorization_policies.is_empty());
    assert_eq!(
        x.identities_by_node.get("node1"),
        Some(&BTreeSet::from([
            "spiffe://cluster.local/ns/demo/sa/web-sa".to_owned()
        ]))
    );
    assert_warns(&x, &[]);
}

#[test]
fn settings_are_used() {
    let cfg = TranslateConfig {
        cluster_id: "c1".into(),
        trust_domain: "example.org".into(),
        domain_suffix: "corp".into(),
        root_namespace: "mesh-root".into(),
        network: "net1".into(),
    };
    let x = translate(&snapshot(&simple(AMBIENT, "", "")), &cfg);
    let w = workload(&x, "c1//v1/Pod/demo/p");
    assert_eq!(
        (
            w.cluster_id.as_str(),
            w.trust_domain.as_str(),
            w.network.as_str()
        ),
        ("c1", "example.org", "net1")
    );
    assert_eq!(w.service_account, "default");
    assert_eq!(
        x.identities_by_node["node1"],
        BTreeSet::from(["spiffe://example.org/ns/demo/sa/default".to_owned()])
    );
}

/// (namespace labels, pod metadata, pod spec) → (protocol, native tunnel, network mode).
#[test_case(AMBIENT, "", "", TunnelProtocol::Hbone, false, NetworkMode::Standard; "ambient namespace")]
#[test_case("", "  labels: {istio.io/dataplane-mode: ambient}\n", "", TunnelProtocol::Hbone, false, NetworkMode::Standard; "ambient pod label")]
#[test_case(AMBIENT, "  labels: {istio.io/dataplane-mode: none}\n", "", TunnelProtocol::None, false, NetworkMode::Standard; "pod opts out")]
#[test_case("", "", "", TunnelProtocol::None, false, NetworkMode::Standard; "not enrolled")]
#[test_case("istio.io/dataplane-mode: none", "", "", TunnelProtocol::None, false, NetworkMode::Standard; "namespace none")]
#[test_case(AMBIENT, "", "  hostNetwork: true\n", TunnelProtocol::None, false, NetworkMode::HostNetwork; "host network is never captured")]
#[test_case(AMBIENT, "  annotations: {sidecar.istio.io/status: '{}'}\n", "", TunnelProtocol::None, false, NetworkMode::Standard; "sidecar pods are not captured")]
#[test_case("", "  annotations: {sidecar.istio.io/status: '{}'}\n  labels: {networking.istio.io/tunnel: http}\n", "", TunnelProtocol::Hbone, true, NetworkMode::Standard; "sidecar with native hbone")]
#[test_case("", "  annotations: {ambient.istio.io/redirection: enabled}\n", "", TunnelProtocol::Hbone, false, NetworkMode::Standard; "cni redirection annotation")]
fn enrollment(
    ns: &str,
    meta: &str,
    spec: &str,
    proto: TunnelProtocol,
    native: bool,
    mode: NetworkMode,
) {
    let x = run(&simple(ns, meta, spec));
    let w = workload(&x, UID);
    assert_eq!(w.tunnel_protocol, proto as i32);
    assert_eq!(w.native_tunnel, native);
    assert_eq!(w.network_mode, mode as i32);
    let ambient = proto == TunnelProtocol::Hbone && !native;
    assert_eq!(x.identities_by_node.contains_key("node1"), ambient);
}

fn owner(kind: &str, name: &str, controller: bool) -> String {
    format!(
        "  ownerReferences:\n  - {{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: u1, controller: {controller}}}\n"
    )
}

#[test_case(&format!("{}  labels: {{pod-template-hash: 5d9f8c}}\n", owner("ReplicaSet", "web-5d9f8c", true)), "web", WorkloadType::Deployment; "replicaset of a deployment")]
#[test_case(&owner("ReplicaSet", "web-5d9f8c", true), "p", WorkloadType::Pod; "replicaset without hash label")]
#[test_case(&format!("{}  labels: {{pod-template-hash: abc}}\n", owner("ReplicaSet", "web-5d9f8c", true)), "p", WorkloadType::Pod; "hash mismatch")]
#[test_case(&owner("Job", "backup", true), "backup", WorkloadType::Job; "job")]
#[test_case(&owner("Job", "nightly-29012345", true), "nightly", WorkloadType::Cronjob; "job of a cronjob")]
#[test_case(&owner("Job", "nightly-1234567", true), "nightly-1234567", WorkloadType::Job; "seven digits is not a cronjob")]
#[test_case(&owner("StatefulSet", "db", true), "p", WorkloadType::Pod; "statefulset")]
#[test_case(&owner("Job", "hand-written", false), "hand-written", WorkloadType::Job; "owner without controller flag")]
#[test_case("", "p", WorkloadType::Pod; "bare pod")]
fn workload_name_and_type(meta: &str, name: &str, kind: WorkloadType) {
    let x = run(&simple(AMBIENT, meta, ""));
    let w = workload(&x, UID);
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type),
        (name, kind as i32)
    );
}

#[test_case("", "p", "latest"; "defaults")]
#[test_case("app: a, version: v1", "a", "v1"; "app and version")]
#[test_case("app: a, app.kubernetes.io/name: b, version: v1, app.kubernetes.io/version: v2", "b", "v2"; "kubernetes labels win")]
#[test_case("app: a, app.kubernetes.io/name: b, service.istio.io/canonical-name: c, service.istio.io/canonical-revision: r", "c", "r"; "istio labels win")]
fn canonical_service(labels: &str, name: &str, revision: &str) {
    let x = run(&simple(AMBIENT, &format!("  labels: {{{labels}}}\n"), ""));
    let w = workload(&x, UID);
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        (name, revision)
    );
}

#[test_case("  phase: Running\n  podIP: 10.0.1.2\n  conditions: [{type: Ready, status: 'True'}]\n", Some(WorkloadStatus::Healthy); "ready")]
#[test_case("  phase: Running\n  podIP: 10.0.1.2\n  conditions: [{type: Ready, status: 'False'}]\n", Some(WorkloadStatus::Unhealthy); "not ready")]
#[test_case("  phase: Pending\n  podIP: 10.0.1.2\n", Some(WorkloadStatus::Unhealthy); "pending with an ip is sent")]
#[test_case("  phase: Pending\n", None; "no ip yet")]
#[test_case("  phase: Succeeded\n  podIP: 10.0.1.2\n", None; "succeeded")]
#[test_case("  phase: Failed\n  podIP: 10.0.1.2\n", None; "failed")]
fn status(status: &str, want: Option<WorkloadStatus>) {
    let x = run(&pod(AMBIENT, "", "", status));
    let got = x.addresses.get(UID).map(|_| workload(&x, UID).status);
    assert_eq!(got, want.map(|s| s as i32));
    assert_eq!(x.identities_by_node.contains_key("node1"), want.is_some());
}

#[test]
fn dual_stack_and_bad_ips() {
    let x = run(&pod(
        AMBIENT,
        "",
        "",
        "  podIP: 10.0.1.2\n  podIPs: [{ip: 10.0.1.2}, {ip: 'fd00::2'}, {ip: nope}]\n",
    ));
    let w = workload(&x, UID);
    let v6: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
    assert_eq!(w.addresses, vec![vec![10, 0, 1, 2], v6.octets().to_vec()]);
    assert_warns(&x, &["Pod demo/p: invalid IP \"nope\" ignored"]);

    let x = run(&pod(AMBIENT, "", "", "  podIP: nope\n"));
    assert!(x.addresses.is_empty());
}

#[test_case("  labels: {topology.istio.io/network: pod-net}\n", "topology.istio.io/network: ns-net", "pod-net"; "pod label")]
#[test_case("", "topology.istio.io/network: ns-net", "ns-net"; "namespace label")]
#[test_case("", "", ""; "default network")]
fn network(meta: &str, ns_labels: &str, want: &str) {
    let x = run(&simple(ns_labels, meta, ""));
    assert_eq!(workload(&x, UID).network, want);
}

#[test]
fn locality() {
    let node = "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node1\n  labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}\n";
    let x = run(&format!("{}{node}", simple(AMBIENT, "", "")));
    let want = Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: String::new(),
    };
    assert_eq!(workload(&x, UID).locality, Some(want));

    let labelled = simple(AMBIENT, "  labels: {istio-locality: r2.z2.s2}\n", "");
    let x = run(&format!("{labelled}{node}"));
    let want = Locality {
        region: "r2".into(),
        zone: "z2".into(),
        subzone: "s2".into(),
    };
    assert_eq!(workload(&x, UID).locality, Some(want));

    assert_eq!(workload(&run(&simple(AMBIENT, "", "")), UID).locality, None);
}

fn svc(ns: &str, name: &str, selector: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.0.1\n  selector: {{{selector}}}\n  ports:\n{ports}"
    )
}

#[test]
fn services_map() {
    let spec = "  containers:\n  - name: app\n    ports:\n    - {name: http, containerPort: 8080}\n  - name: metrics\n    ports:\n    - {name: prom, containerPort: 9090}\n";
    let yaml = [
        simple(AMBIENT, "  labels: {app: web, tier: front}\n", spec),
        svc("demo", "web", "app: web", "  - {name: http, port: 80, targetPort: http}\n  - {name: grpc, port: 81, targetPort: grpc}\n  - {name: prom, port: 9090, targetPort: prom}\n  - {name: raw, port: 7000, targetPort: 7001}\n  - {name: same, port: 7002}\n"),
        svc("demo", "front", "tier: front, app: web", "  - {port: 443, targetPort: 8443}\n"),
        svc("demo", "other", "app: other", "  - {port: 80}\n"),
        svc("elsewhere", "web", "app: web", "  - {port: 80}\n"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: demo}\nspec:\n  ports: [{port: 80}]\n".to_owned(),
    ]
    .concat();
    let x = run(&yaml);
    let w = workload(&x, UID);
    let mut keys: Vec<_> = w.services.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "demo/front.demo.svc.cluster.local",
            "demo/web.demo.svc.cluster.local"
        ]
    );
    let port = |s: u32, t: u32| Port {
        service_port: s,
        target_port: t,
        app_protocol: 0,
    };
    assert_eq!(
        w.services["demo/web.demo.svc.cluster.local"].ports,
        // grpc: the pod declares no such port, so it is left out for this pod.
        vec![
            port(80, 8080),
            port(9090, 9090),
            port(7000, 7001),
            port(7002, 7002)
        ]
    );
    assert_eq!(
        w.services["demo/front.demo.svc.cluster.local"].ports,
        vec![port(443, 8443)]
    );
}

#[test]
fn pods_on_two_nodes() {
    let yaml = [
        ambient_pod("frontend", "client", "10.0.1.2", "app: client"),
        ambient_pod("backend", "server", "10.0.2.2", "app: server").replace("node1", "node2"),
        ambient_pod("backend", "server2", "10.0.2.3", "app: server").replace("node1", "node2"),
    ]
    .join("---\n");
    let x = run(&yaml);
    assert_eq!(
        x.identities_by_node["node1"],
        BTreeSet::from(["spiffe://cluster.local/ns/frontend/sa/sa-client".to_owned()])
    );
    assert_eq!(
        x.identities_by_node["node2"],
        BTreeSet::from([
            "spiffe://cluster.local/ns/backend/sa/sa-server".to_owned(),
            "spiffe://cluster.local/ns/backend/sa/sa-server2".to_owned()
        ])
    );
}

#[test]
fn waypoint_labels_are_warned_about() {
    let x = run(&simple(
        "istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp",
        "",
        "",
    ));
    assert_warns(&x, &["Pod demo/p: waypoint \"wp\" ignored"]);
}
