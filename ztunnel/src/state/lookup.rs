//! Building a [`ProxyState`] and the lookups the data path makes on it.
//! (Owned by the state/policy work: fill in the bodies; keep the signatures.)

use std::net::IpAddr;
use std::sync::Arc;

use super::{Authorization, ProxyState, Service, Workload};
use crate::rbac::{self, RbacConnection};

/// A workload picked by load balancing, with the port to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The chosen backend.
    pub workload: Arc<Workload>,
    /// Target port on that backend.
    pub port: u16,
}

impl ProxyState {
    /// Builds a snapshot from complete lists, computing every index and merging each
    /// workload's `services` map into the matching service's endpoints (workloads may name
    /// services that are not known yet; those entries are ignored until the service arrives).
    pub fn build(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
    ) -> ProxyState {
        let _ = (workloads, services, policies);
        todo!()
    }

    /// The workload with this IP on this network.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        let _ = (network, ip);
        todo!()
    }

    /// The workload with this `(namespace, name, service account)` (the dedicated-mode
    /// `PROXY_WORKLOAD_INFO`), optionally restricted to a node.
    pub fn workload_by_info(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Option<Arc<Workload>> {
        let _ = (namespace, name, service_account);
        todo!()
    }

    /// The service whose VIP is `network/ip`. Ties prefer a service in `client_namespace`.
    pub fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        client_namespace: &str,
    ) -> Option<Arc<Service>> {
        let _ = (network, ip, client_namespace);
        todo!()
    }

    /// The service with this hostname, preferring one in `preferred_namespace`.
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        preferred_namespace: &str,
    ) -> Option<Arc<Service>> {
        let _ = (hostname, preferred_namespace);
        todo!()
    }

    /// Picks a backend of `service` for `service_port` as seen from `source`
    /// (reference §5.4: healthy endpoints only unless ALLOW_ALL; the endpoint's own port
    /// mapping, else the service target port; STRICT/FAILOVER locality ranking; weighted
    /// random by capacity). `None` when no endpoint qualifies.
    pub fn load_balance(
        &self,
        service: &Service,
        service_port: u16,
        source: Option<&Workload>,
    ) -> Option<Upstream> {
        let _ = (service, service_port, source);
        todo!()
    }

    /// The policies that apply to `workload`: its namespace's NAMESPACE policies, the
    /// GLOBAL ones, and the WORKLOAD_SELECTOR keys it lists (unknown keys skipped).
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let _ = workload;
        todo!()
    }

    /// Istio's L4 authorization decision for a connection to `workload` (reference §13).
    pub fn assert_rbac(
        &self,
        workload: &Workload,
        conn: &RbacConnection,
    ) -> Result<(), rbac::Denied> {
        let _ = (workload, conn);
        todo!()
    }
}
