//! The `LOCAL_XDS_PATH` YAML file, and the lookups the data path then makes on the state it
//! builds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ztunnel::proxy::hbone::headers::Baggage;
use ztunnel::rbac::RbacConnection;
use ztunnel::state::{NetworkMode, ProxyState, Service, Workload};

use crate::hbone::render;

/// How many workloads, services, addresses and ports of one document are exercised: the
/// lookups are cheap, but a fuzzer-made document with thousands of entries must not turn
/// one execution into a quadratic crawl.
const MAX_EACH: usize = 8;

/// `localconfig::parse` on UTF-8 text (the watcher reads the file with `read_to_string`,
/// so other bytes never reach the parser), then, on what parses, every lookup the proxy
/// makes: workloads by IP and by `PROXY_WORKLOAD_INFO`, services by hostname and VIP, load
/// balancing, authorization, response baggage, and the `/config_dump` JSON.
///
/// Invariants: every workload is found by its own info and (unless host-network) by each
/// of its IPs, every service by its hostname and VIPs, and load balancing only picks an
/// endpoint of the service on a non-zero port.
pub fn local_config(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    match ztunnel::localconfig::parse(yaml) {
        Ok(state) => exercise(&state),
        Err(error) => render(&error),
    }
}

fn exercise(state: &ProxyState) {
    let mut workloads: Vec<&Arc<Workload>> = state.workloads.values().collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    workloads.truncate(MAX_EACH);
    let mut services: Vec<&Arc<Service>> = state.services.values().collect();
    services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
    services.truncate(MAX_EACH);

    for workload in &workloads {
        lookup_workload(state, workload);
        authorize(state, workload, &workloads);
    }
    for service in &services {
        lookup_service(state, service, &workloads);
    }
    // `/config_dump` serializes the state; an error there is a 500, not a crash.
    std::hint::black_box(serde_json::to_vec(state).map_err(|e| e.to_string()).ok());
}

fn lookup_workload(state: &ProxyState, workload: &Workload) {
    let found = state.workload_by_info(
        &workload.namespace,
        &workload.name,
        &workload.service_account,
    );
    assert!(
        found.is_some(),
        "{} not found by its own info",
        workload.uid
    );
    if workload.network_mode != NetworkMode::HostNetwork {
        for ip in workload.workload_ips.iter().take(MAX_EACH) {
            let found = state.workload_by_ip(&workload.network, *ip);
            assert!(found.is_some(), "{} not found by its IP {ip}", workload.uid);
        }
    }
    std::hint::black_box(workload.identity().to_string());
    // The inbound side answers with this baggage.
    if let Ok(value) = Baggage::from_workload(workload, &workload.cluster_id).to_header() {
        let parsed = Baggage::parse(value.as_bytes());
        assert!(parsed.is_ok(), "response baggage {value:?} does not parse");
    }
}

/// A connection from each workload (and from outside the mesh) to each address and target
/// port of `workload`.
fn authorize(state: &ProxyState, workload: &Workload, sources: &[&Arc<Workload>]) {
    std::hint::black_box(state.policies_for(workload));
    let mut ports: Vec<u16> = workload
        .services
        .values()
        .flat_map(|ports| ports.values().copied())
        .filter(|p| *p != 0)
        .take(MAX_EACH)
        .collect();
    ports.push(8080);
    let outside = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        None::<mesh_core::Identity>,
    );
    let from_mesh = sources.iter().filter_map(|s| {
        let ip = s.workload_ips.first()?;
        Some((*ip, Some(s.identity())))
    });
    for (src_ip, src_identity) in from_mesh.chain(std::iter::once(outside)) {
        for dst_ip in workload.workload_ips.iter().take(MAX_EACH) {
            for port in &ports {
                let conn = RbacConnection {
                    src: SocketAddr::new(src_ip, 40000),
                    src_identity: src_identity.clone(),
                    dst: SocketAddr::new(*dst_ip, *port),
                    dst_network: workload.network.clone(),
                };
                std::hint::black_box(state.assert_rbac(workload, &conn).is_ok());
            }
        }
    }
}

fn lookup_service(state: &ProxyState, service: &Service, sources: &[&Arc<Workload>]) {
    match state.service_by_hostname(&service.hostname, &service.namespace) {
        Some(found) => assert_eq!(
            found.namespaced_hostname(),
            service.namespaced_hostname(),
            "service_by_hostname prefers another namespace"
        ),
        None => panic!("{} not found by hostname", service.namespaced_hostname()),
    }
    for vip in service.vips.iter().take(MAX_EACH) {
        let found = state.service_by_vip(&vip.network, vip.address, &service.namespace);
        assert!(found.is_some(), "{} not found by its VIP", service.hostname);
    }
    let mut ports: Vec<u16> = service.ports.keys().copied().take(MAX_EACH).collect();
    ports.push(1);
    let from = std::iter::once(None).chain(sources.iter().take(4).map(|s| Some(&***s)));
    for source in from {
        for port in &ports {
            if let Some(upstream) = state.load_balance(service, *port, source) {
                assert_ne!(upstream.port, 0, "load balanced to port 0");
                assert!(
                    service.endpoints.contains_key(&upstream.workload.uid),
                    "load balanced to {}, not an endpoint of {}",
                    upstream.workload.uid,
                    service.hostname
                );
            }
        }
    }
}
