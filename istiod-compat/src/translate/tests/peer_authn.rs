//! PeerAuthentication → converted DENY policies.

use test_case::test_case;
use xds_proto::security::{Action, Clause, Match, Rule, Scope};

use super::eval::{Conn, allowed, applicable};
use super::*;

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}\n"
    )
}

fn mode(m: &str) -> String {
    format!("  mtls: {{mode: {m}}}")
}

fn workload_level(m: &str, ports: &str) -> String {
    format!(
        "  selector:\n    matchLabels: {{app: server}}\n  mtls: {{mode: {m}}}\n  portLevelMtls: {{{ports}}}"
    )
}

const MESH: &str = "istio-system/converted_peer_authentication_mesh";
const NS: &str = "backend/converted_peer_authentication_ns";
const WL: &str = "backend/converted_peer_authentication_wl";

/// Decisions for (mTLS :8080, plaintext :8080, plaintext :9090) to backend/server.
#[test_case(vec![], &[], [true, true, true]; "no policy is permissive")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT"))], &[MESH], [true, false, false]; "mesh strict")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT")), pa("backend", "ns", &mode("PERMISSIVE"))], &[], [true, true, true]; "namespace permissive overrides mesh")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT")), pa("backend", "ns", &mode("DISABLE"))], &[], [true, true, true]; "disable is permissive at l4")]
#[test_case(vec![pa("istio-system", "mesh", &mode("PERMISSIVE")), pa("backend", "ns", &mode("STRICT"))], &[NS], [true, false, false]; "namespace strict")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT")), pa("backend", "ns", &mode("UNSET"))], &[MESH], [true, false, false]; "unset namespace inherits mesh")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT")), pa("frontend", "ns", &mode("PERMISSIVE"))], &[MESH], [true, false, false]; "other namespace policies do not apply")]
#[test_case(vec![pa("backend", "ns", &mode("STRICT")), pa("backend", "wl", &workload_level("PERMISSIVE", ""))], &[], [true, true, true]; "workload permissive overrides namespace")]
#[test_case(vec![pa("backend", "ns", &mode("PERMISSIVE")), pa("backend", "wl", &workload_level("STRICT", ""))], &[WL], [true, false, false]; "workload strict")]
#[test_case(vec![pa("backend", "ns", &mode("STRICT")), pa("backend", "wl", &workload_level("UNSET", "9090: {mode: PERMISSIVE}"))], &[WL], [true, false, true]; "inherited strict with a permissive port")]
#[test_case(vec![pa("istio-system", "mesh", &mode("STRICT")), pa("backend", "wl", &workload_level("UNSET", "9090: {mode: DISABLE}"))], &[WL], [true, false, true]; "mesh strict with a disabled port")]
#[test_case(vec![pa("backend", "wl", &workload_level("PERMISSIVE", "8080: {mode: STRICT}"))], &[WL], [true, false, true]; "permissive with a strict port")]
#[test_case(vec![pa("backend", "ns", &mode("STRICT")), pa("backend", "wl", &workload_level("UNSET", "8080: {mode: PERMISSIVE}, 9090: {mode: STRICT}"))], &[WL], [true, true, false]; "strict port next to a permissive one")]
#[test_case(vec![pa("backend", "wl", &workload_level("STRICT", "8080: {mode: STRICT}"))], &[WL], [true, false, false]; "only strict ports")]
#[test_case(vec![pa("backend", "wl", &workload_level("PERMISSIVE", "8080: {mode: UNSET}"))], &[], [true, true, true]; "unset port inherits permissive")]
#[test_case(vec![pa("backend", "ns", &mode("STRICT")), pa("backend", "wl", "  selector:\n    matchLabels: {app: other}\n  mtls: {mode: PERMISSIVE}")], &[NS], [true, false, false]; "unselected workload policy")]
fn modes(policies: Vec<String>, keys: &[&str], want: [bool; 3]) {
    let mut docs = vec![ambient_pod("backend", "server", "10.0.2.2", "app: server")];
    docs.extend(policies);
    let x = run(&docs.join("---\n"));
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    assert_eq!(server.authorization_policies, keys);
    let conns = [
        Conn::mtls("frontend", "client", 8080),
        Conn::plaintext(8080),
        Conn::plaintext(9090),
    ];
    let policies = applicable(&x, server);
    assert_eq!(conns.map(|c| allowed(&policies, &c)), want);
    for key in keys {
        let p = authz(&x, key);
        assert_eq!(p.scope, Scope::WorkloadSelector as i32);
        assert_eq!(p.action, Action::Deny as i32);
        assert!(p.name.starts_with("converted_peer_authentication_"));
    }
    assert_warns(&x, &[]);
}

fn no_identity() -> Clause {
    Clause {
        matches: vec![Match {
            not_principals: vec![presence()],
            ..m()
        }],
    }
}

#[test_case(&mode("STRICT"), vec![no_identity()]; "strict")]
#[test_case(&workload_level("STRICT", "9090: {mode: PERMISSIVE}, 9091: {mode: DISABLE}, 8080: {mode: STRICT}"),
    vec![no_identity(), Clause { matches: vec![Match { not_destination_ports: vec![9090, 9091], ..m() }] }];
    "strict with exemptions")]
#[test_case(&workload_level("PERMISSIVE", "8080: {mode: STRICT}, 8443: {mode: STRICT}"),
    vec![no_identity(), Clause { matches: vec![Match { destination_ports: vec![8080, 8443], ..m() }] }];
    "permissive with strict ports")]
fn converted_shape(spec: &str, clauses: Vec<Clause>) {
    let x = run(&pa("backend", "wl", spec));
    let p = authz(&x, WL);
    assert_eq!(p.name, "converted_peer_authentication_wl");
    assert_eq!(p.namespace, "backend");
    assert_eq!(p.rules, vec![Rule { clauses }]);
    assert!(!p.dry_run);
}

#[test_case(vec![mode("PERMISSIVE"), mode("UNSET"), mode("DISABLE")]; "non strict modes")]
fn nothing_sent_when_nothing_is_denied(specs: Vec<String>) {
    for spec in specs {
        let x = run(&pa("backend", "ns", &spec));
        assert!(
            x.authorizations.is_empty(),
            "{spec}: {:?}",
            x.authorizations
        );
    }
}

#[test]
fn oldest_namespace_policy_wins() {
    let with_time = |name: &str, time: &str, m: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: backend\n  creationTimestamp: \"{time}\"\nspec:\n  mtls: {{mode: {m}}}\n"
        )
    };
    let yaml = [
        ambient_pod("backend", "server", "10.0.2.2", "app: server"),
        with_time("a-new", "2025-02-01T00:00:00Z", "PERMISSIVE"),
        with_time("z-old", "2025-01-01T00:00:00Z", "STRICT"),
    ]
    .join("---\n");
    let x = run(&yaml);
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    assert_eq!(
        server.authorization_policies,
        ["backend/converted_peer_authentication_z-old"]
    );
    assert_warns(
        &x,
        &["PeerAuthentication backend/a-new: another namespace-level policy (z-old) is older"],
    );
}

#[test_case(pa("istio-system", "root-sel", "  selector:\n    matchLabels: {app: server}\n  mtls: {mode: STRICT}"), "a selector in the root namespace is not supported"; "root selector")]
#[test_case(pa("backend", "ns", "  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}"), "portLevelMtls needs a workload selector"; "port level without selector")]
#[test_case(pa("backend", "ns", &mode("SOMETIMES")), "unknown mTLS mode \"SOMETIMES\""; "unknown mode")]
#[test_case(pa("backend", "wl", &workload_level("STRICT", "0: {mode: PERMISSIVE}")), "portLevelMtls port 0 is invalid"; "bad port")]
fn warnings(doc: String, warning: &str) {
    let x = run(&doc);
    assert_warns(&x, &[warning]);
}

#[test]
fn two_workload_policies_selecting_one_pod() {
    let yaml = [
        ambient_pod("backend", "server", "10.0.2.2", "app: server, v: one"),
        pa("backend", "wl", &workload_level("STRICT", "")),
        pa(
            "backend",
            "wl2",
            "  selector:\n    matchLabels: {v: one}\n  mtls: {mode: PERMISSIVE}",
        ),
    ]
    .join("---\n");
    let x = run(&yaml);
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    // No timestamps: name order decides.
    assert_eq!(server.authorization_policies, [WL]);
    assert_warns(
        &x,
        &["both PeerAuthentication backend/wl and PeerAuthentication backend/wl2 select it"],
    );
}
