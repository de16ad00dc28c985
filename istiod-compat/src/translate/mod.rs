//! Pure translation: a registry [`Snapshot`] → the xDS resources ambient node proxies read,
//! as istiod computes them (reference §10-13). No I/O; table-tested and fuzzed.
//!
//! - [`workload`]: pods → `Workload` (every pod with an IP; enrolled ones HBONE);
//! - [`service`]: Services → `Service`, non-pod EndpointSlice endpoints → `Workload`;
//! - [`authz`]: AuthorizationPolicy → `Authorization` (L4 only, never widened);
//! - [`peer_authn`]: PeerAuthentication → DENY `Authorization`s.
//!
//! Problems in the input never fail a translation: the object (or rule) is skipped, in the
//! direction that never grants more access, and a line is added to
//! [`XdsSnapshot::warnings`].

pub mod authz;
pub mod common;
pub mod peer_authn;
pub mod service;
pub mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use prost::Message;
use xds_proto::security::Authorization;
use xds_proto::workload::{Address, Workload, address};

use crate::model::Snapshot;
use common::Fnv64;
use peer_authn::PeerAuthnIndex;
use service::ServiceOut;
use workload::{Enrollment, PodEnv, SelectorService};

/// Settings translation needs.
#[derive(Debug, Clone)]
pub struct TranslateConfig {
    /// Cluster id (`Kubernetes` by default); part of workload uids.
    pub cluster_id: String,
    /// Trust domain (`cluster.local`).
    pub trust_domain: String,
    /// DNS domain for service hostnames (`cluster.local`).
    pub domain_suffix: String,
    /// Root namespace: its policies are mesh-wide (scope GLOBAL). `istio-system` by default.
    pub root_namespace: String,
    /// Network name ("" = default network).
    pub network: String,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            cluster_id: "Kubernetes".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            network: String::new(),
        }
    }
}

/// One xDS resource with a content-derived version (equal content ⇒ equal version, so the
/// server sends only what changed).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// Version string (a hash of the encoded resource).
    pub version: String,
    /// The resource.
    pub resource: T,
}

/// Everything the xDS server serves, plus what the CA needs to bind identities to nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsSnapshot {
    /// `istio.workload.Address` resources by name: workload uid, or `namespace/hostname`
    /// for services.
    pub addresses: BTreeMap<String, Versioned<Address>>,
    /// `istio.security.Authorization` resources by `namespace/name`.
    pub authorizations: BTreeMap<String, Versioned<Authorization>>,
    /// For each node, the SPIFFE identities of enrolled (ambient) pods running on it: the
    /// CA only signs these for that node's proxy.
    pub identities_by_node: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Warnings produced while translating (e.g. L7-only rules dropped), for logs and metrics.
    pub warnings: Vec<String>,
}

/// Translates a snapshot. Never fails and never panics; see the module docs for how problems
/// are handled.
pub fn translate(snapshot: &Snapshot, cfg: &TranslateConfig) -> XdsSnapshot {
    let mut warnings = Vec::new();
    let mut out = XdsSnapshot::default();

    // Policies. Selector-scoped ones are also listed on the workloads they select.
    let mut selector_policies: Vec<(&str, String, &BTreeMap<String, String>)> = Vec::new();
    for policy in snapshot.authorization_policies.values() {
        let Some(authz) = authz::convert(policy, &cfg.root_namespace, &mut warnings) else {
            continue;
        };
        let key = format!("{}/{}", authz.namespace, authz.name);
        if let Some(selector) = &policy.spec.selector {
            let ns = common::namespace(&policy.metadata);
            selector_policies.push((ns, key.clone(), &selector.match_labels));
        }
        out.authorizations
            .insert(key, versioned_authorization(authz));
    }
    selector_policies.sort_by(|a, b| a.1.cmp(&b.1));
    let peer_authn = PeerAuthnIndex::build(snapshot, &cfg.root_namespace, &mut warnings);
    for (key, authz) in peer_authn.policies() {
        out.authorizations
            .insert(key.clone(), versioned_authorization(authz.clone()));
    }

    // Services.
    let mut services: BTreeMap<String, ServiceOut> = BTreeMap::new();
    for svc in snapshot.services.values() {
        if let Some(s) = service::convert(svc, cfg, &mut warnings) {
            let key = format!("{}/{}", s.service.namespace, s.service.hostname);
            services.insert(key, s);
        }
    }
    let mut selector_services: BTreeMap<&str, Vec<SelectorService>> = BTreeMap::new();
    for s in services.values() {
        if let Some(sel) = &s.selector {
            selector_services
                .entry(s.service.namespace.as_str())
                .or_default()
                .push(sel.clone());
        }
    }

    // Pods.
    for pod in snapshot.pods.values() {
        let ns = common::namespace(&pod.metadata);
        let labels = common::labels(&pod.metadata);
        let mut policies: Vec<String> = selector_policies
            .iter()
            .filter(|(pns, _, sel)| {
                (*pns == ns || *pns == cfg.root_namespace) && common::selects(sel, labels)
            })
            .map(|(_, key, _)| key.clone())
            .collect();
        let id = format!("Pod {ns}/{}", common::name(&pod.metadata));
        policies.extend(peer_authn.keys_for(ns, labels, &mut warnings, &id));
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let env = PodEnv {
            cfg,
            namespace: snapshot.namespaces.get(ns),
            node: node_name.and_then(|n| snapshot.nodes.get(n)),
            services: selector_services
                .get(ns)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            authorization_policies: policies,
        };
        let Some(translated) = workload::pod_workload(pod, &env, &mut warnings) else {
            continue;
        };
        let w = translated.workload;
        if translated.enrollment == Enrollment::Ambient && !w.node.is_empty() {
            out.identities_by_node
                .entry(w.node.clone())
                .or_default()
                .insert(common::spiffe_id(
                    &w.trust_domain,
                    &w.namespace,
                    &w.service_account,
                ));
        }
        out.addresses.insert(w.uid.clone(), versioned_workload(w));
    }

    // Endpoints of selector-less Services that are not pods.
    for slice in snapshot.endpoint_slices.values() {
        for w in service::endpoint_slice_workloads(slice, &services, cfg, &mut warnings) {
            out.addresses.insert(w.uid.clone(), versioned_workload(w));
        }
    }

    for (key, s) in services {
        out.addresses.insert(key, versioned_service(s.service));
    }
    out.warnings = warnings;
    out
}

/// Wraps a workload with its version.
pub fn versioned_workload(w: Workload) -> Versioned<Address> {
    versioned_address(Address {
        r#type: Some(address::Type::Workload(w)),
    })
}

/// Wraps a service with its version.
pub fn versioned_service(s: xds_proto::workload::Service) -> Versioned<Address> {
    versioned_address(Address {
        r#type: Some(address::Type::Service(s)),
    })
}

/// Wraps an address with its version.
pub fn versioned_address(a: Address) -> Versioned<Address> {
    Versioned {
        version: address_version(&a),
        resource: a,
    }
}

/// Wraps a policy with its version.
pub fn versioned_authorization(a: Authorization) -> Versioned<Authorization> {
    let mut h = Fnv64::new();
    h.write_chunk(&a.encode_to_vec());
    Versioned {
        version: h.hex(),
        resource: a,
    }
}

/// Content hash of an address. The protobuf encoding of a map (`Workload.services`) follows
/// the map's iteration order, which is random for a `HashMap`, so services are hashed in key
/// order instead: equal content always gives an equal version.
pub fn address_version(a: &Address) -> String {
    let mut h = Fnv64::new();
    match &a.r#type {
        Some(address::Type::Workload(w)) => {
            h.write(b"w");
            let mut rest = w.clone();
            let services = std::mem::take(&mut rest.services);
            h.write_chunk(&rest.encode_to_vec());
            let sorted: BTreeMap<&String, _> = services.iter().collect();
            for (k, v) in sorted {
                h.write_chunk(k.as_bytes());
                h.write_chunk(&v.encode_to_vec());
            }
        }
        Some(address::Type::Service(s)) => {
            h.write(b"s");
            h.write_chunk(&s.encode_to_vec());
        }
        None => h.write(b"-"),
    }
    h.hex()
}

/// Fuzzing entry: any bytes, read as a local-files YAML document stream, translated with the
/// default settings. Never panics (that is what a fuzzer checks); `None` when the bytes are
/// not a valid document stream.
pub fn fuzz_translate(data: &[u8]) -> Option<XdsSnapshot> {
    let text = std::str::from_utf8(data).ok()?;
    let parsed = crate::files::parse_documents(std::path::Path::new("fuzz.yaml"), text).ok()?;
    let (snapshot, _) = crate::files::build_snapshot(parsed.objects);
    Some(translate(&snapshot, &TranslateConfig::default()))
}
