//! `PeerAuthentication` → DENY `Authorization`s, since node proxies know no PeerAuthentication
//! type (reference §13).
//!
//! Which PeerAuthentication applies to a workload in namespace N: the most specific one that
//! exists of (1) a workload-level policy in N (non-empty selector matching the pod labels; N
//! is not the root namespace), (2) the namespace-level one in N (no or empty selector), (3)
//! the mesh-level one (root namespace, no selector). Several at one level: the oldest
//! (creation time, then name) wins, as in Istio. An `UNSET` (or absent) mode inherits from the
//! next level out; the default is PERMISSIVE. DISABLE is PERMISSIVE at L4 (plaintext allowed).
//! Port-level overrides exist only on workload-level policies; an UNSET port inherits the
//! policy's effective mode.
//!
//! Each policy whose effective result denies something becomes
//! `<ns>/converted_peer_authentication_<name>`: DENY, scope WORKLOAD_SELECTOR, one rule
//! - effective STRICT: clause `notPrincipals: [presence]`, plus a clause
//!   `notDestinationPorts: [PERMISSIVE/DISABLE ports]` when there are such overrides;
//! - effective PERMISSIVE with STRICT port overrides: clauses `notPrincipals: [presence]` and
//!   `destinationPorts: [STRICT ports]` (plaintext denied on those ports only).
//!
//! and every workload it applies to lists that key in `authorization_policies`. Unlike
//! istiod, the static `istio_converted_static_strict` policy is not sent: every STRICT
//! workload references the converted form of the policy that made it STRICT, which also
//! gets port-level overrides right whatever the inherited mode (istio/istio#53884).

use std::collections::BTreeMap;

use xds_proto::security::{
    Action, Authorization, Clause, Match, Rule, Scope, StringMatch, string_match::MatchType,
};

use super::common;
use crate::crd::{MutualTls, PeerAuthentication};
use crate::model::Snapshot;

/// Name prefix of converted policies (`_` is not valid in Kubernetes names: no clashes).
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// A resolved mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unset,
    Permissive,
    Strict,
}

fn mode(mtls: Option<&MutualTls>, id: &str, warnings: &mut Vec<String>) -> Mode {
    match mtls.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") | Some("") => Mode::Unset,
        Some("STRICT") => Mode::Strict,
        Some("PERMISSIVE") | Some("DISABLE") => Mode::Permissive,
        Some(other) => {
            warnings.push(format!(
                "{id}: unknown mTLS mode {other:?}; treated as UNSET"
            ));
            Mode::Unset
        }
    }
}

/// Ordering of policies competing at one level: oldest first, then by name.
fn older_first(a: &PeerAuthentication, b: &PeerAuthentication) -> std::cmp::Ordering {
    let key = |p: &PeerAuthentication| {
        (
            p.metadata.creation_timestamp.clone(),
            common::name(&p.metadata).to_owned(),
        )
    };
    // A missing timestamp sorts after any real one.
    let (ta, na) = key(a);
    let (tb, nb) = key(b);
    match (ta, tb) {
        (Some(x), Some(y)) => x.cmp(&y).then(na.cmp(&nb)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => na.cmp(&nb),
    }
}

/// One workload-level policy, resolved.
struct WorkloadLevel<'a> {
    policy: &'a PeerAuthentication,
    key: String,
    converted: Option<Authorization>,
}

/// The PeerAuthentications of a snapshot, resolved: converted policies and, per workload,
/// which converted policy (if any) applies.
pub struct PeerAuthnIndex<'a> {
    /// Mesh-level: its key when it converts to a policy, and its mode.
    mesh: Option<(Option<String>, Mode)>,
    /// Namespace-level, by namespace: its own mode (not inherited) and its key when STRICT.
    namespaces: BTreeMap<String, (Mode, Option<String>)>,
    /// Workload-level candidates by namespace, oldest first.
    workloads: BTreeMap<String, Vec<WorkloadLevel<'a>>>,
    /// Converted policies by key.
    policies: BTreeMap<String, Authorization>,
}

impl<'a> PeerAuthnIndex<'a> {
    /// Resolves every PeerAuthentication of `snapshot`.
    pub fn build(snapshot: &'a Snapshot, root_namespace: &str, warnings: &mut Vec<String>) -> Self {
        let mut mesh_level: Vec<&PeerAuthentication> = Vec::new();
        let mut ns_level: BTreeMap<String, Vec<&PeerAuthentication>> = BTreeMap::new();
        let mut wl_level: BTreeMap<String, Vec<&PeerAuthentication>> = BTreeMap::new();
        for pa in snapshot.peer_authentications.values() {
            let ns = common::namespace(&pa.metadata);
            let id = format!("PeerAuthentication {ns}/{}", common::name(&pa.metadata));
            if common::name(&pa.metadata).is_empty() {
                warnings.push(format!("{id}: no name; skipped"));
                continue;
            }
            let has_selector = pa
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty());
            if !has_selector && !pa.spec.port_level_mtls.is_empty() {
                warnings.push(format!(
                    "{id}: portLevelMtls needs a workload selector; port overrides ignored"
                ));
            }
            match (has_selector, ns == root_namespace) {
                (false, true) => mesh_level.push(pa),
                (false, false) => ns_level.entry(ns.to_owned()).or_default().push(pa),
                (true, true) => warnings.push(format!(
                    "{id}: a selector in the root namespace is not supported; ignored"
                )),
                (true, false) => wl_level.entry(ns.to_owned()).or_default().push(pa),
            }
        }

        let mut policies = BTreeMap::new();
        let mut winner = |candidates: &mut Vec<&'a PeerAuthentication>, level: &str| {
            candidates.sort_by(|a, b| older_first(a, b));
            let first = candidates.first().copied();
            if let Some(w) = first {
                for loser in candidates.iter().skip(1) {
                    warnings.push(format!(
                        "PeerAuthentication {}/{}: another {level}-level policy ({}) is older \
                         and wins; ignored",
                        common::namespace(&loser.metadata),
                        common::name(&loser.metadata),
                        common::name(&w.metadata),
                    ));
                }
            }
            first
        };

        let mesh_winner = winner(&mut mesh_level, "mesh");
        let mut ns_winners = BTreeMap::new();
        for (ns, mut list) in ns_level {
            if let Some(w) = winner(&mut list, "namespace") {
                ns_winners.insert(ns, w);
            }
        }

        let mut index = PeerAuthnIndex {
            mesh: None,
            namespaces: BTreeMap::new(),
            workloads: BTreeMap::new(),
            policies: BTreeMap::new(),
        };
        if let Some(pa) = mesh_winner {
            let m = mode(pa.spec.mtls.as_ref(), &id(pa), warnings);
            let key = (m == Mode::Strict).then(|| strict_policy(pa, &[], &mut policies));
            index.mesh = Some((key, m));
        }
        let mesh_mode = index.mesh.as_ref().map_or(Mode::Unset, |(_, m)| *m);
        for (ns, pa) in ns_winners {
            let own = mode(pa.spec.mtls.as_ref(), &id(pa), warnings);
            // UNSET inherits: its workloads reference the mesh policy, so no copy here.
            let key = (own == Mode::Strict).then(|| strict_policy(pa, &[], &mut policies));
            index.namespaces.insert(ns, (own, key));
        }
        for (ns, mut list) in wl_level {
            list.sort_by(|a, b| older_first(a, b));
            let outer = index
                .namespaces
                .get(&ns)
                .map_or(mesh_mode, |(own, _)| inherit(*own, mesh_mode));
            let resolved = list
                .into_iter()
                .map(|pa| {
                    let key = key(pa);
                    let converted = convert_workload_level(pa, outer, warnings);
                    WorkloadLevel {
                        policy: pa,
                        key,
                        converted,
                    }
                })
                .collect();
            index.workloads.insert(ns, resolved);
        }
        for list in index.workloads.values() {
            for wl in list {
                if let Some(p) = &wl.converted {
                    policies.insert(wl.key.clone(), p.clone());
                }
            }
        }
        index.policies = policies;
        index
    }

    /// Converted policies by `namespace/name`.
    pub fn policies(&self) -> &BTreeMap<String, Authorization> {
        &self.policies
    }

    /// The converted policy keys that apply to a workload (zero or one).
    pub fn keys_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        warnings: &mut Vec<String>,
        workload: &str,
    ) -> Vec<String> {
        let mut matching = self
            .workloads
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|wl| {
                wl.policy
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| common::selects(&s.match_labels, labels))
            });
        if let Some(wl) = matching.next() {
            for other in matching {
                warnings.push(format!(
                    "{workload}: both {} and {} select it; the older (the first) wins",
                    id(wl.policy),
                    id(other.policy)
                ));
            }
            return wl
                .converted
                .as_ref()
                .map(|_| wl.key.clone())
                .into_iter()
                .collect();
        }
        match self.namespaces.get(namespace) {
            Some((Mode::Strict, key)) => return key.iter().cloned().collect(),
            Some((Mode::Permissive, _)) => return Vec::new(),
            // No namespace policy, or an UNSET one: the mesh policy decides.
            Some((Mode::Unset, _)) | None => {}
        }
        self.mesh
            .as_ref()
            .and_then(|(key, _)| key.clone())
            .into_iter()
            .collect()
    }
}

fn inherit(own: Mode, outer: Mode) -> Mode {
    if own == Mode::Unset { outer } else { own }
}

fn id(pa: &PeerAuthentication) -> String {
    format!(
        "PeerAuthentication {}/{}",
        common::namespace(&pa.metadata),
        common::name(&pa.metadata)
    )
}

fn key(pa: &PeerAuthentication) -> String {
    format!(
        "{}/{CONVERTED_PREFIX}{}",
        common::namespace(&pa.metadata),
        common::name(&pa.metadata)
    )
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}

fn no_identity_clause() -> Clause {
    Clause {
        matches: vec![Match {
            not_principals: vec![presence()],
            ..Match::default()
        }],
    }
}

fn deny_policy(pa: &PeerAuthentication, clauses: Vec<Clause>) -> Authorization {
    Authorization {
        name: format!("{CONVERTED_PREFIX}{}", common::name(&pa.metadata)),
        namespace: common::namespace(&pa.metadata).to_owned(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules: vec![Rule { clauses }],
        dry_run: false,
        extensions: Vec::new(),
    }
}

/// Records a plain STRICT policy (with `exempt` ports allowed in plaintext) and returns its key.
fn strict_policy(
    pa: &PeerAuthentication,
    exempt: &[u32],
    policies: &mut BTreeMap<String, Authorization>,
) -> String {
    let policy = strict(pa, exempt);
    let key = key(pa);
    policies.insert(key.clone(), policy);
    key
}

fn strict(pa: &PeerAuthentication, exempt: &[u32]) -> Authorization {
    let mut clauses = vec![no_identity_clause()];
    if !exempt.is_empty() {
        clauses.push(Clause {
            matches: vec![Match {
                not_destination_ports: exempt.to_vec(),
                ..Match::default()
            }],
        });
    }
    deny_policy(pa, clauses)
}

/// A workload-level policy under `outer` (the namespace's or mesh's effective mode).
fn convert_workload_level(
    pa: &PeerAuthentication,
    outer: Mode,
    warnings: &mut Vec<String>,
) -> Option<Authorization> {
    let id = id(pa);
    let default = match inherit(mode(pa.spec.mtls.as_ref(), &id, warnings), outer) {
        Mode::Strict => Mode::Strict,
        _ => Mode::Permissive,
    };
    let mut strict_ports = Vec::new();
    let mut plaintext_ports = Vec::new();
    for (port, mtls) in &pa.spec.port_level_mtls {
        if *port == 0 || *port > 65535 {
            warnings.push(format!(
                "{id}: portLevelMtls port {port} is invalid; ignored"
            ));
            continue;
        }
        match inherit(mode(Some(mtls), &id, warnings), default) {
            Mode::Strict => strict_ports.push(*port),
            _ => plaintext_ports.push(*port),
        }
    }
    match default {
        Mode::Strict => Some(strict(pa, &plaintext_ports)),
        _ if strict_ports.is_empty() => None,
        _ => Some(deny_policy(
            pa,
            vec![
                no_identity_clause(),
                Clause {
                    matches: vec![Match {
                        destination_ports: strict_ports,
                        ..Match::default()
                    }],
                },
            ],
        )),
    }
}
