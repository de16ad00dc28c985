//! Ties the redirect-ebpf chart's RBAC to what the agent really asks the Kubernetes API: the
//! agent's Kubernetes enrollment source (`source::kubernetes`, the one `REGISTRY=kubernetes`
//! runs) runs against the in-repo fake apiserver through the real `kube::Client`, follows a
//! namespace and a pod change, and every request the fake recorded, as the (verb, API group,
//! resource) RBAC authorizes, must be granted by the roles the golden renders
//! (`charts/tests/golden/redirect-ebpf-*.yaml`) bind to the DaemonSet's service account;
//! every rendered grant must be used; no rule may hold a wildcard.
//!
//! No sleeps: waits are on the source's change channel and the fake's change signal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use istiod_compat::k8s::fake::{FakeApiServer, RequestRecord};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use redirect_agent::source::{self, Enrolled};
use serde::Deserialize;
use serde_yaml::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const GOLDENS: [&str; 2] = [
    "redirect-ebpf-default.yaml",
    "redirect-ebpf-nondefault.yaml",
];
const PATIENCE: Duration = Duration::from_secs(30);
const NODE: &str = "node-1";

/// What RBAC authorizes a resource request by (the agent only uses cluster-wide requests,
/// so namespace and name do not narrow anything here; they are checked to be absent).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    resource: String,
}

/// The RBAC attributes of one recorded request.
fn access(r: &RequestRecord) -> Access {
    let segments: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("non-resource request {} {}", r.method, r.path),
    };
    // A namespaced or named request would need a grant this matcher does not model.
    let [resource] = rest else {
        panic!(
            "not a cluster-wide collection request: {} {}",
            r.method, r.path
        )
    };
    let verb = match (r.method.as_str(), r.watch) {
        ("GET", true) => "watch",
        ("GET", false) => "list",
        (method, _) => panic!("the agent only reads: {method} {}", r.path),
    };
    Access {
        verb: verb.into(),
        group: group.into(),
        resource: (*resource).into(),
    }
}

/// One rendered rule.
#[derive(Debug)]
struct Rule {
    role: String,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

impl Rule {
    fn grants(&self, a: &Access) -> bool {
        self.groups.contains(&a.group)
            && self.resources.contains(&a.resource)
            && self.verbs.contains(&a.verb)
    }

    /// Every (verb, group, resource) the rule grants.
    fn grants_all(&self) -> Vec<Access> {
        let mut out = Vec::new();
        for group in &self.groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    out.push(Access {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                    });
                }
            }
        }
        out
    }
}

fn load(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/tests/golden")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run charts/tests/run.sh)", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(file: &str, v: &Value) -> Vec<String> {
    let out: Vec<String> = v
        .as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    for s in &out {
        assert!(!s.contains('*'), "{file}: wildcard {s:?} in a rule");
    }
    out
}

/// The rules of the roles bound to the DaemonSet's service account.
fn bound_rules(file: &str, objects: &[Value]) -> Vec<Rule> {
    let of_kind = |kind: &'static str| objects.iter().filter(move |o| o["kind"] == kind);
    let ds: Vec<&Value> = of_kind("DaemonSet").collect();
    assert_eq!(ds.len(), 1, "{file}: one DaemonSet");
    let namespace = ds[0]["metadata"]["namespace"].as_str().unwrap();
    let pod = &ds[0]["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().unwrap();
    assert_ne!(
        pod["automountServiceAccountToken"],
        Value::Bool(false),
        "{file}: the agent needs its token"
    );
    assert!(
        of_kind("ServiceAccount")
            .any(|sa| sa["metadata"]["name"] == account && sa["metadata"]["namespace"] == namespace),
        "{file}: service account {namespace}/{account} not rendered"
    );
    // The agent's requests are cluster-wide: a namespaced Role could not grant them, so any
    // Role bound to the agent would be an unused grant.
    for kind in ["Role", "RoleBinding"] {
        assert_eq!(of_kind(kind).count(), 0, "{file}: unexpected {kind}");
    }
    let mut rules = Vec::new();
    for binding in of_kind("ClusterRoleBinding") {
        let binds_us = binding["subjects"].as_sequence().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
        });
        if !binds_us {
            continue;
        }
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole", "{file}");
        let name = binding["roleRef"]["name"].as_str().unwrap();
        let role = of_kind("ClusterRole")
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{file}: ClusterRole {name} missing"));
        assert!(
            role["aggregationRule"].is_null(),
            "{file}: aggregated role {name}"
        );
        for rule in role["rules"].as_sequence().unwrap() {
            assert!(
                rule["nonResourceURLs"].is_null() && rule["resourceNames"].is_null(),
                "{file}: {name}: unexpected rule {rule:?}"
            );
            rules.push(Rule {
                role: format!("ClusterRole/{name}"),
                groups: strings(file, &rule["apiGroups"]),
                resources: strings(file, &rule["resources"]),
                verbs: strings(file, &rule["verbs"]),
            });
        }
    }
    assert!(!rules.is_empty(), "{file}: nothing bound to {account}");
    rules
}

fn namespace(name: &str, ambient: bool) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: ambient
                .then(|| BTreeMap::from([("istio.io/dataplane-mode".into(), "ambient".into())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn wait_for(rx: &mut watch::Receiver<Arc<Enrolled>>, want: &[&str]) {
    let got = tokio::time::timeout(
        PATIENCE,
        rx.wait_for(|e| {
            let keys: Vec<String> = e.pods.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
            keys == want
        }),
    )
    .await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "enrolled pods never became {want:?}"
    );
}

/// Runs the agent's Kubernetes source through a list, both watches and live changes, and
/// returns what it asked the API.
async fn run_and_record() -> Vec<RequestRecord> {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&namespace("app", true));
    fake.apply(&pod("app", "a"));
    let shutdown = CancellationToken::new();
    let mut rx = tokio::time::timeout(
        PATIENCE,
        source::kubernetes(fake.client(), NODE.into(), shutdown.clone()),
    )
    .await
    .expect("initial sync in time")
    .unwrap();
    wait_for(&mut rx, &["app/a"]).await;
    fake.wait_until(PATIENCE, "both watches open", |f| f.open_watches() >= 2)
        .await;
    // Live events on both watches.
    fake.apply(&pod("app", "b"));
    wait_for(&mut rx, &["app/a", "app/b"]).await;
    fake.apply(&namespace("app", false));
    wait_for(&mut rx, &[]).await;
    shutdown.cancel();
    let requests = fake.requests();
    for r in &requests {
        assert!(r.status < 300, "refused by the fake: {r:?}");
    }
    requests
}

async fn check(file: &str) {
    let rules = bound_rules(file, &load(file));
    let accesses: BTreeSet<Access> = run_and_record().await.iter().map(access).collect();

    let denied: Vec<&Access> = accesses
        .iter()
        .filter(|a| !rules.iter().any(|r| r.grants(a)))
        .collect();
    assert!(
        denied.is_empty(),
        "{file}: requests the chart does not grant: {denied:#?}"
    );
    let unused: Vec<String> = rules
        .iter()
        .flat_map(|r| {
            r.grants_all()
                .into_iter()
                .filter(|g| !accesses.contains(g))
                .map(move |g| format!("{}: {g:?}", r.role))
        })
        .collect();
    assert!(unused.is_empty(), "{file}: grants never used: {unused:#?}");
    // Sanity: the run did list and watch both resources.
    assert_eq!(accesses.len(), 4, "{file}: {accesses:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_rbac_matches_the_agent() {
    check(GOLDENS[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondefault_values_rbac_matches_the_agent() {
    check(GOLDENS[1]).await;
}

#[test]
fn the_matcher_is_not_vacuous() {
    let rule = Rule {
        role: "ClusterRole/x".into(),
        groups: vec![String::new()],
        resources: vec!["pods".into()],
        verbs: vec!["list".into()],
    };
    let record = |method: &str, path: &str, watch: bool| RequestRecord {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        resource: String::new(),
        watch,
        status: 200,
    };
    assert!(rule.grants(&access(&record("GET", "/api/v1/pods", false))));
    assert!(!rule.grants(&access(&record("GET", "/api/v1/pods", true))));
    assert!(!rule.grants(&access(&record("GET", "/api/v1/namespaces", false))));
    assert!(!rule.grants(&access(&record("GET", "/apis/apps/v1/pods", false))));
    assert_eq!(rule.grants_all().len(), 1);
}
