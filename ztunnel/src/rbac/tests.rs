//! Reference §13, one case per rule and per quirk.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use mesh_core::Identity;
use test_case::test_case;

use super::{Denied, RbacConnection};
use crate::state::{
    Authorization, PolicyAction, PolicyMatch, PolicyRule, PolicyScope, ProxyState,
    ServiceAccountMatch, StringMatch, Workload,
};

const SRC: &str = "10.0.0.1:40000";
const DST: &str = "10.0.1.2:8080";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn mtls(namespace: &str, sa: &str) -> RbacConnection {
    RbacConnection {
        src: addr(SRC),
        src_identity: Some(Identity::new("cluster.local", namespace, sa)),
        dst: addr(DST),
        dst_network: String::new(),
    }
}

fn plaintext() -> RbacConnection {
    RbacConnection {
        src: addr(SRC),
        src_identity: None,
        dst: addr(DST),
        dst_network: String::new(),
    }
}

fn to_port(mut conn: RbacConnection, port: u16) -> RbacConnection {
    conn.dst.set_port(port);
    conn
}

fn from(mut conn: RbacConnection, src: &str) -> RbacConnection {
    conn.src = addr(src);
    conn
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn sa(namespace: &str, service_account: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: namespace.into(),
        service_account: service_account.into(),
    }
}

fn ns_is(ns: &str) -> PolicyMatch {
    PolicyMatch {
        namespaces: vec![exact(ns)],
        ..Default::default()
    }
}

fn port_is(port: u16) -> PolicyMatch {
    PolicyMatch {
        destination_ports: vec![port],
        ..Default::default()
    }
}

/// One rule, one clause, one match.
fn single(m: PolicyMatch) -> Vec<PolicyRule> {
    vec![vec![vec![m]]]
}

fn policy(
    name: &str,
    scope: PolicyScope,
    action: PolicyAction,
    rules: Vec<PolicyRule>,
) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: match scope {
            PolicyScope::Global => "istio-system".into(),
            _ => "app".into(),
        },
        scope,
        action,
        rules,
        dry_run: false,
    }
}

fn matches(rules: Vec<PolicyRule>, conn: &RbacConnection) -> bool {
    policy("p", PolicyScope::Namespace, PolicyAction::Allow, rules).matches(conn)
}

// === Structure: rules OR'd, clauses AND'd, matches OR'd ===

#[test_case(vec![], mtls("a", "b"), false ; "zero rules match nothing")]
#[test_case(vec![vec![]], mtls("a", "b"), true ; "a rule without clauses matches everything")]
#[test_case(vec![vec![vec![]]], plaintext(), true ; "an empty clause is true")]
#[test_case(vec![vec![vec![], vec![ns_is("x")]]], mtls("a", "b"), false ; "an empty clause does not rescue a failing one")]
#[test_case(vec![vec![vec![ns_is("x")]], vec![vec![ns_is("a")]]], mtls("a", "b"), true ; "rules are ORed")]
#[test_case(vec![vec![vec![ns_is("a")], vec![port_is(8080)]]], mtls("a", "b"), true ; "clauses are ANDed all hold")]
#[test_case(vec![vec![vec![ns_is("a")], vec![port_is(9090)]]], mtls("a", "b"), false ; "clauses are ANDed one fails")]
#[test_case(vec![vec![vec![ns_is("x"), ns_is("a")]]], mtls("a", "b"), true ; "matches are ORed")]
#[test_case(single(PolicyMatch::default()), mtls("a", "b"), false ; "an entirely empty match never matches")]
#[test_case(vec![vec![vec![PolicyMatch::default(), port_is(8080)]]], plaintext(), true ; "an empty match is skipped among others")]
#[test_case(single(PolicyMatch { namespaces: vec![exact("a")], destination_ports: vec![9090], ..Default::default() }), mtls("a", "b"), false ; "every field kind in a match must hold")]
#[test_case(single(PolicyMatch { destination_ports: vec![8080], not_destination_ports: vec![8080], ..Default::default() }), plaintext(), false ; "negative list overrides positive list")]
fn structure(rules: Vec<PolicyRule>, conn: RbacConnection, want: bool) {
    assert_eq!(matches(rules, &conn), want);
}

// === Per-field matchers ===

#[test_case(PolicyMatch { principals: vec![exact("cluster.local/ns/a/sa/b")], ..Default::default() }, mtls("a", "b"), true ; "principal exact without spiffe prefix")]
#[test_case(PolicyMatch { principals: vec![exact("spiffe://cluster.local/ns/a/sa/b")], ..Default::default() }, mtls("a", "b"), false ; "principal with spiffe prefix never matches")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Prefix("cluster.local/ns/a/".into())], ..Default::default() }, mtls("a", "b"), true ; "principal prefix")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Suffix("/sa/b".into())], ..Default::default() }, mtls("a", "b"), true ; "principal suffix")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Suffix("/sa/c".into())], ..Default::default() }, mtls("a", "b"), false ; "principal suffix mismatch")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Presence], ..Default::default() }, mtls("a", "b"), true ; "principal presence with mtls")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Presence], ..Default::default() }, plaintext(), false ; "principal presence fails without identity")]
#[test_case(PolicyMatch { principals: vec![exact("")], ..Default::default() }, plaintext(), false ; "no identity fails even an empty exact match")]
#[test_case(PolicyMatch { principals: vec![StringMatch::Prefix(String::new())], ..Default::default() }, plaintext(), false ; "no identity fails an empty prefix")]
#[test_case(PolicyMatch { not_principals: vec![StringMatch::Presence], ..Default::default() }, plaintext(), true ; "not principals presence matches plaintext")]
#[test_case(PolicyMatch { not_principals: vec![StringMatch::Presence], ..Default::default() }, mtls("a", "b"), false ; "not principals presence skips mtls")]
#[test_case(PolicyMatch { namespaces: vec![exact("a")], ..Default::default() }, mtls("a", "b"), true ; "namespace from identity")]
#[test_case(PolicyMatch { namespaces: vec![exact("a")], ..Default::default() }, mtls("other", "b"), false ; "namespace mismatch")]
#[test_case(PolicyMatch { namespaces: vec![StringMatch::Presence], ..Default::default() }, plaintext(), false ; "namespace needs an identity not an ip")]
#[test_case(PolicyMatch { not_namespaces: vec![exact("a")], ..Default::default() }, mtls("a", "b"), false ; "not namespaces excludes")]
#[test_case(PolicyMatch { not_namespaces: vec![exact("a")], ..Default::default() }, mtls("c", "b"), true ; "not namespaces other namespace")]
#[test_case(PolicyMatch { not_namespaces: vec![exact("a")], ..Default::default() }, plaintext(), true ; "not namespaces plaintext")]
#[test_case(PolicyMatch { service_accounts: vec![sa("a", "b")], ..Default::default() }, mtls("a", "b"), true ; "service account exact")]
#[test_case(PolicyMatch { service_accounts: vec![sa("a", "c")], ..Default::default() }, mtls("a", "b"), false ; "service account other name")]
#[test_case(PolicyMatch { service_accounts: vec![sa("x", "b")], ..Default::default() }, mtls("a", "b"), false ; "service account other namespace")]
#[test_case(PolicyMatch { service_accounts: vec![sa("", "")], ..Default::default() }, plaintext(), false ; "service account needs an identity")]
#[test_case(PolicyMatch { not_service_accounts: vec![sa("a", "b")], ..Default::default() }, mtls("a", "b"), false ; "not service accounts excludes")]
#[test_case(PolicyMatch { not_service_accounts: vec![sa("a", "b")], ..Default::default() }, plaintext(), true ; "not service accounts plaintext")]
#[test_case(PolicyMatch { source_ips: vec![net("10.0.0.0/24")], ..Default::default() }, plaintext(), true ; "source cidr contains")]
#[test_case(PolicyMatch { source_ips: vec![net("10.0.0.2/32")], ..Default::default() }, plaintext(), false ; "source host cidr other ip")]
#[test_case(PolicyMatch { source_ips: vec![net("10.0.0.0/24")], ..Default::default() }, from(plaintext(), "[::ffff:10.0.0.7]:1"), true ; "v4 mapped source matches v4 cidr")]
#[test_case(PolicyMatch { source_ips: vec![net("fd00::/8")], ..Default::default() }, from(plaintext(), "[fd00::1]:1"), true ; "v6 source cidr")]
#[test_case(PolicyMatch { not_source_ips: vec![net("10.0.0.0/8")], ..Default::default() }, plaintext(), false ; "not source ips excludes")]
#[test_case(PolicyMatch { destination_ips: vec![net("10.0.1.0/24")], ..Default::default() }, plaintext(), true ; "destination cidr contains")]
#[test_case(PolicyMatch { destination_ips: vec![net("10.0.0.0/24")], ..Default::default() }, plaintext(), false ; "destination cidr other")]
#[test_case(PolicyMatch { not_destination_ips: vec![net("10.0.1.2/32")], ..Default::default() }, plaintext(), false ; "not destination ips excludes")]
#[test_case(PolicyMatch { destination_ports: vec![80, 8080], ..Default::default() }, plaintext(), true ; "destination port is the resolved target port")]
#[test_case(PolicyMatch { destination_ports: vec![80], ..Default::default() }, plaintext(), false ; "destination port is not the service port")]
#[test_case(PolicyMatch { not_destination_ports: vec![9999], ..Default::default() }, plaintext(), true ; "not destination ports other port")]
#[test_case(PolicyMatch { not_destination_ports: vec![9999], ..Default::default() }, to_port(plaintext(), 9999), false ; "not destination ports excludes")]
fn field(m: PolicyMatch, conn: RbacConnection, want: bool) {
    assert_eq!(matches(single(m), &conn), want);
}

// === Which policies apply and in which order (through ProxyState::assert_rbac) ===

fn strict() -> Authorization {
    policy(
        "converted_peer_authentication_strict",
        PolicyScope::WorkloadSelector,
        PolicyAction::Deny,
        single(PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        }),
    )
}

fn strict_but_permissive_on(port: u16) -> Authorization {
    let mut p = strict();
    p.rules = vec![vec![
        vec![PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        }],
        vec![PolicyMatch {
            not_destination_ports: vec![port],
            ..Default::default()
        }],
    ]];
    p
}

fn dry_run(mut p: Authorization) -> Authorization {
    p.dry_run = true;
    p
}

fn in_namespace(mut p: Authorization, namespace: &str) -> Authorization {
    p.namespace = namespace.into();
    p
}

fn allow_ns(ns: &str) -> Authorization {
    policy(
        "allow-ns",
        PolicyScope::Namespace,
        PolicyAction::Allow,
        single(ns_is(ns)),
    )
}

fn denied(name: &str, namespace: &str) -> Result<(), Denied> {
    Err(Denied::ExplicitlyDenied {
        namespace: namespace.into(),
        name: name.into(),
    })
}

const STRICT: &str = "app/converted_peer_authentication_strict";

#[test_case(vec![], &[], plaintext(), Ok(()) ; "no policies allow")]
#[test_case(vec![strict()], &[STRICT], plaintext(), denied("converted_peer_authentication_strict", "app") ; "strict denies plaintext")]
#[test_case(vec![strict()], &[STRICT], mtls("a", "b"), Ok(()) ; "strict allows mtls")]
#[test_case(vec![strict_but_permissive_on(8080)], &[STRICT], plaintext(), Ok(()) ; "port level permissive allows plaintext on that port")]
#[test_case(vec![strict_but_permissive_on(8080)], &[STRICT], to_port(plaintext(), 9090), denied("converted_peer_authentication_strict", "app") ; "port level permissive still strict elsewhere")]
#[test_case(vec![strict()], &[], plaintext(), Ok(()) ; "selector policy applies only when listed")]
#[test_case(vec![policy("none", PolicyScope::Namespace, PolicyAction::Allow, vec![])], &[], mtls("a", "b"), Err(Denied::NotAllowed) ; "empty allow blocks all")]
#[test_case(vec![policy("none", PolicyScope::Namespace, PolicyAction::Deny, vec![])], &[], plaintext(), Ok(()) ; "empty deny does nothing")]
#[test_case(vec![allow_ns("a")], &[], mtls("a", "b"), Ok(()) ; "matching allow allows")]
#[test_case(vec![allow_ns("a")], &[], mtls("c", "b"), Err(Denied::NotAllowed) ; "allow policies exist but none allowed")]
#[test_case(vec![allow_ns("x"), policy("allow-port", PolicyScope::Namespace, PolicyAction::Allow, single(port_is(8080)))], &[], plaintext(), Ok(()) ; "any allow match allows")]
#[test_case(vec![allow_ns("a"), policy("deny-a", PolicyScope::Namespace, PolicyAction::Deny, single(ns_is("a")))], &[], mtls("a", "b"), denied("deny-a", "app") ; "deny wins over allow")]
#[test_case(vec![dry_run(policy("deny-all", PolicyScope::Namespace, PolicyAction::Deny, vec![vec![]]))], &[], plaintext(), Ok(()) ; "dry run deny is never enforced")]
#[test_case(vec![dry_run(allow_ns("x"))], &[], mtls("a", "b"), Ok(()) ; "dry run allow does not count as an allow policy")]
#[test_case(vec![dry_run(allow_ns("a")), allow_ns("x")], &[], mtls("a", "b"), Err(Denied::NotAllowed) ; "dry run allow match does not allow")]
#[test_case(vec![in_namespace(policy("g", PolicyScope::Global, PolicyAction::Deny, vec![vec![]]), "")], &[], mtls("a", "b"), denied("g", "") ; "global policy applies everywhere")]
#[test_case(vec![policy("g", PolicyScope::Global, PolicyAction::Deny, vec![vec![]])], &[], mtls("a", "b"), denied("g", "istio-system") ; "global policy from root namespace applies")]
#[test_case(vec![in_namespace(allow_ns("x"), "other")], &[], mtls("a", "b"), Ok(()) ; "namespace policy of another namespace ignored")]
#[test_case(vec![in_namespace(policy("g", PolicyScope::Global, PolicyAction::Allow, single(ns_is("a"))), "istio-system"), allow_ns("x")], &[], mtls("a", "b"), Ok(()) ; "global and namespace allows combine")]
#[test_case(vec![allow_ns("x"), strict()], &[STRICT], mtls("x", "b"), Ok(()) ; "namespace allow and selector deny combine")]
#[test_case(vec![], &["app/does-not-exist"], plaintext(), Ok(()) ; "unknown selector keys are skipped")]
#[test_case(vec![strict()], &["app/does-not-exist", STRICT], plaintext(), denied("converted_peer_authentication_strict", "app") ; "unknown selector key does not hide known ones")]
fn assert_rbac(
    policies: Vec<Authorization>,
    selected: &[&str],
    conn: RbacConnection,
    want: Result<(), Denied>,
) {
    let workload = Workload {
        uid: "Kubernetes//v1/Pod/app/server".into(),
        name: "server".into(),
        namespace: "app".into(),
        workload_ips: vec![addr(DST).ip()],
        authorization_policies: selected.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let state = ProxyState::build(vec![workload.clone()], vec![], policies);
    assert_eq!(state.assert_rbac(&workload, &conn), want);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn dry_run_is_logged_with_name_and_result() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let workload = Workload {
        namespace: "app".into(),
        ..Default::default()
    };
    let state = ProxyState::build(
        vec![],
        vec![],
        vec![dry_run(policy(
            "would-deny",
            PolicyScope::Namespace,
            PolicyAction::Deny,
            vec![vec![]],
        ))],
    );
    let result = tracing::subscriber::with_default(subscriber, || {
        state.assert_rbac(&workload, &plaintext())
    });
    assert_eq!(result, Ok(()));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(text.contains("policy=app/would-deny"), "{text}");
    assert!(
        text.contains("result=\"deny\"") || text.contains("result=deny"),
        "{text}"
    );
}
