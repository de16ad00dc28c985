//! Building a [`ProxyState`] and the lookups the data path makes on it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_core::{NamespacedHostname, NetworkAddress};
use rand::Rng;
use tracing::{debug, info, warn};

use super::{
    Authorization, Endpoint, HealthStatus, LoadBalancerHealthPolicy, LoadBalancerMode,
    LoadBalancerScope, NetworkMode, PolicyAction, PolicyScope, ProxyState, Service, Workload,
};
use crate::rbac::{self, RbacConnection};

#[cfg(test)]
mod tests;

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
    ///
    /// Duplicates (same uid, same `namespace/hostname`, same `namespace/name`) are resolved
    /// in favour of the later entry; two workloads claiming the same `network/IP` likewise.
    /// Every endpoint is kept, healthy or not: [`ProxyState::load_balance`] applies the
    /// service's health policy, and inbound port mapping still finds an unhealthy backend.
    pub fn build(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
    ) -> ProxyState {
        let mut state = ProxyState::default();

        // Workloads, remembering first-seen order so the IP index is deterministic.
        let mut order = Vec::with_capacity(workloads.len());
        for workload in workloads {
            let uid = workload.uid.clone();
            if state
                .workloads
                .insert(uid.clone(), Arc::new(workload))
                .is_some()
            {
                warn!(%uid, "duplicate workload uid; the later definition wins");
            } else {
                order.push(uid);
            }
        }
        for uid in &order {
            let Some(workload) = state.workloads.get(uid) else {
                continue;
            };
            if workload.network_mode == NetworkMode::HostNetwork {
                // Shares the node IP with everything else on the host network.
                continue;
            }
            for ip in &workload.workload_ips {
                let key = NetworkAddress {
                    network: workload.network.clone(),
                    address: ip.to_canonical(),
                };
                if let Some(previous) = state.workloads_by_addr.insert(key, workload.clone())
                    && previous.uid != workload.uid
                {
                    warn!(%ip, first = %previous.uid, second = %workload.uid,
                        "two workloads claim the same address; the later one wins");
                }
            }
        }

        // Services, with the workloads' endpoint entries merged in.
        let mut by_key: HashMap<NamespacedHostname, Service> = HashMap::new();
        for service in services {
            by_key.insert(service.namespaced_hostname(), service);
        }
        for uid in &order {
            let Some(workload) = state.workloads.get(uid) else {
                continue;
            };
            for (key, ports) in &workload.services {
                match by_key.get_mut(key) {
                    Some(service) => {
                        service.endpoints.insert(
                            uid.clone(),
                            Endpoint {
                                workload_uid: uid.clone(),
                                port: ports.clone(),
                            },
                        );
                    }
                    None => debug!(%uid, service = %key, "workload backs an unknown service"),
                }
            }
        }
        let mut keys: Vec<NamespacedHostname> = by_key.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let Some(service) = by_key.remove(&key) else {
                continue;
            };
            let service = Arc::new(service);
            for vip in &service.vips {
                let vip = NetworkAddress {
                    network: vip.network.clone(),
                    address: vip.address.to_canonical(),
                };
                state
                    .services_by_vip
                    .entry(vip)
                    .or_default()
                    .push(service.clone());
            }
            state.services.insert(key, service);
        }

        // Policies, indexed by the namespace they apply to (GLOBAL under "").
        for policy in policies {
            let key = policy.key();
            if state
                .policies
                .insert(key.clone(), Arc::new(policy))
                .is_some()
            {
                warn!(policy = %key, "duplicate authorization policy; the later definition wins");
            }
        }
        for (key, policy) in &state.policies {
            let namespace = match policy.scope {
                PolicyScope::Global => String::new(),
                PolicyScope::Namespace => policy.namespace.clone(),
                PolicyScope::WorkloadSelector => continue,
            };
            state
                .policies_by_namespace
                .entry(namespace)
                .or_default()
                .push(key.clone());
        }
        for keys in state.policies_by_namespace.values_mut() {
            keys.sort();
        }
        state
    }

    /// The workload with this IP on this network.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workloads_by_addr
            .get(&NetworkAddress {
                network: network.to_string(),
                address: ip.to_canonical(),
            })
            .cloned()
    }

    /// The workload with this `(namespace, name, service account)` (the dedicated-mode
    /// `PROXY_WORKLOAD_INFO`). Several matches (which a sane config never has) resolve to
    /// the smallest uid, so the answer is stable.
    pub fn workload_by_info(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Option<Arc<Workload>> {
        self.workloads
            .values()
            .filter(|w| {
                w.namespace == namespace && w.name == name && w.service_account == service_account
            })
            .min_by(|a, b| a.uid.cmp(&b.uid))
            .cloned()
    }

    /// The service whose VIP is `network/ip`. Ties prefer a service in `client_namespace`,
    /// then the smallest `namespace/hostname`.
    pub fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        client_namespace: &str,
    ) -> Option<Arc<Service>> {
        let services = self.services_by_vip.get(&NetworkAddress {
            network: network.to_string(),
            address: ip.to_canonical(),
        })?;
        services
            .iter()
            .find(|s| s.namespace == client_namespace)
            .or_else(|| services.first())
            .cloned()
    }

    /// The service with this hostname, preferring one in `preferred_namespace`, then the
    /// alphabetically first namespace.
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        preferred_namespace: &str,
    ) -> Option<Arc<Service>> {
        let preferred = NamespacedHostname {
            namespace: preferred_namespace.to_string(),
            hostname: hostname.to_string(),
        };
        if let Some(service) = self.services.get(&preferred) {
            return Some(service.clone());
        }
        self.services
            .values()
            .filter(|s| s.hostname == hostname)
            .min_by(|a, b| a.namespace.cmp(&b.namespace))
            .cloned()
    }

    /// Picks a backend of `service` for `service_port` as seen from `source`
    /// (reference §5.4: healthy endpoints only unless ALLOW_ALL; the endpoint's own port
    /// mapping, else the service target port; STRICT/FAILOVER locality ranking; weighted
    /// random by capacity). `None` when no endpoint qualifies.
    ///
    /// PASSTHROUGH is the caller's business (it never load balances) and is treated as
    /// STANDARD here. Without a `source` nothing can be ranked: FAILOVER then considers every
    /// candidate, and STRICT only qualifies endpoints when it has no preferences at all.
    pub fn load_balance(
        &self,
        service: &Service,
        service_port: u16,
        source: Option<&Workload>,
    ) -> Option<Upstream> {
        let candidates = self.lb_candidates(service, service_port, source);
        let total: u64 = candidates
            .iter()
            .map(|c| u64::from(c.workload.capacity))
            .sum();
        let mut rng = rand::rng();
        let index = if total == 0 {
            // Every candidate has capacity 0: weights say nothing, so spread evenly.
            if candidates.is_empty() {
                return None;
            }
            rng.random_range(0..candidates.len())
        } else {
            weighted_index(&candidates, rng.random_range(0..total))?
        };
        candidates.into_iter().nth(index)
    }

    /// The endpoints `load_balance` may choose from (after health, port and locality
    /// filtering), sorted by workload uid.
    fn lb_candidates(
        &self,
        service: &Service,
        service_port: u16,
        source: Option<&Workload>,
    ) -> Vec<Upstream> {
        let lb = service.load_balancer.as_ref();
        let allow_unhealthy =
            lb.is_some_and(|lb| lb.health_policy == LoadBalancerHealthPolicy::AllowAll);
        let source_network = source.map(|s| s.network.as_str()).unwrap_or_default();

        let mut candidates: Vec<Upstream> = service
            .endpoints
            .values()
            .filter_map(|endpoint| {
                let workload = self.workloads.get(&endpoint.workload_uid)?;
                if !allow_unhealthy && workload.status != HealthStatus::Healthy {
                    return None;
                }
                let addressable = !workload.workload_ips.is_empty()
                    || !workload.hostname.is_empty()
                    || (workload.network != source_network && workload.network_gateway.is_some());
                if !addressable {
                    return None;
                }
                let port = target_port(service, endpoint, service_port)?;
                Some(Upstream {
                    workload: workload.clone(),
                    port,
                })
            })
            .collect();
        candidates.sort_by(|a, b| a.workload.uid.cmp(&b.workload.uid));

        let Some(lb) = lb else {
            return candidates;
        };
        let prefs = &lb.routing_preferences;
        let rank = |c: &Upstream| source.map_or(0, |src| locality_rank(prefs, src, &c.workload));
        match lb.mode {
            LoadBalancerMode::Standard | LoadBalancerMode::Passthrough => candidates,
            LoadBalancerMode::Strict => candidates
                .into_iter()
                .filter(|c| rank(c) == prefs.len())
                .collect(),
            LoadBalancerMode::Failover => {
                let best = candidates.iter().map(rank).max().unwrap_or_default();
                candidates.into_iter().filter(|c| rank(c) == best).collect()
            }
        }
    }

    /// The policies that apply to `workload`: its namespace's NAMESPACE policies, the
    /// GLOBAL ones, and the WORKLOAD_SELECTOR keys it lists (unknown keys skipped).
    /// Each policy appears once.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let indexed = [String::new(), workload.namespace.clone()]
            .into_iter()
            .filter_map(|ns| self.policies_by_namespace.get(&ns))
            .flatten();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for key in indexed.chain(workload.authorization_policies.iter()) {
            if !seen.insert(key.as_str()) {
                continue;
            }
            match self.policies.get(key) {
                Some(policy) => out.push(policy.clone()),
                None => warn!(workload = %workload.uid, policy = %key,
                    "workload references an unknown authorization policy; skipped"),
            }
        }
        out
    }

    /// Istio's L4 authorization decision for a connection to `workload` (reference §13):
    /// dry-run policies are only logged; any matching DENY denies; no ALLOW policies
    /// allows; otherwise some ALLOW must match.
    pub fn assert_rbac(
        &self,
        workload: &Workload,
        conn: &RbacConnection,
    ) -> Result<(), rbac::Denied> {
        // One pass, no allocation: this runs for every inbound connection and again for
        // every live connection on each policy change. A DENY match ends it at once; ALLOW
        // matching stops at the first match but the pass goes on for later DENYs.
        let peer = rbac::Peer::of(conn);
        let mut allow_policies = false;
        let mut allowed = false;
        for policy in self.applicable_policies(workload) {
            if policy.dry_run {
                let matched = policy.matches_peer(&peer);
                let result = match (policy.action, matched) {
                    (PolicyAction::Deny, true) => "deny",
                    (PolicyAction::Allow, true) => "allow",
                    (_, false) => "no match",
                };
                info!(policy = %policy.key(), action = ?policy.action, matched, result,
                    src = %conn.src, dst = %conn.dst, "dry-run authorization policy evaluated");
                continue;
            }
            match policy.action {
                PolicyAction::Deny if policy.matches_peer(&peer) => {
                    return Err(rbac::Denied::ExplicitlyDenied {
                        namespace: policy.namespace.clone(),
                        name: policy.name.clone(),
                    });
                }
                PolicyAction::Deny => {}
                PolicyAction::Allow => {
                    allow_policies = true;
                    allowed = allowed || policy.matches_peer(&peer);
                }
            }
        }
        if !allow_policies || allowed {
            Ok(())
        } else {
            Err(rbac::Denied::NotAllowed)
        }
    }

    /// The policies that apply to `workload`, without allocating (unknown selector keys
    /// are skipped; [`ProxyState::policies_for`] warns about them).
    fn applicable_policies<'s>(
        &'s self,
        workload: &'s Workload,
    ) -> impl Iterator<Item = &'s Arc<Authorization>> + 's {
        let global = self.policies_by_namespace.get("").into_iter().flatten();
        let namespaced = (!workload.namespace.is_empty())
            .then(|| self.policies_by_namespace.get(workload.namespace.as_str()))
            .flatten()
            .into_iter()
            .flatten();
        global
            .chain(namespaced)
            .chain(workload.authorization_policies.iter())
            .filter_map(|key| self.policies.get(key))
    }
}

/// The endpoint's own non-zero mapping for `service_port`, else the service's non-zero
/// target port; a named port (0) with no endpoint mapping is not routable.
fn target_port(service: &Service, endpoint: &Endpoint, service_port: u16) -> Option<u16> {
    let non_zero = |port: Option<&u16>| port.copied().filter(|port| *port != 0);
    non_zero(endpoint.port.get(&service_port))
        .or_else(|| non_zero(service.ports.get(&service_port)))
}

/// How many leading routing preferences `dst` shares with `src`. With NETWORK first this
/// puts every same-network endpoint above every other-network one.
fn locality_rank(prefs: &[LoadBalancerScope], src: &Workload, dst: &Workload) -> usize {
    prefs
        .iter()
        .take_while(|scope| match scope {
            LoadBalancerScope::Region => src.locality.region == dst.locality.region,
            LoadBalancerScope::Zone => src.locality.zone == dst.locality.zone,
            LoadBalancerScope::Subzone => src.locality.subzone == dst.locality.subzone,
            LoadBalancerScope::Node => src.node == dst.node,
            LoadBalancerScope::Cluster => src.cluster_id == dst.cluster_id,
            LoadBalancerScope::Network => src.network == dst.network,
        })
        .count()
}

/// The candidate whose capacity interval contains `point` (`0 <= point < total capacity`).
fn weighted_index(candidates: &[Upstream], point: u64) -> Option<usize> {
    let mut upper = 0u64;
    candidates.iter().position(|c| {
        upper += u64::from(c.workload.capacity);
        point < upper
    })
}
