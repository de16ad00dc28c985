use std::collections::HashMap;

use mesh_core::{NamespacedHostname, NetworkAddress};
use serde::Serialize;

use super::GatewayAddress;

/// Locality scopes used by `routing_preference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LoadBalancerScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// How strictly the routing preference applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum LoadBalancerMode {
    /// All endpoints are candidates.
    #[default]
    Standard,
    /// Only endpoints matching every preference.
    Strict,
    /// Prefer the best-matching endpoints.
    Failover,
    /// Do not load balance: send to the original destination.
    Passthrough,
}

/// Which endpoints load balancing may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum LoadBalancerHealthPolicy {
    /// Only healthy endpoints.
    #[default]
    OnlyHealthy,
    /// Every endpoint.
    AllowAll,
}

/// Load balancing settings of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// Ordered locality preferences.
    pub routing_preferences: Vec<LoadBalancerScope>,
    /// Mode.
    pub mode: LoadBalancerMode,
    /// Health policy.
    pub health_policy: LoadBalancerHealthPolicy,
}

/// IP families a service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum IpFamilies {
    /// Whatever the endpoints have.
    #[default]
    Automatic,
    /// IPv4 only.
    IPv4,
    /// IPv6 only.
    IPv6,
    /// Both.
    Dual,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The backing workload's uid.
    pub workload_uid: String,
    /// This endpoint's service-port → target-port mapping (overrides the service's).
    pub port: HashMap<u16, u16>,
}

/// A service as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Fully qualified hostname.
    pub hostname: String,
    /// Virtual IPs (empty for headless services).
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port (0 = named port, use the endpoint's mapping).
    pub ports: HashMap<u16, u16>,
    /// Extra identities accepted for this service's backends.
    pub subject_alt_names: Vec<String>,
    /// Waypoint in front of this service.
    pub waypoint: Option<GatewayAddress>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancer>,
    /// IP families.
    pub ip_families: IpFamilies,
    /// Backends keyed by workload uid.
    pub endpoints: HashMap<String, Endpoint>,
}

impl Service {
    /// The `namespace/hostname` key of this service.
    pub fn namespaced_hostname(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}
