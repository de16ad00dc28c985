use std::collections::HashMap;
use std::net::IpAddr;

use mesh_core::{Identity, NamespacedHostname, NetworkAddress};
use serde::Serialize;

/// How a workload accepts inbound traffic from the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum InboundProtocol {
    /// Plain TCP: the workload is not in the mesh (or not captured).
    #[default]
    Tcp,
    /// HTTP/2 CONNECT over mTLS to `<ip>:15008`.
    Hbone,
}

/// Whether a workload may receive traffic from load balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum HealthStatus {
    /// Serving.
    #[default]
    Healthy,
    /// Not serving; skipped by load balancing unless the service allows all.
    Unhealthy,
}

/// `Standard` workloads are indexed by IP; `HostNetwork` ones share the node IP and are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum NetworkMode {
    /// A normal pod network.
    #[default]
    Standard,
    /// The pod uses the node's network namespace.
    HostNetwork,
}

/// Protocol spoken to the application port when a workload has an application tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum AppTunnelProtocol {
    /// Forward the bytes unchanged.
    #[default]
    None,
    /// Prefix the stream with a PROXY protocol v2 header.
    Proxy,
}

/// An application tunnel (e.g. a waypoint that takes PROXY protocol on 15088).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplicationTunnel {
    /// What to speak to the application.
    pub protocol: AppTunnelProtocol,
    /// Port override; `None` keeps the requested port.
    pub port: Option<u16>,
}

/// Where a waypoint or network gateway is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum GatewayDestination {
    /// An address on a network.
    Address(NetworkAddress),
    /// A service hostname.
    Hostname(NamespacedHostname),
}

/// A reference to a waypoint or network gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct GatewayAddress {
    /// The gateway itself.
    pub destination: GatewayDestination,
    /// The port HBONE is served on (normally 15008).
    pub hbone_mtls_port: u16,
}

/// Topology of a workload, for locality-aware load balancing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

/// A workload (normally a pod) as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Unique id, e.g. `Kubernetes//v1/Pod/default/echo-1`.
    pub uid: String,
    /// Name (pod name).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// IP addresses of the workload.
    pub workload_ips: Vec<IpAddr>,
    /// DNS hostname for workloads without IPs.
    pub hostname: String,
    /// Network the workload is on; empty is the default network.
    pub network: String,
    /// How to reach the workload.
    pub protocol: InboundProtocol,
    /// Trust domain of the workload's identity.
    pub trust_domain: String,
    /// Service account of the workload's identity.
    pub service_account: String,
    /// Node the workload runs on.
    pub node: String,
    /// Waypoint in front of this workload.
    pub waypoint: Option<GatewayAddress>,
    /// Gateway to reach this workload from other networks.
    pub network_gateway: Option<GatewayAddress>,
    /// The workload itself speaks HBONE natively.
    pub native_tunnel: bool,
    /// Application tunnel settings.
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Keys (`ns/name`) of selector-scoped policies that apply to this workload.
    pub authorization_policies: Vec<String>,
    /// Health.
    pub status: HealthStatus,
    /// Cluster id.
    pub cluster_id: String,
    /// Locality.
    pub locality: Locality,
    /// `service.istio.io/canonical-name`.
    pub canonical_name: String,
    /// `service.istio.io/canonical-revision`.
    pub canonical_revision: String,
    /// Owning workload name (e.g. the deployment).
    pub workload_name: String,
    /// Owning workload kind, lower case (`deployment`, `cronjob`, `pod`, `job`).
    pub workload_type: String,
    /// Load-balancing weight; 1 when unset.
    pub capacity: u32,
    /// Network mode.
    pub network_mode: NetworkMode,
    /// Services this workload backs, with its own service-port → target-port mapping.
    pub services: HashMap<NamespacedHostname, HashMap<u16, u16>>,
}

impl Workload {
    /// The SPIFFE identity this workload runs as.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// Checks that the identity this workload runs as is a valid SPIFFE id (no empty parts,
    /// no `/` inside one): otherwise its certificate would carry an identity no peer can
    /// parse. Config boundaries reject such workloads.
    pub fn check_identity(&self) -> Result<(), String> {
        let id = self.identity();
        match id.to_string().parse::<Identity>() {
            Ok(parsed) if parsed == id => Ok(()),
            _ => Err(format!("{id} is not a valid SPIFFE identity")),
        }
    }
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            uid: String::new(),
            name: String::new(),
            namespace: String::new(),
            workload_ips: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: InboundProtocol::Tcp,
            trust_domain: "cluster.local".into(),
            service_account: "default".into(),
            node: String::new(),
            waypoint: None,
            network_gateway: None,
            native_tunnel: false,
            application_tunnel: None,
            authorization_policies: Vec::new(),
            status: HealthStatus::Healthy,
            cluster_id: "Kubernetes".into(),
            locality: Locality::default(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_name: String::new(),
            workload_type: "pod".into(),
            capacity: 1,
            network_mode: NetworkMode::Standard,
            services: HashMap::new(),
        }
    }
}
