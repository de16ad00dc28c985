//! Pod → `istio.workload.Workload`, as istiod's ambient index builds it.
//!
//! Every running (or pending) pod with an IP is sent, enrolled or not: node proxies need the
//! others too, as service endpoints and policy subjects (they reach them without a tunnel).
//! Enrolled pods get `tunnel_protocol = HBONE` (see [`enrollment`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use xds_proto::workload::{
    Locality, NetworkMode, Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::common::{self, *};

/// Why a pod is or is not captured by its node proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// Captured by the node proxy (ambient): HBONE, identity served by the node proxy.
    Ambient,
    /// Not captured, but its own proxy terminates HBONE (`networking.istio.io/tunnel: http`,
    /// e.g. a sidecar): HBONE with `native_tunnel`.
    NativeTunnel,
    /// Plain workload: reached without a tunnel.
    None,
}

/// Decides enrollment the way istio-cni does (istiod then marks captured pods HBONE):
/// host-network pods and sidecar-injected pods are never captured; the pod label
/// `istio.io/dataplane-mode=none` opts out; the pod or namespace label
/// `istio.io/dataplane-mode=ambient` enrolls; so does istio-cni's own
/// `ambient.istio.io/redirection: enabled` annotation (authoritative in a real cluster).
pub fn enrollment(pod: &Pod, namespace: Option<&Namespace>) -> Enrollment {
    let labels = common::labels(&pod.metadata);
    let annotations = common::annotations(&pod.metadata);
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let sidecar = annotations.contains_key(ANNOTATION_SIDECAR_STATUS);
    let pod_mode = labels.get(LABEL_DATAPLANE_MODE).map(String::as_str);
    let ns_mode = namespace
        .and_then(|n| common::labels(&n.metadata).get(LABEL_DATAPLANE_MODE))
        .map(String::as_str);
    let redirected = annotations
        .get(ANNOTATION_AMBIENT_REDIRECTION)
        .is_some_and(|v| v == "enabled");

    let captured = !host_network
        && !sidecar
        && pod_mode != Some(DATAPLANE_MODE_NONE)
        && (redirected
            || pod_mode == Some(DATAPLANE_MODE_AMBIENT)
            || ns_mode == Some(DATAPLANE_MODE_AMBIENT));
    if captured {
        Enrollment::Ambient
    } else if labels.get(LABEL_TUNNEL).is_some_and(|v| v == "http") {
        Enrollment::NativeTunnel
    } else {
        Enrollment::None
    }
}

/// How a Service port reaches its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A number.
    Number(u32),
    /// A container port name, resolved per pod.
    Name(String),
}

/// A selector Service, as pods need it to fill their `services` map.
#[derive(Debug, Clone)]
pub struct SelectorService {
    /// `namespace/hostname`.
    pub key: String,
    /// `spec.selector` (non-empty).
    pub selector: BTreeMap<String, String>,
    /// `(service port, target)`.
    pub ports: Vec<(u32, TargetPort)>,
}

/// What a pod translation needs besides the pod.
pub struct PodEnv<'a> {
    /// Settings.
    pub cfg: &'a super::TranslateConfig,
    /// The pod's namespace object, if known.
    pub namespace: Option<&'a Namespace>,
    /// The pod's node object, if known (locality).
    pub node: Option<&'a Node>,
    /// Selector services of the pod's namespace.
    pub services: &'a [SelectorService],
    /// Authorization keys that apply to it (selector-scoped policies and converted
    /// PeerAuthentications), in order.
    pub authorization_policies: Vec<String>,
}

/// A translated pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodWorkload {
    /// The resource.
    pub workload: Workload,
    /// Enrollment.
    pub enrollment: Enrollment,
}

/// `<cluster>//v1/Pod/<namespace>/<name>`.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//v1/Pod/{namespace}/{name}")
}

/// Translates a pod; `None` for terminated pods and pods without a (valid) IP.
pub fn pod_workload(
    pod: &Pod,
    env: &PodEnv<'_>,
    warnings: &mut Vec<String>,
) -> Option<PodWorkload> {
    let name = common::name(&pod.metadata);
    let namespace = common::namespace(&pod.metadata);
    if name.is_empty() {
        warnings.push(format!("Pod in {namespace} without a name; skipped"));
        return None;
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let addresses = pod_ips(pod, warnings)?;
    let spec = pod.spec.as_ref();
    let labels = common::labels(&pod.metadata);
    let ns_labels = env.namespace.map(|n| common::labels(&n.metadata));
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let enrollment = enrollment(pod, env.namespace);
    let (workload_name, workload_type) = workload_name_and_type(pod);
    let (canonical_name, canonical_revision) = canonical(labels, &workload_name);
    let network = labels
        .get(LABEL_NETWORK)
        .or_else(|| ns_labels.and_then(|l| l.get(LABEL_NETWORK)))
        .cloned()
        .unwrap_or_else(|| env.cfg.network.clone());
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");

    if let Some(waypoint) = labels
        .get(LABEL_USE_WAYPOINT)
        .or_else(|| ns_labels.and_then(|l| l.get(LABEL_USE_WAYPOINT)))
        .filter(|w| *w != "none")
    {
        warnings.push(format!(
            "Pod {namespace}/{name}: waypoint {waypoint:?} ignored (waypoints are not supported)"
        ));
    }

    let workload = Workload {
        uid: pod_uid(&env.cfg.cluster_id, namespace, name),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        addresses,
        network,
        tunnel_protocol: match enrollment {
            Enrollment::Ambient | Enrollment::NativeTunnel => TunnelProtocol::Hbone,
            Enrollment::None => TunnelProtocol::None,
        } as i32,
        native_tunnel: enrollment == Enrollment::NativeTunnel,
        trust_domain: env.cfg.trust_domain.clone(),
        service_account: service_account.to_owned(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        canonical_name,
        canonical_revision,
        workload_type: workload_type as i32,
        workload_name,
        services: services(pod, env.services),
        authorization_policies: env.authorization_policies.clone(),
        status: if ready {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: env.cfg.cluster_id.clone(),
        locality: locality(labels, env.node),
        network_mode: if host_network {
            NetworkMode::HostNetwork
        } else {
            NetworkMode::Standard
        } as i32,
        ..Workload::default()
    };
    Some(PodWorkload {
        workload,
        enrollment,
    })
}

/// `status.podIPs`, else `status.podIP`; invalid entries are warned about and skipped.
fn pod_ips(pod: &Pod, warnings: &mut Vec<String>) -> Option<Vec<Vec<u8>>> {
    let status = pod.status.as_ref()?;
    let mut raw: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw.is_empty() {
        raw.extend(status.pod_ip.as_deref());
    }
    let mut out = Vec::new();
    for ip in raw.into_iter().filter(|s| !s.is_empty()) {
        match ip.parse::<IpAddr>() {
            Ok(ip) => {
                let bytes = common::ip_bytes(ip);
                if !out.contains(&bytes) {
                    out.push(bytes);
                }
            }
            Err(_) => warnings.push(format!(
                "Pod {}/{}: invalid IP {ip:?} ignored",
                common::namespace(&pod.metadata),
                common::name(&pod.metadata)
            )),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The controller owner reference: the one marked `controller: true`, else (objects written by
/// hand rarely set it) the first one.
fn controller(pod: &Pod) -> Option<(&str, &str)> {
    let refs = pod.metadata.owner_references.as_deref().unwrap_or_default();
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| (r.kind.as_str(), r.name.as_str()))
}

/// Workload name and type from the owner: a ReplicaSet named `<deployment>-<pod-template-hash>`
/// is its Deployment; a Job named `<cronjob>-<8 to 10 digits>` is its CronJob; any other
/// owner (StatefulSet, DaemonSet, bare ReplicaSet...) or none: the pod itself.
pub fn workload_name_and_type(pod: &Pod) -> (String, WorkloadType) {
    let pod_name = common::name(&pod.metadata);
    let labels = common::labels(&pod.metadata);
    match controller(pod) {
        Some(("ReplicaSet", rs)) => {
            let hash = labels.get("pod-template-hash").map(String::as_str);
            match hash
                .filter(|h| !h.is_empty())
                .and_then(|h| rs.strip_suffix(h))
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty())
            {
                Some(deployment) => (deployment.to_owned(), WorkloadType::Deployment),
                None => (pod_name.to_owned(), WorkloadType::Pod),
            }
        }
        Some(("Deployment", d)) => (d.to_owned(), WorkloadType::Deployment),
        Some(("Job", job)) => match cron_job_of(job) {
            Some(cron) => (cron.to_owned(), WorkloadType::Cronjob),
            None => (job.to_owned(), WorkloadType::Job),
        },
        Some(("CronJob", c)) => (c.to_owned(), WorkloadType::Cronjob),
        _ => (pod_name.to_owned(), WorkloadType::Pod),
    }
}

/// `<cronjob>-<8..=10 digits>` → `<cronjob>` (the CronJob controller's job names).
fn cron_job_of(job: &str) -> Option<&str> {
    let (prefix, digits) = job.rsplit_once('-')?;
    let ok = (8..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    (ok && !prefix.is_empty()).then_some(prefix)
}

/// Canonical service name and revision (Istio's label precedence).
pub fn canonical(labels: &BTreeMap<String, String>, workload_name: &str) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let name = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| workload_name.to_owned());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_owned());
    (name, revision)
}

/// Locality: the pod label `istio-locality` (`region.zone.subzone`), else the node's
/// topology labels.
fn locality(labels: &BTreeMap<String, String>, node: Option<&Node>) -> Option<Locality> {
    if let Some(l) = labels.get(LABEL_ISTIO_LOCALITY).filter(|l| !l.is_empty()) {
        let mut parts = l.splitn(3, '.');
        return Some(Locality {
            region: parts.next().unwrap_or_default().to_owned(),
            zone: parts.next().unwrap_or_default().to_owned(),
            subzone: parts.next().unwrap_or_default().to_owned(),
        });
    }
    let node_labels = common::labels(&node?.metadata);
    let get = |k: &str| node_labels.get(k).cloned().unwrap_or_default();
    let locality = Locality {
        region: get(LABEL_REGION),
        zone: get(LABEL_ZONE),
        subzone: get(LABEL_SUBZONE),
    };
    (locality != Locality::default()).then_some(locality)
}

/// `"ns/hostname" → ports` for each selector Service of the namespace selecting the pod.
/// Named target ports resolve through the pod's container ports; a port whose name the pod
/// does not declare is left out for this pod (as istiod does).
fn services(
    pod: &Pod,
    services: &[SelectorService],
) -> std::collections::HashMap<String, PortList> {
    let labels = common::labels(&pod.metadata);
    services
        .iter()
        .filter(|s| !s.selector.is_empty() && common::selects(&s.selector, labels))
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .filter_map(|(service_port, target)| {
                    let target_port = match target {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => container_port(pod, name)?,
                    };
                    Some(Port {
                        service_port: *service_port,
                        target_port,
                        app_protocol: 0,
                    })
                })
                .collect();
            (s.key.clone(), PortList { ports })
        })
        .collect()
}

/// The number of the container port named `name`.
fn container_port(pod: &Pod, name: &str) -> Option<u32> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .map(u32::from)
}
