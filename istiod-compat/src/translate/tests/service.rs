//! Service → Service, EndpointSlice → Workloads.

use test_case::test_case;
use xds_proto::workload::{
    AppProtocol, IpFamilies, LoadBalancing, NetworkAddress, NetworkMode, Port, TunnelProtocol,
    WorkloadStatus,
    load_balancing::{HealthPolicy, Mode, Scope},
};

use super::*;

const KEY: &str = "demo/web.demo.svc.cluster.local";

fn svc(meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\n{meta}spec:\n{spec}"
    )
}

fn port(s: u32, t: u32, p: AppProtocol) -> Port {
    Port {
        service_port: s,
        target_port: t,
        app_protocol: p as i32,
    }
}

fn addr(b: &[u8]) -> NetworkAddress {
    NetworkAddress {
        network: String::new(),
        address: b.to_vec(),
        length: None,
    }
}

#[test]
fn fields() {
    let x = run(&svc(
        "",
        "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00::a']\n  ipFamilies: [IPv4, IPv6]\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: grpc-api, port: 81, targetPort: 9081}\n  - {name: tcp, port: 82}\n  - {name: x, port: 83, targetPort: '8083', appProtocol: kubernetes.io/h2c}\n",
    ));
    let s = service(&x, KEY);
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("web", "demo"));
    assert_eq!(s.hostname, "web.demo.svc.cluster.local");
    let v6: std::net::Ipv6Addr = "fd00::a".parse().unwrap();
    assert_eq!(
        s.addresses,
        vec![addr(&[10, 96, 0, 10]), addr(&v6.octets())]
    );
    assert_eq!(
        s.ports,
        vec![
            port(80, 0, AppProtocol::Http11),
            port(81, 9081, AppProtocol::Grpc),
            port(82, 82, AppProtocol::Unknown),
            port(83, 8083, AppProtocol::Http2),
        ]
    );
    assert!(s.subject_alt_names.is_empty());
    assert_eq!(s.load_balancing, None);
    assert_eq!(s.ip_families, IpFamilies::Dual as i32);
    assert_warns(&x, &[]);
}

#[test_case("  clusterIP: None\n", vec![]; "headless")]
#[test_case("  clusterIP: ''\n", vec![]; "no ip")]
#[test_case("  type: LoadBalancer\n  clusterIP: 10.96.0.10\n", vec![addr(&[10, 96, 0, 10]), addr(&[192, 0, 2, 1])]; "load balancer ip")]
fn addresses(spec: &str, want: Vec<NetworkAddress>) {
    let status =
        "status:\n  loadBalancer:\n    ingress: [{ip: 192.0.2.1}, {hostname: lb.example}]\n";
    let x = run(&format!(
        "{}  ports: [{{port: 80}}]\n{status}",
        svc("", spec)
    ));
    assert_eq!(service(&x, KEY).addresses, want);
}

fn lb(prefs: &[Scope], mode: Mode, health: HealthPolicy) -> Option<LoadBalancing> {
    Some(LoadBalancing {
        routing_preference: prefs.iter().map(|s| *s as i32).collect(),
        mode: mode as i32,
        health_policy: health as i32,
    })
}

const CLOSE: [Scope; 4] = [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone];

#[test_case("  annotations: {networking.istio.io/traffic-distribution: PreferClose}\n", "", lb(&CLOSE, Mode::Failover, HealthPolicy::OnlyHealthy); "annotation")]
#[test_case("", "  trafficDistribution: PreferClose\n", lb(&CLOSE, Mode::Failover, HealthPolicy::OnlyHealthy); "spec field")]
#[test_case("", "  internalTrafficPolicy: Local\n", lb(&[Scope::Node], Mode::Strict, HealthPolicy::OnlyHealthy); "node local")]
#[test_case("", "  publishNotReadyAddresses: true\n", lb(&[], Mode::UnspecifiedMode, HealthPolicy::AllowAll); "not ready addresses")]
#[test_case("", "", None; "none")]
fn load_balancing(meta: &str, spec: &str, want: Option<LoadBalancing>) {
    let x = run(&format!("{}  ports: [{{port: 80}}]\n", svc(meta, spec)));
    assert_eq!(service(&x, KEY).load_balancing, want);
}

#[test]
fn subject_alt_names_from_annotations() {
    let meta = "  annotations:\n    alpha.istio.io/kubernetes-service-accounts: web, admin\n    alpha.istio.io/canonical-serviceaccounts: spiffe://other.td/ns/x/sa/y,td2/ns/a/sa/b\n";
    let x = run(&svc(meta, "  ports: [{port: 80}]\n"));
    assert_eq!(
        service(&x, KEY).subject_alt_names,
        [
            "spiffe://cluster.local/ns/demo/sa/web",
            "spiffe://cluster.local/ns/demo/sa/admin",
            "spiffe://other.td/ns/x/sa/y",
            "spiffe://td2/ns/a/sa/b"
        ]
    );
}

#[test_case("  ipFamilies: [IPv4]\n", IpFamilies::Ipv4Only; "v4")]
#[test_case("  ipFamilies: [IPv6]\n", IpFamilies::Ipv6Only; "v6")]
#[test_case("", IpFamilies::Automatic; "unset")]
fn ip_families(spec: &str, want: IpFamilies) {
    let x = run(&format!("{}  ports: [{{port: 80}}]\n", svc("", spec)));
    assert_eq!(service(&x, KEY).ip_families, want as i32);
}

#[test]
fn odd_services() {
    let x = run(&svc(
        "",
        "  type: ExternalName\n  externalName: example.com\n",
    ));
    assert!(x.addresses.is_empty());

    let x = run(&svc(
        "",
        "  clusterIP: bogus\n  ports:\n  - {port: 0}\n  - {port: 70000}\n  - {port: 53, protocol: UDP, targetPort: 5353}\n  - {port: 53, protocol: TCP, targetPort: 5354}\n  - {port: 54, targetPort: -1}\n",
    ));
    let s = service(&x, KEY);
    assert_eq!(
        s.ports,
        vec![
            port(53, 5354, AppProtocol::Unknown),
            port(54, 54, AppProtocol::Unknown)
        ]
    );
    assert!(s.addresses.is_empty());
    assert_warns(
        &x,
        &[
            "Service demo/web: invalid port 0 ignored",
            "invalid port 70000",
            "invalid targetPort -1",
            "invalid address \"bogus\"",
        ],
    );
}

const MANUAL: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: demo}\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n  - {name: sql, port: 5432, targetPort: 15432}\n  - {name: admin, port: 9000}\n---\n";

fn slice(name: &str, service: &str, extra: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n{extra}ports:\n- {{name: sql, port: 15432, protocol: TCP}}\n- {{name: admin, port: 9000}}\n- {{name: dns, port: 53, protocol: UDP}}\nendpoints:\n{endpoints}"
    )
}

#[test]
fn endpoint_slice_workloads() {
    let endpoints = "- addresses: [192.168.0.5]\n- addresses: [192.168.0.6]\n  conditions: {ready: false}\n- addresses: [192.168.0.7]\n  targetRef: {kind: Pod, name: p, namespace: demo}\n- addresses: [192.168.0.5]\n- addresses: [nope]\n- addresses: []\n";
    let x = run(&format!("{MANUAL}{}", slice("db-abc", "db", "", endpoints)));
    let uid = "Kubernetes/discovery.k8s.io/EndpointSlice/demo/db-abc/192.168.0.5";
    let w = workload(&x, uid);
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("db-abc", "demo"));
    assert_eq!(w.addresses, vec![vec![192, 168, 0, 5]]);
    assert_eq!(w.network_mode, NetworkMode::HostNetwork as i32);
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32);
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    assert_eq!(
        w.services["demo/db.demo.svc.cluster.local"].ports,
        vec![
            port(5432, 15432, AppProtocol::Unknown),
            port(9000, 9000, AppProtocol::Unknown)
        ]
    );
    let unready = workload(
        &x,
        "Kubernetes/discovery.k8s.io/EndpointSlice/demo/db-abc/192.168.0.6",
    );
    assert_eq!(unready.status, WorkloadStatus::Unhealthy as i32);
    // Two workloads and the service: the pod endpoint, the duplicate and the bad address
    // are not turned into workloads.
    assert_eq!(x.addresses.len(), 3, "{:?}", x.addresses.keys());
    assert_warns(
        &x,
        &[
            "address 192.168.0.5 listed twice",
            "invalid address in [\"nope\"]",
        ],
    );
}

#[test_case(&slice("s", "missing", "", "- addresses: [192.168.0.5]\n"); "no such service")]
#[test_case(&slice("s", "db", "", "- addresses: [192.168.0.5]\n").replace("addressType: IPv4", "addressType: FQDN"); "fqdn")]
#[test_case(&slice("s", "db", "", "- addresses: [192.168.0.5]\n").replace("  labels: {kubernetes.io/service-name: db}\n", ""); "no service label")]
fn endpoint_slices_ignored(slice: &str) {
    let x = run(&format!("{MANUAL}{slice}"));
    assert_eq!(x.addresses.len(), 1, "{:?}", x.addresses.keys());
}
