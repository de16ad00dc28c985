//! Generated inputs for the criterion benches: a state with many policies, a large local
//! config, and the records `ProxyState::build` takes. Deterministic: the same arguments
//! always give the same data, so runs compare.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mesh_core::{Identity, NamespacedHostname, NetworkAddress};
use ztunnel::rbac::RbacConnection;
use ztunnel::state::{
    Authorization, InboundProtocol, IpFamilies, PolicyAction, PolicyMatch, PolicyScope, ProxyState,
    Service, StringMatch, Workload,
};

/// Trust domain of every generated identity.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Namespace of the destination workload and of every generated policy.
pub const SERVER_NAMESPACE: &str = "backend";
/// Namespace of the generated client identities.
pub const CLIENT_NAMESPACE: &str = "frontend";
/// Destination port of the evaluated connection.
pub const APP_PORT: u16 = 8080;

/// Which of the generated policies the evaluated connection matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyCase {
    /// The first policy in evaluation order allows it.
    MatchEarly,
    /// Only the last policy in evaluation order allows it.
    MatchLate,
    /// No policy allows it: every one is evaluated, then the connection is denied.
    NoMatch,
}

impl PolicyCase {
    /// All cases, in report order.
    pub const ALL: [PolicyCase; 3] = [
        PolicyCase::MatchEarly,
        PolicyCase::MatchLate,
        PolicyCase::NoMatch,
    ];

    /// Bench id.
    pub fn name(self) -> &'static str {
        match self {
            PolicyCase::MatchEarly => "match_early",
            PolicyCase::MatchLate => "match_late",
            PolicyCase::NoMatch => "no_match",
        }
    }
}

/// The service account allowed by policy number `index`.
fn allowed_account(index: usize) -> String {
    format!("client-{index:05}")
}

/// The destination workload, `backend/server` on 10.0.2.2.
pub fn server_workload() -> Workload {
    Workload {
        uid: "Kubernetes//v1/Pod/backend/server".into(),
        name: "server".into(),
        namespace: SERVER_NAMESPACE.into(),
        service_account: "server".into(),
        workload_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))],
        protocol: InboundProtocol::Hbone,
        node: "node2".into(),
        ..Workload::default()
    }
}

/// `count` NAMESPACE-scoped ALLOW policies in [`SERVER_NAMESPACE`], named `allow-00000` …
/// so that their evaluation order (sorted keys) is their number. Policy `i` allows exactly
/// the principal `cluster.local/ns/frontend/sa/client-<i>` on port [`APP_PORT`].
pub fn allow_policies(count: usize) -> Vec<Authorization> {
    (0..count)
        .map(|i| Authorization {
            name: format!("allow-{i:05}"),
            namespace: SERVER_NAMESPACE.into(),
            scope: PolicyScope::Namespace,
            action: PolicyAction::Allow,
            rules: vec![vec![
                vec![PolicyMatch {
                    principals: vec![StringMatch::Exact(format!(
                        "{TRUST_DOMAIN}/ns/{CLIENT_NAMESPACE}/sa/{}",
                        allowed_account(i)
                    ))],
                    ..PolicyMatch::default()
                }],
                vec![PolicyMatch {
                    destination_ports: vec![APP_PORT],
                    ..PolicyMatch::default()
                }],
            ]],
            dry_run: false,
        })
        .collect()
}

/// A state holding [`server_workload`] and `count` [`allow_policies`].
pub fn policy_state(count: usize) -> ProxyState {
    ProxyState::build(vec![server_workload()], Vec::new(), allow_policies(count))
}

/// An mTLS connection to the server whose client identity hits `case` among `count`
/// policies.
pub fn policy_connection(case: PolicyCase, count: usize) -> RbacConnection {
    let account = match case {
        PolicyCase::MatchEarly => allowed_account(0),
        PolicyCase::MatchLate => allowed_account(count.saturating_sub(1)),
        PolicyCase::NoMatch => "intruder".to_owned(),
    };
    RbacConnection {
        src: SocketAddr::from(([10, 0, 1, 2], 40_000)),
        src_identity: Some(Identity::new(TRUST_DOMAIN, CLIENT_NAMESPACE, &account)),
        dst: SocketAddr::from(([10, 0, 2, 2], APP_PORT)),
        dst_network: String::new(),
    }
}

/// Pod IP of generated workload `index` (10.64.0.0/10, unique for up to 4M workloads).
fn workload_ip(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index).unwrap_or(u32::MAX) & 0x003f_ffff;
    Ipv4Addr::from(0x0a40_0000 | n)
}

/// VIP of generated service `index` (10.96.0.0/16).
fn service_vip(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index).unwrap_or(u32::MAX) & 0xffff;
    Ipv4Addr::from(0x0a60_0000 | n)
}

fn namespace_of(index: usize) -> String {
    format!("ns-{:02}", index % 50)
}

/// The service workload `index` backs (each service gets `workloads / services` backends).
fn backed_service(index: usize, services: usize) -> usize {
    index % services.max(1)
}

/// A local config YAML (Istio's `LOCAL_XDS_PATH` schema) with `workloads` HBONE workloads
/// spread over 50 namespaces and `services` services; every workload backs one service.
pub fn local_config_yaml(workloads: usize, services: usize) -> String {
    let mut out = String::with_capacity(workloads * 360 + services * 220 + 64);
    // Writing to a String cannot fail.
    out.push_str("workloads:\n");
    for i in 0..workloads {
        let ns = namespace_of(i);
        let svc = backed_service(i, services);
        let _ = write!(
            out,
            "  - uid: Kubernetes//v1/Pod/{ns}/pod-{i}\n    name: pod-{i}\n    namespace: {ns}\n    \
             serviceAccount: sa-{svc}\n    trustDomain: {TRUST_DOMAIN}\n    node: node-{node}\n    \
             workloadIps: [\"{ip}\"]\n    protocol: HBONE\n    canonicalName: app-{svc}\n    \
             canonicalRevision: v1\n    workloadName: app-{svc}\n    workloadType: deployment\n",
            node = i % 100,
            ip = workload_ip(i),
        );
        if services > 0 {
            let _ = write!(
                out,
                "    services:\n      \"{sns}/svc-{svc}.{sns}.svc.cluster.local\":\n        \"80\": 8080\n",
                sns = namespace_of(svc),
            );
        }
    }
    out.push_str("services:\n");
    for s in 0..services {
        let ns = namespace_of(s);
        let _ = write!(
            out,
            "  - name: svc-{s}\n    namespace: {ns}\n    hostname: svc-{s}.{ns}.svc.cluster.local\n    \
             vips: [\"/{vip}\"]\n    ports:\n      \"80\": 8080\n    \
             subjectAltNames: [\"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/sa-{s}\"]\n",
            vip = service_vip(s),
        );
    }
    out.push_str("policies: []\n");
    out
}

/// The records [`local_config_yaml`] describes, for `ProxyState::build` directly.
pub fn workloads_and_services(workloads: usize, services: usize) -> (Vec<Workload>, Vec<Service>) {
    let service_key = |s: usize| {
        let ns = namespace_of(s);
        NamespacedHostname {
            hostname: format!("svc-{s}.{ns}.svc.cluster.local"),
            namespace: ns,
        }
    };
    let workload_list = (0..workloads)
        .map(|i| {
            let ns = namespace_of(i);
            let svc = backed_service(i, services);
            let mut backs = HashMap::new();
            if services > 0 {
                backs.insert(service_key(svc), HashMap::from([(80, 8080)]));
            }
            Workload {
                uid: format!("Kubernetes//v1/Pod/{ns}/pod-{i}"),
                name: format!("pod-{i}"),
                namespace: ns,
                service_account: format!("sa-{svc}"),
                trust_domain: TRUST_DOMAIN.into(),
                node: format!("node-{}", i % 100),
                workload_ips: vec![IpAddr::V4(workload_ip(i))],
                protocol: InboundProtocol::Hbone,
                canonical_name: format!("app-{svc}"),
                canonical_revision: "v1".into(),
                workload_name: format!("app-{svc}"),
                workload_type: "deployment".into(),
                services: backs,
                ..Workload::default()
            }
        })
        .collect();
    let service_list = (0..services)
        .map(|s| {
            let key = service_key(s);
            Service {
                name: format!("svc-{s}"),
                subject_alt_names: vec![format!(
                    "spiffe://{TRUST_DOMAIN}/ns/{}/sa/sa-{s}",
                    key.namespace
                )],
                vips: vec![NetworkAddress {
                    network: String::new(),
                    address: IpAddr::V4(service_vip(s)),
                }],
                ports: HashMap::from([(80, 8080)]),
                namespace: key.namespace,
                hostname: key.hostname,
                waypoint: None,
                load_balancer: None,
                ip_families: IpFamilies::default(),
                endpoints: HashMap::new(),
            }
        })
        .collect();
    (workload_list, service_list)
}
