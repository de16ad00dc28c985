//! Service → `istio.workload.Service`, and the endpoints of selector-less Services
//! (EndpointSlice addresses that are not pods) → `Workload`s, as istiod's ambient index does.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use xds_proto::workload::{
    AppProtocol, IpFamilies, LoadBalancing, NetworkAddress, NetworkMode, Port, PortList,
    Service as XdsService, Workload, WorkloadStatus, load_balancing,
};

use super::TranslateConfig;
use super::common::{self, *};
use super::workload::{SelectorService, TargetPort};

/// A translated Service, plus what pods and EndpointSlices need from it.
#[derive(Debug, Clone)]
pub struct ServiceOut {
    /// The resource.
    pub service: XdsService,
    /// Set when the Service has a selector: its pods list it.
    pub selector: Option<SelectorService>,
    /// Port name → service port, to map EndpointSlice ports (named like Service ports).
    pub port_names: BTreeMap<String, u32>,
}

/// Translates a Service; `None` for ExternalName services (no VIP, no endpoints: node proxies
/// resolve such names through DNS).
pub fn convert(
    svc: &Service,
    cfg: &TranslateConfig,
    warnings: &mut Vec<String>,
) -> Option<ServiceOut> {
    let name = common::name(&svc.metadata);
    let namespace = common::namespace(&svc.metadata);
    let id = format!("Service {namespace}/{name}");
    if name.is_empty() {
        warnings.push(format!("Service in {namespace} without a name; skipped"));
        return None;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let hostname = common::service_hostname(name, namespace, &cfg.domain_suffix);
    let key = format!("{namespace}/{hostname}");
    let annotations = common::annotations(&svc.metadata);

    let mut ports = Vec::new();
    let mut selector_ports = Vec::new();
    let mut port_names = BTreeMap::new();
    for p in dedup_ports(spec.ports.as_deref().unwrap_or_default()) {
        let Some(service_port) = u16::try_from(p.port).ok().filter(|p| *p != 0) else {
            warnings.push(format!("{id}: invalid port {} ignored", p.port));
            continue;
        };
        let service_port = u32::from(service_port);
        let target = match &p.target_port {
            None => TargetPort::Number(service_port),
            Some(IntOrString::Int(n)) => match u16::try_from(*n).ok().filter(|n| *n != 0) {
                Some(n) => TargetPort::Number(u32::from(n)),
                None => {
                    warnings.push(format!("{id}: invalid targetPort {n} ignored"));
                    TargetPort::Number(service_port)
                }
            },
            // Files often quote numbers; Kubernetes port names cannot be all digits.
            Some(IntOrString::String(s)) => match common::parse_port(s) {
                Some(n) => TargetPort::Number(n),
                None => TargetPort::Name(s.clone()),
            },
        };
        let target_port = match &target {
            TargetPort::Number(n) => *n,
            TargetPort::Name(_) => 0,
        };
        ports.push(Port {
            service_port,
            target_port,
            app_protocol: app_protocol(p) as i32,
        });
        if let Some(port_name) = &p.name {
            port_names.insert(port_name.clone(), service_port);
        }
        selector_ports.push((service_port, target));
    }

    let mut addresses = Vec::new();
    let cluster_ips = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.to_vec(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let lb_ips: Vec<String> = if spec.type_.as_deref() == Some("LoadBalancer") {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect()
    } else {
        Vec::new()
    };
    for vip in cluster_ips.iter().chain(&lb_ips) {
        if vip.is_empty() || vip == "None" {
            continue;
        }
        match vip.parse::<IpAddr>() {
            Ok(ip) => {
                let bytes = common::ip_bytes(ip);
                if !addresses
                    .iter()
                    .any(|a: &NetworkAddress| a.address == bytes)
                {
                    addresses.push(NetworkAddress {
                        network: cfg.network.clone(),
                        address: bytes,
                        length: None,
                    });
                }
            }
            Err(_) => warnings.push(format!("{id}: invalid address {vip:?} ignored")),
        }
    }

    if let Some(w) = common::labels(&svc.metadata)
        .get(LABEL_USE_WAYPOINT)
        .filter(|w| *w != "none")
    {
        warnings.push(format!(
            "{id}: waypoint {w:?} ignored (waypoints are not supported)"
        ));
    }

    let service = XdsService {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname: hostname.clone(),
        addresses,
        ports,
        subject_alt_names: subject_alt_names(annotations, namespace, &cfg.trust_domain),
        load_balancing: load_balancing(&spec, annotations),
        ip_families: ip_families(spec.ip_families.as_deref().unwrap_or_default()) as i32,
        ..XdsService::default()
    };
    let selector = spec
        .selector
        .filter(|s| !s.is_empty())
        .map(|selector| SelectorService {
            key,
            selector,
            ports: selector_ports,
        });
    Some(ServiceOut {
        service,
        selector,
        port_names,
    })
}

/// Kubernetes allows one number on TCP and UDP (DNS); the proxies key ports by number, so
/// keep one per number, preferring TCP.
fn dedup_ports(ports: &[ServicePort]) -> Vec<&ServicePort> {
    let is_tcp = |p: &ServicePort| p.protocol.as_deref().unwrap_or("TCP") == "TCP";
    let mut out: Vec<&ServicePort> = Vec::new();
    for p in ports {
        match out.iter_mut().find(|q| q.port == p.port) {
            Some(q) if !is_tcp(q) && is_tcp(p) => *q = p,
            Some(_) => {}
            None => out.push(p),
        }
    }
    out
}

/// Istio's protocol selection (`appProtocol`, else the port name prefix); only the HTTP
/// family has a wire value, the rest is UNKNOWN (node proxies ignore it anyway).
fn app_protocol(p: &ServicePort) -> AppProtocol {
    let name_prefix = p.name.as_deref().map(|n| n.split('-').next().unwrap_or(n));
    let proto = p
        .app_protocol
        .as_deref()
        .or(name_prefix)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match proto.as_str() {
        "http" | "http1" => AppProtocol::Http11,
        "http2" | "h2c" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" | "grpc-web" => AppProtocol::Grpc,
        _ => AppProtocol::Unknown,
    }
}

fn subject_alt_names(
    annotations: &BTreeMap<String, String>,
    namespace: &str,
    trust_domain: &str,
) -> Vec<String> {
    let mut sans = Vec::new();
    let list = |key: &str| -> Vec<String> {
        annotations
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for sa in list(ANNOTATION_SERVICE_ACCOUNTS) {
        sans.push(common::spiffe_id(trust_domain, namespace, &sa));
    }
    for id in list(ANNOTATION_CANONICAL_SERVICE_ACCOUNTS) {
        if id.starts_with("spiffe://") {
            sans.push(id);
        } else {
            sans.push(format!("spiffe://{id}"));
        }
    }
    sans.dedup();
    sans
}

/// PreferClose (annotation or `spec.trafficDistribution`): failover from the same network
/// down to the same subzone. `internalTrafficPolicy: Local`: same node only.
/// `publishNotReadyAddresses`: unhealthy endpoints too.
fn load_balancing(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    annotations: &BTreeMap<String, String>,
) -> Option<LoadBalancing> {
    use load_balancing::{HealthPolicy, Mode, Scope};
    let prefer_close = annotations
        .get(ANNOTATION_TRAFFIC_DISTRIBUTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("PreferClose"))
        || spec.traffic_distribution.as_deref() == Some("PreferClose");
    let mut lb = None;
    if prefer_close {
        lb = Some(LoadBalancing {
            routing_preference: vec![
                Scope::Network as i32,
                Scope::Region as i32,
                Scope::Zone as i32,
                Scope::Subzone as i32,
            ],
            mode: Mode::Failover as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        });
    }
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        lb = Some(LoadBalancing {
            routing_preference: vec![Scope::Node as i32],
            mode: Mode::Strict as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        });
    }
    if spec.publish_not_ready_addresses == Some(true) {
        lb.get_or_insert_with(LoadBalancing::default).health_policy = HealthPolicy::AllowAll as i32;
    }
    lb
}

fn ip_families(families: &[String]) -> IpFamilies {
    match families {
        [_, _] => IpFamilies::Dual,
        [f] if f == "IPv4" => IpFamilies::Ipv4Only,
        [f] if f == "IPv6" => IpFamilies::Ipv6Only,
        _ => IpFamilies::Automatic,
    }
}

/// Label naming an EndpointSlice's Service.
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Workloads for the non-pod endpoints of an EndpointSlice (Services without a selector
/// pointing at VMs, external IPs...). Pod endpoints are skipped: pods are translated from
/// the pods themselves. Like istiod: uid
/// `<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>`, host-network mode (the
/// address may be shared), no tunnel, no identity; ready unless `conditions.ready` is false.
pub fn endpoint_slice_workloads(
    slice: &EndpointSlice,
    services: &BTreeMap<String, ServiceOut>,
    cfg: &TranslateConfig,
    warnings: &mut Vec<String>,
) -> Vec<Workload> {
    let name = common::name(&slice.metadata);
    let namespace = common::namespace(&slice.metadata);
    let Some(service_name) = common::labels(&slice.metadata).get(LABEL_SERVICE_NAME) else {
        return Vec::new();
    };
    if slice.address_type == "FQDN" || name.is_empty() {
        return Vec::new();
    }
    let hostname = common::service_hostname(service_name, namespace, &cfg.domain_suffix);
    let key = format!("{namespace}/{hostname}");
    let Some(service) = services.get(&key) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        // Files may omit the protocol; Kubernetes defaults it to TCP.
        if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            continue;
        }
        let port_name = p.name.as_deref().unwrap_or_default();
        let Some(port) = p.port else {
            continue;
        };
        let Some(target) = u16::try_from(port).ok().filter(|p| *p != 0) else {
            continue;
        };
        let service_port = service.port_names.get(port_name).copied().or_else(|| {
            // An unnamed slice port belongs to the Service's only (unnamed) port.
            (port_name.is_empty() && service.service.ports.len() == 1)
                .then(|| service.service.ports.first().map(|p| p.service_port))
                .flatten()
        });
        if let Some(service_port) = service_port {
            ports.push(Port {
                service_port,
                target_port: u32::from(target),
                app_protocol: 0,
            });
        }
    }
    let services_map: HashMap<String, PortList> = [(key, PortList { ports })].into();

    let mut seen = Vec::new();
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        if ep
            .target_ref
            .as_ref()
            .is_some_and(|r| r.kind.as_deref() == Some("Pod"))
        {
            continue;
        }
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        if seen.contains(first) {
            warnings.push(format!(
                "EndpointSlice {namespace}/{name}: address {first} listed twice; ignored"
            ));
            continue;
        }
        seen.push(first.clone());
        let parsed: Result<Vec<Vec<u8>>, _> = ep
            .addresses
            .iter()
            .map(|a| a.parse::<IpAddr>().map(common::ip_bytes))
            .collect();
        let Ok(addresses) = parsed else {
            warnings.push(format!(
                "EndpointSlice {namespace}/{name}: invalid address in {:?}; endpoint ignored",
                ep.addresses
            ));
            continue;
        };
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        out.push(Workload {
            uid: format!(
                "{}/discovery.k8s.io/EndpointSlice/{namespace}/{name}/{first}",
                cfg.cluster_id
            ),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            addresses,
            network: cfg.network.clone(),
            trust_domain: cfg.trust_domain.clone(),
            services: services_map.clone(),
            status: if ready {
                WorkloadStatus::Healthy
            } else {
                WorkloadStatus::Unhealthy
            } as i32,
            cluster_id: cfg.cluster_id.clone(),
            network_mode: NetworkMode::HostNetwork as i32,
            ..Workload::default()
        });
    }
    out
}
