//! AuthorizationPolicy conversion.

use test_case::test_case;
use xds_proto::security::{
    Action, Address, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};

use super::eval::{Conn, allowed, applicable};
use super::*;

fn policy(ns: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: {ns}\n{extra_meta}spec:\n{spec}\n"
    )
}

fn clause(matches: Vec<Match>) -> Clause {
    Clause { matches }
}

fn rule(clauses: Vec<Clause>) -> Rule {
    Rule { clauses }
}

fn principals(v: Vec<StringMatch>) -> Match {
    Match {
        principals: v,
        ..m()
    }
}

fn ports(p: &[u32]) -> Match {
    Match {
        destination_ports: p.to_vec(),
        ..m()
    }
}

fn cidr(a: [u8; 4], length: u32) -> Address {
    Address {
        address: a.to_vec(),
        length,
    }
}

#[test_case("backend", "", "  action: ALLOW\n  rules: [{}]", Scope::Namespace, Action::Allow, false; "namespace allow")]
#[test_case("istio-system", "", "  rules: [{}]", Scope::Global, Action::Allow, false; "root namespace is global")]
#[test_case("backend", "", "  selector:\n    matchLabels: {app: server}\n  action: DENY", Scope::WorkloadSelector, Action::Deny, false; "selector deny")]
#[test_case("istio-system", "", "  selector:\n    matchLabels: {app: server}", Scope::WorkloadSelector, Action::Allow, false; "root selector")]
#[test_case("backend", "  annotations:\n    istio.io/dry-run: \"true\"\n", "  action: DENY", Scope::Namespace, Action::Deny, true; "dry run")]
#[test_case("backend", "  annotations:\n    istio.io/dry-run: \"false\"\n", "  action: DENY", Scope::Namespace, Action::Deny, false; "dry run false")]
fn scope_action_dry_run(
    ns: &str,
    meta: &str,
    spec: &str,
    scope: Scope,
    action: Action,
    dry_run: bool,
) {
    let x = run(&policy(ns, meta, spec));
    let p = authz(&x, &format!("{ns}/p"));
    assert_eq!((p.name.as_str(), p.namespace.as_str()), ("p", ns));
    assert_eq!(p.scope, scope as i32);
    assert_eq!(p.action, action as i32);
    assert_eq!(p.dry_run, dry_run);
    assert_warns(&x, &[]);
}

#[test_case("  action: AUDIT\n  rules: [{}]", "action AUDIT is not enforced by node proxies"; "audit")]
#[test_case("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]", "action CUSTOM is not enforced by node proxies"; "custom")]
#[test_case("  action: MAYBE", "unknown action \"MAYBE\""; "unknown action")]
#[test_case("  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n  rules: [{}]", "targets Gateway waypoint"; "target refs")]
#[test_case("  targetRef: {kind: Service, name: server}", "targets Service server"; "target ref")]
fn not_for_node_proxies(spec: &str, warning: &str) {
    let x = run(&policy("backend", "", spec));
    assert!(x.authorizations.is_empty(), "{:?}", x.authorizations);
    assert_warns(&x, &[warning]);
}

#[test_case("  rules: [{}]", vec![rule(vec![])]; "empty rule matches all")]
#[test_case("  action: ALLOW", vec![]; "absent rules")]
#[test_case("  rules: []", vec![]; "no rules")]
#[test_case("  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/a/sa/b, '*', cluster.local/ns/x/*, '*/sa/admin']",
    vec![rule(vec![clause(vec![principals(vec![exact("cluster.local/ns/a/sa/b"), presence(), prefix("cluster.local/ns/x/"), suffix("/sa/admin")])])])];
    "principal patterns")]
#[test_case("  rules:\n  - from:\n    - source: {principals: [a]}\n    - source: {namespaces: [b]}",
    vec![rule(vec![clause(vec![principals(vec![exact("a")]), Match { namespaces: vec![exact("b")], ..m() }])])];
    "sources are one clause of OR'd matches")]
#[test_case("  rules:\n  - from:\n    - source: {principals: [a], notNamespaces: [x], ipBlocks: [10.0.0.0/8, 10.1.2.3], notIpBlocks: [10.9.0.0/16]}",
    vec![rule(vec![clause(vec![Match {
        principals: vec![exact("a")],
        not_namespaces: vec![exact("x")],
        source_ips: vec![cidr([10, 0, 0, 0], 8), cidr([10, 1, 2, 3], 32)],
        not_source_ips: vec![cidr([10, 9, 0, 0], 16)],
        ..m()
    }])])];
    "one source is one match with every field")]
#[test_case("  rules:\n  - from:\n    - source: {serviceAccounts: [frontend/client], notServiceAccounts: [frontend/bad], notPrincipals: ['*']}",
    vec![rule(vec![clause(vec![Match {
        service_accounts: vec![ServiceAccountMatch { namespace: "frontend".into(), service_account: "client".into() }],
        not_service_accounts: vec![ServiceAccountMatch { namespace: "frontend".into(), service_account: "bad".into() }],
        not_principals: vec![presence()],
        ..m()
    }])])];
    "service accounts")]
#[test_case("  rules:\n  - to:\n    - operation: {ports: ['8080', '9090']}\n    - operation: {notPorts: ['22']}",
    vec![rule(vec![clause(vec![ports(&[8080, 9090]), Match { not_destination_ports: vec![22], ..m() }])])];
    "operations are one clause")]
#[test_case("  rules:\n  - from:\n    - source: {principals: [a]}\n    to:\n    - operation: {ports: ['80']}\n    when:\n    - {key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}\n    - {key: destination.port, values: ['80']}",
    vec![rule(vec![
        clause(vec![principals(vec![exact("a")])]),
        clause(vec![ports(&[80])]),
        clause(vec![Match { source_ips: vec![cidr([10, 0, 0, 0], 8)], not_source_ips: vec![cidr([10, 0, 0, 1], 32)], ..m() }]),
        clause(vec![ports(&[80])]),
    ])];
    "from to and each when condition are AND'd clauses")]
#[test_case("  rules:\n  - when:\n    - {key: source.namespace, values: [frontend], notValues: ['kube-*']}\n    - {key: source.principal, notValues: ['*']}\n    - {key: destination.ip, values: [10.0.2.2]}\n    - {key: destination.port, notValues: ['15008']}",
    vec![rule(vec![
        clause(vec![Match { namespaces: vec![exact("frontend")], not_namespaces: vec![prefix("kube-")], ..m() }]),
        clause(vec![Match { not_principals: vec![presence()], ..m() }]),
        clause(vec![Match { destination_ips: vec![cidr([10, 0, 2, 2], 32)], ..m() }]),
        clause(vec![Match { not_destination_ports: vec![15008], ..m() }]),
    ])];
    "every l4 when key")]
#[test_case("  rules:\n  - from:\n    - source: {}\n    - source: {principals: [a]}\n    to:\n    - operation: {ports: ['80']}",
    vec![rule(vec![clause(vec![ports(&[80])])])];
    "an unconstrained source makes the from clause always true")]
#[test_case("  rules:\n  - {}\n  - to:\n    - operation: {ports: ['80']}",
    vec![rule(vec![]), rule(vec![clause(vec![ports(&[80])])])];
    "rules are kept in order")]
fn rules(spec: &str, want: Vec<Rule>) {
    let x = run(&policy("backend", "", spec));
    assert_eq!(authz(&x, "backend/p").rules, want);
    assert_warns(&x, &[]);
}

const L7_NOTE: &str = "this ALLOW rule is dropped (it never matches)";
const DENY_NOTE: &str = "this DENY rule matches more traffic";

#[test_case("ALLOW", "  - to:\n    - operation: {methods: [GET]}", vec![], &["to.operation.methods is L7", L7_NOTE]; "allow methods")]
#[test_case("ALLOW", "  - to:\n    - operation: {ports: ['80'], paths: [/x], notHosts: [h]}", vec![], &["to.operation.paths is L7", "to.operation.notHosts is L7"]; "allow paths and hosts")]
#[test_case("ALLOW", "  - from:\n    - source: {requestPrincipals: ['*']}", vec![], &["from.source.requestPrincipals is L7", L7_NOTE]; "allow request principals")]
#[test_case("ALLOW", "  - from:\n    - source: {remoteIpBlocks: [1.2.3.4]}", vec![], &["from.source.remoteIpBlocks is L7"]; "allow remote ip blocks")]
#[test_case("ALLOW", "  - when:\n    - {key: \"request.headers[x-user]\", values: [me]}", vec![], &["when key \"request.headers[x-user]\" is not L4", L7_NOTE]; "allow l7 when")]
#[test_case("ALLOW", "  - when:\n    - {key: source.ip}", vec![], &["has no values", L7_NOTE]; "allow when without values")]
#[test_case("ALLOW", "  - from:\n    - source: {ipBlocks: [10.0.0.0/8, bogus]}", vec![], &["from.source.ipBlocks: invalid value(s) [\"bogus\"]", L7_NOTE]; "allow invalid cidr")]
#[test_case("ALLOW", "  - to:\n    - operation: {ports: ['http']}", vec![], &["to.operation.ports: invalid value(s) [\"http\"]"]; "allow invalid port")]
#[test_case("ALLOW", "  - from:\n    - source: {serviceAccounts: [client]}", vec![], &["serviceAccounts: invalid value(s) [\"client\"]"]; "allow service account without namespace")]
#[test_case("ALLOW", "  - to:\n    - operation: {methods: [GET]}\n  - to:\n    - operation: {ports: ['80']}", vec![rule(vec![clause(vec![ports(&[80])])])], &["rule 0:"]; "only the l7 allow rule goes")]
#[test_case("DENY", "  - to:\n    - operation: {methods: [GET], ports: ['80']}", vec![rule(vec![clause(vec![ports(&[80])])])], &["to.operation.methods is L7", DENY_NOTE]; "deny keeps the l4 part")]
#[test_case("DENY", "  - to:\n    - operation: {methods: [GET]}", vec![rule(vec![])], &[DENY_NOTE]; "deny with only l7 denies everything")]
#[test_case("DENY", "  - from:\n    - source: {principals: [a], requestPrincipals: [b]}", vec![rule(vec![clause(vec![principals(vec![exact("a")])])])], &["requestPrincipals is L7"]; "deny keeps the principals")]
#[test_case("DENY", "  - when:\n    - {key: \"request.auth.claims[iss]\", values: [x]}\n    - {key: source.namespace, values: [legacy]}", vec![rule(vec![clause(vec![Match { namespaces: vec![exact("legacy")], ..m() }])])], &["is not L4", DENY_NOTE]; "deny drops the l7 condition")]
#[test_case("DENY", "  - from:\n    - source: {ipBlocks: [bogus]}", vec![rule(vec![])], &["invalid value(s)"]; "deny with a bad positive list widens")]
#[test_case("DENY", "  - from:\n    - source: {notIpBlocks: [bogus, 10.0.0.0/8]}", vec![rule(vec![clause(vec![Match { not_source_ips: vec![cidr([10, 0, 0, 0], 8)], ..m() }])])], &["invalid value(s)"]; "deny with a bad negative entry excludes less")]
fn unenforceable(action: &str, rules_yaml: &str, want: Vec<Rule>, warnings: &[&str]) {
    let x = run(&policy(
        "backend",
        "",
        &format!("  action: {action}\n  rules:\n{rules_yaml}"),
    ));
    assert_eq!(authz(&x, "backend/p").rules, want);
    assert_warns(&x, warnings);
}

const SERVER: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: backend\n  labels: {istio.io/dataplane-mode: ambient}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata:\n  name: server\n  namespace: backend\n  labels: {app: server}\nspec:\n  nodeName: node2\n  serviceAccountName: server\nstatus:\n  podIP: 10.0.2.2\n";

/// What the server's proxy decides for (client mTLS :8080, client mTLS :9090, plaintext :8080).
#[test_case("  rules:\n  - to:\n    - operation: {methods: [GET]}", [false, false, false]; "l7 allow denies all")]
#[test_case("  action: DENY\n  rules:\n  - to:\n    - operation: {methods: [GET], ports: ['8080']}", [false, true, false]; "l7 deny denies the whole port")]
#[test_case("  action: ALLOW", [false, false, false]; "allow without rules denies all")]
#[test_case("  rules: [{}]", [true, true, true]; "allow empty rule allows all")]
#[test_case("  action: DENY", [true, true, true]; "deny without rules does nothing")]
#[test_case("  selector:\n    matchLabels: {app: server}\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/frontend/sa/client]}\n    to:\n    - operation: {ports: ['8080']}", [true, false, false]; "selector allow")]
#[test_case("  rules:\n  - from:\n    - source: {namespaces: [frontend]}\n  - to:\n    - operation: {ports: ['9090']}", [true, true, false]; "rules are ORed")]
#[test_case("  rules:\n  - from:\n    - source: {notPrincipals: ['*']}", [false, false, true]; "not principals presence matches plaintext")]
fn decisions(spec: &str, want: [bool; 3]) {
    let x = run(&format!("{SERVER}---\n{}", policy("backend", "", spec)));
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    let policies = applicable(&x, server);
    let conns = [
        Conn::mtls("frontend", "client", 8080),
        Conn::mtls("frontend", "client", 9090),
        Conn::plaintext(8080),
    ];
    let got = conns.map(|c| allowed(&policies, &c));
    assert_eq!(got, want);
}

#[test]
fn dry_run_is_not_enforced() {
    let spec = "  action: DENY\n  rules: [{}]";
    let x = run(&format!(
        "{SERVER}---\n{}",
        policy(
            "backend",
            "  annotations: {istio.io/dry-run: \"true\"}\n",
            spec
        )
    ));
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    assert!(allowed(&applicable(&x, server), &Conn::plaintext(8080)));
}

#[test]
fn selector_policies_are_listed_on_selected_workloads() {
    let sel = |ns: &str, name: &str, labels: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector:\n    matchLabels: {{{labels}}}\n  rules: [{{}}]\n"
        )
    };
    let yaml = [
        ambient_pod("backend", "server", "10.0.2.2", "app: server, tier: web"),
        ambient_pod("frontend", "client", "10.0.1.2", "app: client, tier: web"),
        sel("backend", "b-server", "app: server"),
        sel("backend", "a-web", "tier: web"),
        sel("backend", "other", "app: nope"),
        sel("istio-system", "mesh-web", "tier: web"),
        sel("frontend", "client-only", "app: client"),
        policy("backend", "", "  rules: [{}]"),
    ]
    .join("---\n");
    let x = run(&yaml);
    let server = workload(&x, "Kubernetes//v1/Pod/backend/server");
    assert_eq!(
        server.authorization_policies,
        ["backend/a-web", "backend/b-server", "istio-system/mesh-web"]
    );
    let client = workload(&x, "Kubernetes//v1/Pod/frontend/client");
    assert_eq!(
        client.authorization_policies,
        ["frontend/client-only", "istio-system/mesh-web"]
    );
    assert_eq!(x.authorizations.len(), 6);
}
