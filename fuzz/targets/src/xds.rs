//! xDS resources from the control plane (`istio.workload.Address`,
//! `istio.security.Authorization`), through ztunnel's proto → domain conversion and into a
//! state the data path queries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ztunnel::rbac::RbacConnection;
use ztunnel::state::{Authorization, NetworkMode, ProxyState, Service, Workload};
use ztunnel::xds::{AddressResource, address_from_bytes, authorization_from_bytes};

use crate::hbone::render;

/// How many addresses of one resource are looked up.
const MAX_EACH: usize = 8;

/// The first byte picks the type (even: `Address`, odd: `Authorization`); the rest is the
/// `Any` value a `Resource` carries, decoded and converted by `ztunnel::xds` exactly as the
/// ADS client does for each resource of a response.
///
/// Invariants: a rejection names a field; an accepted workload has a uid and a namespace
/// and is found by its info and (unless host-network) by each of its IPs; an accepted
/// service has a name, namespace and hostname and is found by hostname and VIPs; an
/// accepted policy is stored under `namespace/name` and evaluating it never panics.
pub fn xds_resource(data: &[u8]) {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        match address_from_bytes(body) {
            Ok(AddressResource::Workload(w)) => workload(*w),
            Ok(AddressResource::Service(s)) => service(*s),
            Err(error) => {
                assert!(
                    !error.field.is_empty(),
                    "rejection without a field: {error}"
                );
                render(&error);
            }
        }
    } else {
        match authorization_from_bytes(body) {
            Ok(policy) => authorization(policy),
            Err(error) => {
                assert!(
                    !error.field.is_empty(),
                    "rejection without a field: {error}"
                );
                render(&error);
            }
        }
    }
}

fn workload(w: Workload) {
    assert!(!w.uid.is_empty() && !w.namespace.is_empty(), "{w:?}");
    let state = ProxyState::build(vec![w.clone()], vec![], vec![]);
    assert!(
        state
            .workload_by_info(&w.namespace, &w.name, &w.service_account)
            .is_some(),
        "{} not found by its info",
        w.uid
    );
    if w.network_mode != NetworkMode::HostNetwork {
        for ip in w.workload_ips.iter().take(MAX_EACH) {
            assert!(
                state.workload_by_ip(&w.network, *ip).is_some(),
                "{} not found by {ip}",
                w.uid
            );
        }
    }
    std::hint::black_box(w.identity().to_string());
    std::hint::black_box(serde_json::to_vec(&state).map_err(|e| e.to_string()).ok());
}

fn service(s: Service) {
    assert!(!s.name.is_empty() && !s.namespace.is_empty() && !s.hostname.is_empty());
    let state = ProxyState::build(vec![], vec![s.clone()], vec![]);
    assert!(
        state
            .service_by_hostname(&s.hostname, &s.namespace)
            .is_some(),
        "{} not found by hostname",
        s.hostname
    );
    for vip in s.vips.iter().take(MAX_EACH) {
        assert!(
            state
                .service_by_vip(&vip.network, vip.address, &s.namespace)
                .is_some(),
            "{} not found by {vip:?}",
            s.hostname
        );
    }
    for port in s.ports.keys().take(MAX_EACH) {
        std::hint::black_box(state.load_balance(&s, *port, None).is_some());
    }
}

fn authorization(policy: Authorization) {
    let key = policy.key();
    let target = Workload {
        uid: "fuzz//v1/Pod/target".into(),
        name: "target".into(),
        namespace: policy.namespace.clone(),
        workload_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))],
        authorization_policies: vec![key.clone()],
        ..Workload::default()
    };
    let source = Workload {
        uid: "fuzz//v1/Pod/source".into(),
        name: "source".into(),
        namespace: "default".into(),
        ..Workload::default()
    };
    let state = ProxyState::build(vec![target.clone()], vec![], vec![policy]);
    assert!(state.policies.contains_key(&key), "{key} not stored");
    for identity in [None, Some(source.identity())] {
        for port in [8080, 15008] {
            let conn = RbacConnection {
                src: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000),
                src_identity: identity.clone(),
                dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), port),
                dst_network: String::new(),
            };
            std::hint::black_box(state.assert_rbac(&target, &conn).is_ok());
        }
    }
}
