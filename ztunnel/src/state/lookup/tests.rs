use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_core::{NamespacedHostname, NetworkAddress};
use test_case::test_case;

use super::{Upstream, locality_rank, weighted_index};
use crate::state::{
    Authorization, Endpoint, GatewayAddress, GatewayDestination, HealthStatus, LoadBalancer,
    LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Locality, NetworkMode,
    PolicyAction, PolicyScope, ProxyState, Service, Workload,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nh(s: &str) -> NamespacedHostname {
    s.parse().unwrap()
}

fn workload(name: &str, ips: &[&str]) -> Workload {
    Workload {
        uid: format!("Kubernetes//v1/Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        workload_ips: ips.iter().map(|s| ip(s)).collect(),
        ..Default::default()
    }
}

/// A workload backing `default/svc.example` with the given own port mapping.
fn backend(name: &str, ip_addr: &str, ports: &[(u16, u16)]) -> Workload {
    let mut w = workload(name, &[ip_addr]);
    w.services
        .insert(nh("default/svc.example"), ports.iter().copied().collect());
    w
}

fn service(namespace: &str, hostname: &str, vips: &[&str], ports: &[(u16, u16)]) -> Service {
    Service {
        name: hostname.split('.').next().unwrap_or_default().into(),
        namespace: namespace.into(),
        hostname: hostname.into(),
        vips: vips.iter().map(|s| s.parse().unwrap()).collect(),
        ports: ports.iter().copied().collect(),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancer: None,
        ip_families: Default::default(),
        endpoints: HashMap::new(),
    }
}

fn svc() -> Service {
    service(
        "default",
        "svc.example",
        &["/10.96.0.1"],
        &[(80, 8080), (81, 0)],
    )
}

fn policy(name: &str, namespace: &str, scope: PolicyScope) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action: PolicyAction::Allow,
        rules: vec![],
        dry_run: false,
    }
}

// === Indexes ===

#[test]
fn workloads_are_indexed_by_network_and_ip() {
    let mut remote = workload("remote", &["10.0.0.1"]);
    remote.network = "net2".into();
    let state = ProxyState::build(
        vec![workload("a", &["10.0.0.1", "fd00::1"]), remote],
        vec![],
        vec![],
    );
    assert_eq!(state.workload_by_ip("", ip("10.0.0.1")).unwrap().name, "a");
    assert_eq!(state.workload_by_ip("", ip("fd00::1")).unwrap().name, "a");
    assert_eq!(
        state.workload_by_ip("net2", ip("10.0.0.1")).unwrap().name,
        "remote"
    );
    assert!(state.workload_by_ip("", ip("10.0.0.2")).is_none());
    assert!(state.workload_by_ip("net3", ip("10.0.0.1")).is_none());
}

#[test]
fn v4_mapped_lookup_finds_the_v4_workload() {
    let state = ProxyState::build(vec![workload("a", &["10.0.0.1"])], vec![], vec![]);
    assert_eq!(
        state
            .workload_by_ip("", ip("::ffff:10.0.0.1"))
            .unwrap()
            .name,
        "a"
    );
}

#[test]
fn host_network_workloads_are_not_indexed_by_ip() {
    let mut host = workload("host", &["192.168.1.10"]);
    host.network_mode = NetworkMode::HostNetwork;
    let state = ProxyState::build(vec![host], vec![], vec![]);
    assert!(state.workload_by_ip("", ip("192.168.1.10")).is_none());
    assert_eq!(state.workloads.len(), 1);
    assert!(
        state
            .workload_by_info("default", "host", "default")
            .is_some()
    );
}

#[test]
fn duplicate_uid_later_wins_everywhere() {
    let first = workload("a", &["10.0.0.1"]);
    let second = workload("a", &["10.0.0.2"]);
    let state = ProxyState::build(vec![first, second], vec![], vec![]);
    assert_eq!(state.workloads.len(), 1);
    assert_eq!(state.workload_by_ip("", ip("10.0.0.2")).unwrap().name, "a");
    assert!(state.workload_by_ip("", ip("10.0.0.1")).is_none());
}

#[test]
fn workload_by_info_matches_all_three() {
    let mut other_sa = workload("b", &["10.0.0.2"]);
    other_sa.service_account = "custom".into();
    let state = ProxyState::build(vec![workload("a", &["10.0.0.1"]), other_sa], vec![], vec![]);
    assert_eq!(
        state
            .workload_by_info("default", "a", "default")
            .unwrap()
            .name,
        "a"
    );
    assert_eq!(
        state
            .workload_by_info("default", "b", "custom")
            .unwrap()
            .name,
        "b"
    );
    assert!(state.workload_by_info("default", "b", "default").is_none());
    assert!(state.workload_by_info("other", "a", "default").is_none());
}

#[test]
fn endpoints_are_merged_from_workloads() {
    let mut unknown = backend("c", "10.0.0.3", &[]);
    unknown
        .services
        .insert(nh("default/unknown.example"), HashMap::new());
    let state = ProxyState::build(
        vec![
            backend("a", "10.0.0.1", &[]),
            backend("b", "10.0.0.2", &[(81, 9090)]),
            unknown,
        ],
        vec![svc()],
        vec![],
    );
    let s = state.services.get(&nh("default/svc.example")).unwrap();
    assert_eq!(s.endpoints.len(), 3);
    let b = &s.endpoints["Kubernetes//v1/Pod/default/b"];
    assert_eq!(
        b,
        &Endpoint {
            workload_uid: "Kubernetes//v1/Pod/default/b".into(),
            port: [(81, 9090)].into_iter().collect(),
        }
    );
    assert_eq!(state.services.len(), 1, "unknown services are not invented");
}

#[test]
fn service_by_vip_prefers_the_client_namespace() {
    let shared = "/10.96.0.10";
    let state = ProxyState::build(
        vec![],
        vec![
            service("zeta", "a.example", &[shared], &[]),
            service("alpha", "b.example", &[shared], &[]),
            service("remote", "c.example", &["net2/10.96.0.10"], &[]),
        ],
        vec![],
    );
    let vip = ip("10.96.0.10");
    assert_eq!(
        state.service_by_vip("", vip, "zeta").unwrap().namespace,
        "zeta"
    );
    assert_eq!(
        state.service_by_vip("", vip, "alpha").unwrap().namespace,
        "alpha"
    );
    assert_eq!(
        state.service_by_vip("", vip, "nobody").unwrap().namespace,
        "alpha"
    );
    assert_eq!(
        state.service_by_vip("net2", vip, "zeta").unwrap().namespace,
        "remote"
    );
    assert!(state.service_by_vip("", ip("10.96.0.11"), "zeta").is_none());
}

#[test]
fn service_by_hostname_prefers_the_namespace() {
    let state = ProxyState::build(
        vec![],
        vec![
            service("b", "shared.example", &[], &[]),
            service("a", "shared.example", &[], &[]),
        ],
        vec![],
    );
    assert_eq!(
        state
            .service_by_hostname("shared.example", "b")
            .unwrap()
            .namespace,
        "b"
    );
    assert_eq!(
        state
            .service_by_hostname("shared.example", "zzz")
            .unwrap()
            .namespace,
        "a"
    );
    assert!(state.service_by_hostname("other.example", "a").is_none());
}

// === Policies ===

#[test]
fn policies_for_combines_global_namespace_and_selected() {
    let mut w = workload("a", &["10.0.0.1"]);
    w.authorization_policies = vec![
        "default/selected".into(),
        "default/missing".into(),
        "default/ns".into(),
    ];
    let state = ProxyState::build(
        vec![w.clone()],
        vec![],
        vec![
            policy("mesh", "istio-system", PolicyScope::Global),
            policy("ns", "default", PolicyScope::Namespace),
            policy("other-ns", "other", PolicyScope::Namespace),
            policy("selected", "default", PolicyScope::WorkloadSelector),
            policy("not-selected", "default", PolicyScope::WorkloadSelector),
        ],
    );
    let mut keys: Vec<String> = state.policies_for(&w).iter().map(|p| p.key()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["default/ns", "default/selected", "istio-system/mesh"]
    );
    assert_eq!(state.policies_by_namespace[""], ["istio-system/mesh"]);
}

// === Load balancing ===

fn pick_all(
    state: &ProxyState,
    s: &Service,
    port: u16,
    src: Option<&Workload>,
) -> Vec<(String, u16)> {
    let mut names: Vec<(String, u16)> = state
        .lb_candidates(s, port, src)
        .into_iter()
        .map(|u| (u.workload.name.clone(), u.port))
        .collect();
    names.sort();
    names
}

fn lb_state(workloads: Vec<Workload>, lb: Option<LoadBalancer>) -> (ProxyState, Arc<Service>) {
    let mut s = svc();
    s.load_balancer = lb;
    let state = ProxyState::build(workloads, vec![s], vec![]);
    let s = state.services[&nh("default/svc.example")].clone();
    (state, s)
}

fn names(v: &[(&str, u16)]) -> Vec<(String, u16)> {
    v.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

#[test]
fn lb_uses_endpoint_mapping_else_service_target_port() {
    let (state, s) = lb_state(
        vec![
            backend("a", "10.0.0.1", &[]),
            backend("b", "10.0.0.2", &[(80, 9000), (81, 9001)]),
        ],
        None,
    );
    assert_eq!(
        pick_all(&state, &s, 80, None),
        names(&[("a", 8080), ("b", 9000)])
    );
    // Port 81 is a named port (target 0): only endpoints with their own mapping qualify.
    assert_eq!(pick_all(&state, &s, 81, None), names(&[("b", 9001)]));
    // A port the service does not have, and no endpoint maps.
    assert_eq!(pick_all(&state, &s, 82, None), names(&[]));
    assert!(state.load_balance(&s, 82, None).is_none());
    let up = state.load_balance(&s, 81, None).unwrap();
    assert_eq!((up.workload.name.as_str(), up.port), ("b", 9001));
}

#[test_case(LoadBalancerHealthPolicy::OnlyHealthy, &[("a", 8080)] ; "only healthy")]
#[test_case(LoadBalancerHealthPolicy::AllowAll, &[("a", 8080), ("sick", 8080)] ; "allow all")]
fn lb_health_policy(policy: LoadBalancerHealthPolicy, want: &[(&str, u16)]) {
    let mut sick = backend("sick", "10.0.0.2", &[]);
    sick.status = HealthStatus::Unhealthy;
    let lb = LoadBalancer {
        health_policy: policy,
        ..Default::default()
    };
    let (state, s) = lb_state(vec![backend("a", "10.0.0.1", &[]), sick], Some(lb));
    assert_eq!(pick_all(&state, &s, 80, None), names(want));
}

#[test]
fn lb_default_is_only_healthy_and_skips_unknown_workloads() {
    let mut sick = backend("sick", "10.0.0.2", &[]);
    sick.status = HealthStatus::Unhealthy;
    let mut s = svc();
    s.endpoints.insert(
        "ghost".into(),
        Endpoint {
            workload_uid: "ghost".into(),
            port: HashMap::new(),
        },
    );
    let state = ProxyState::build(vec![sick], vec![s], vec![]);
    let s = state.services[&nh("default/svc.example")].clone();
    assert!(state.load_balance(&s, 80, None).is_none());
}

#[test]
fn lb_addressless_workloads_need_a_gateway_on_another_network() {
    let gateway = GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: "net2".into(),
            address: ip("172.16.0.1"),
        }),
        hbone_mtls_port: 15008,
    };
    let mut remote = backend("remote", "10.0.0.9", &[]);
    remote.workload_ips.clear();
    remote.network = "net2".into();
    remote.network_gateway = Some(gateway.clone());
    let mut local_no_ip = backend("local-no-ip", "10.0.0.8", &[]);
    local_no_ip.workload_ips.clear();
    local_no_ip.network_gateway = Some(gateway);
    let mut by_name = backend("by-name", "10.0.0.7", &[]);
    by_name.workload_ips.clear();
    by_name.hostname = "vm.example".into();
    let (state, s) = lb_state(vec![remote, local_no_ip, by_name], None);
    let source = workload("client", &["10.0.0.100"]);
    assert_eq!(
        pick_all(&state, &s, 80, Some(&source)),
        names(&[("by-name", 8080), ("remote", 8080)])
    );
}

fn located(name: &str, ip_addr: &str, region: &str, zone: &str, network: &str) -> Workload {
    let mut w = backend(name, ip_addr, &[]);
    w.locality = Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    w.network = network.into();
    w
}

fn locality_fleet() -> Vec<Workload> {
    vec![
        located("same-zone", "10.0.0.1", "r1", "z1", ""),
        located("same-region", "10.0.0.2", "r1", "z2", ""),
        located("far", "10.0.0.3", "r2", "z1", ""),
        located("other-net-same-zone", "10.0.0.4", "r1", "z1", "net2"),
    ]
}

fn client() -> Workload {
    located("client", "10.0.0.100", "r1", "z1", "")
}

const REGION_ZONE: &[LoadBalancerScope] = &[LoadBalancerScope::Region, LoadBalancerScope::Zone];
const NETWORK_REGION_ZONE: &[LoadBalancerScope] = &[
    LoadBalancerScope::Network,
    LoadBalancerScope::Region,
    LoadBalancerScope::Zone,
];

#[test_case(LoadBalancerMode::Standard, REGION_ZONE, &["far", "other-net-same-zone", "same-region", "same-zone"] ; "standard ignores locality")]
#[test_case(LoadBalancerMode::Passthrough, REGION_ZONE, &["far", "other-net-same-zone", "same-region", "same-zone"] ; "passthrough is standard here")]
#[test_case(LoadBalancerMode::Failover, REGION_ZONE, &["other-net-same-zone", "same-zone"] ; "failover keeps the best rank")]
#[test_case(LoadBalancerMode::Strict, REGION_ZONE, &["other-net-same-zone", "same-zone"] ; "strict keeps full matches")]
#[test_case(LoadBalancerMode::Failover, NETWORK_REGION_ZONE, &["same-zone"] ; "network first outranks everything")]
#[test_case(LoadBalancerMode::Strict, &[LoadBalancerScope::Region], &["other-net-same-zone", "same-region", "same-zone"] ; "strict region only")]
#[test_case(LoadBalancerMode::Strict, &[LoadBalancerScope::Node], &[] ; "strict with no full match has no endpoint")]
#[test_case(LoadBalancerMode::Failover, &[LoadBalancerScope::Node], &["far", "other-net-same-zone", "same-region", "same-zone"] ; "failover with no match keeps all")]
fn lb_locality(mode: LoadBalancerMode, prefs: &[LoadBalancerScope], want: &[&str]) {
    let lb = LoadBalancer {
        routing_preferences: prefs.to_vec(),
        mode,
        health_policy: LoadBalancerHealthPolicy::OnlyHealthy,
    };
    let mut fleet = locality_fleet();
    for w in &mut fleet {
        w.node = format!("node-of-{}", w.name);
    }
    let (state, s) = lb_state(fleet, Some(lb));
    let got: Vec<String> = pick_all(&state, &s, 80, Some(&client()))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn lb_strict_without_source_has_nothing_to_rank() {
    let lb = LoadBalancer {
        routing_preferences: REGION_ZONE.to_vec(),
        mode: LoadBalancerMode::Strict,
        health_policy: LoadBalancerHealthPolicy::OnlyHealthy,
    };
    let (state, s) = lb_state(locality_fleet(), Some(lb));
    assert!(state.load_balance(&s, 80, None).is_none());
}

#[test]
fn locality_rank_counts_leading_matches_only() {
    let src = located("src", "10.0.0.1", "r1", "z1", "");
    let dst = located("dst", "10.0.0.2", "r2", "z1", "");
    // Zone matches, but Region (first) does not, so nothing counts.
    assert_eq!(locality_rank(REGION_ZONE, &src, &dst), 0);
    let mut dst2 = dst.clone();
    dst2.cluster_id = "other".into();
    assert_eq!(
        locality_rank(
            &[LoadBalancerScope::Zone, LoadBalancerScope::Cluster],
            &src,
            &dst2
        ),
        1
    );
    assert_eq!(
        locality_rank(
            &[LoadBalancerScope::Zone, LoadBalancerScope::Cluster],
            &src,
            &dst
        ),
        2
    );
}

fn with_capacity(name: &str, capacity: u32) -> Upstream {
    let mut w = workload(name, &["10.0.0.1"]);
    w.capacity = capacity;
    Upstream {
        workload: Arc::new(w),
        port: 1,
    }
}

#[test]
fn weighted_index_follows_capacity_intervals() {
    let c = [
        with_capacity("a", 1),
        with_capacity("zero", 0),
        with_capacity("b", 3),
    ];
    assert_eq!(weighted_index(&c, 0), Some(0));
    assert_eq!(weighted_index(&c, 1), Some(2));
    assert_eq!(weighted_index(&c, 3), Some(2));
    assert_eq!(weighted_index(&c, 4), None);
}

#[test]
fn lb_never_picks_zero_capacity_unless_all_are_zero() {
    let mut zero = backend("zero", "10.0.0.2", &[]);
    zero.capacity = 0;
    let (state, s) = lb_state(vec![backend("a", "10.0.0.1", &[]), zero.clone()], None);
    for _ in 0..200 {
        assert_eq!(state.load_balance(&s, 80, None).unwrap().workload.name, "a");
    }
    let (state, s) = lb_state(vec![zero], None);
    assert_eq!(
        state.load_balance(&s, 80, None).unwrap().workload.name,
        "zero"
    );
}

#[test]
fn lb_spreads_by_capacity() {
    let mut heavy = backend("heavy", "10.0.0.2", &[]);
    heavy.capacity = 9;
    let (state, s) = lb_state(vec![backend("light", "10.0.0.1", &[]), heavy], None);
    let heavy_picks = (0..2000)
        .filter(|_| state.load_balance(&s, 80, None).unwrap().workload.name == "heavy")
        .count();
    // Expected 1800; the bounds are > 10 standard deviations wide.
    assert!((1650..=1950).contains(&heavy_picks), "{heavy_picks}");
}
