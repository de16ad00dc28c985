//! Ties the istiod-compat chart's RBAC to what the binary really asks the Kubernetes API:
//! the whole app runs in Kubernetes mode, configured from the Deployment's rendered
//! environment, against the in-repo fake apiserver through the real `kube::Client`; it
//! syncs, publishes its root certificate ConfigMap, creates its CA Secret and authenticates
//! a node proxy's certificate request with a TokenReview. Every request the fake records must
//! be granted by the rendered ClusterRole/Role (bound to the Deployment's service account),
//! and every rendered grant must be used by some request. The readiness probe's path is
//! checked on the running app too.
//!
//! No sleeps: waits are on the app's readiness and the fake's own change signal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod chart_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chart_support::{Golden, VARIANTS, container_env, namespace_of};
use istiod_compat::app::{BuildOptions, build_with};
use istiod_compat::config::{Config, env};
use istiod_compat::crd::AuthorizationPolicySpec;
use istiod_compat::k8s::auth::EXTRA_NODE_NAME;
use istiod_compat::k8s::fake::{FakeApiServer, RequestRecord, objects};
use istiod_compat::k8s::root_configmap::ROOT_CONFIGMAP;
use k8s_openapi::api::core::v1::ConfigMap;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use serde_yaml::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_proto::ca::IstioCertificateRequest;
use xds_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;

const PATIENCE: Duration = Duration::from_secs(30);
const AMBIENT: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
const NODE: &str = "node-1";
const ZTUNNEL_TOKEN: &str = "ztunnel-token";

/// One authorization check the API server makes: what RBAC matches on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// The attributes the API server authorizes a resource request by.
fn access(record: &RequestRecord) -> Access {
    let segments: Vec<&str> = record.path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("non-resource request {} {}", record.method, record.path),
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", ns, resource, tail @ ..] => {
            (Some(ns.to_string()), resource.to_string(), tail.first())
        }
        [resource, tail @ ..] => (None, resource.to_string(), tail.first()),
        [] => panic!("no resource in {}", record.path),
    };
    let name = name.map(|n| n.to_string());
    let verb = match (record.method.as_str(), record.watch, name.is_some()) {
        ("GET", true, _) => "watch",
        ("GET", false, true) => "get",
        ("GET", false, false) => "list",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", _, true) => "delete",
        ("DELETE", _, false) => "deletecollection",
        (method, _, _) => panic!("unexpected method {method} {}", record.path),
    };
    Access {
        verb: verb.into(),
        group,
        resource,
        namespace,
        name,
    }
}

/// One rule of the rendered roles, with the namespace it is limited to (Role) or none
/// (ClusterRole).
#[derive(Debug)]
struct Rule {
    role: String,
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

impl Rule {
    fn grants(&self, a: &Access) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| a.namespace.as_ref() == Some(ns))
            && self.groups.contains(&a.group)
            && self.resources.contains(&a.resource)
            && self.verbs.contains(&a.verb)
            && (self.names.is_empty() || a.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }
}

/// The rules of the roles bound to `service_account` in `namespace`.
fn bound_rules(golden: &Golden, namespace: &str, service_account: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (binding_kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        for binding in golden.all(binding_kind) {
            let binds_us = binding["subjects"].as_sequence().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == service_account
                    && s["namespace"] == namespace
            });
            if !binds_us {
                continue;
            }
            assert_eq!(binding["roleRef"]["kind"], role_kind);
            let role_name = binding["roleRef"]["name"].as_str().unwrap();
            let role = golden
                .all(role_kind)
                .into_iter()
                .find(|r| r["metadata"]["name"] == role_name)
                .unwrap_or_else(|| panic!("{}: {role_kind} {role_name} missing", golden.file));
            let role_ns = (role_kind == "Role").then(|| namespace_of(role).to_string());
            for rule in role["rules"].as_sequence().unwrap() {
                let r = Rule {
                    role: format!("{role_kind}/{role_name}"),
                    namespace: role_ns.clone(),
                    groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    verbs: strings(&rule["verbs"]),
                    names: strings(&rule["resourceNames"]),
                };
                for field in [&r.groups, &r.resources, &r.verbs, &r.names] {
                    assert!(!field.iter().any(|x| x.contains('*')), "wildcard in {r:?}");
                }
                rules.push(r);
            }
        }
    }
    rules
}

/// A P-256 CSR for `spiffe`.
fn csr(spiffe: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Status line of `GET path` on `addr` (HTTP/1.0, no client library needed).
async fn http_get_status(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: istiod-compat\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs the app configured by `variant`'s render against a seeded fake and returns what it
/// asked the API.
async fn run_and_record(golden: &Golden) -> Vec<RequestRecord> {
    let deployment = golden.one("Deployment");
    let namespace = namespace_of(deployment);
    let container = golden.container("Deployment", "discovery");
    let mut vars = container_env(
        &golden.file,
        container,
        namespace,
        &[(env::KUBERNETES_SERVICE_HOST, "10.96.0.1")],
    );
    for var in [
        env::XDS_PLAINTEXT_ADDR,
        env::XDS_TLS_ADDR,
        env::MONITORING_ADDR,
    ] {
        assert!(
            !vars.contains_key(var),
            "{var} is rendered: the test would hide it"
        );
        vars.insert(var.to_string(), "127.0.0.1:0".to_string());
    }
    let cfg = Config::from_source(&vars).unwrap();
    let trust_domain = cfg.trust_domain.clone();
    let node_account = cfg.trusted_node_accounts.iter().next().unwrap().clone();

    // A small cluster: one enrolled namespace with a pod, its Service and policies.
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::node(NODE));
    fake.apply(&objects::namespace("app", &[AMBIENT]));
    fake.apply(&objects::pod(
        "app",
        "echo-1",
        "echo",
        NODE,
        "10.244.1.10",
        &[("app", "echo")],
    ));
    fake.apply(&objects::service(
        "app",
        "echo",
        "10.96.10.10",
        &[80],
        &[("app", "echo")],
    ));
    fake.apply(&objects::endpoint_slice(
        "app",
        "echo-x",
        "echo",
        &["10.244.1.10"],
        &[80],
    ));
    fake.apply(&objects::authorization_policy(
        "app",
        "allow-all",
        AuthorizationPolicySpec::default(),
    ));
    fake.apply(&objects::peer_authentication("app", "strict", "STRICT"));
    fake.set_token(
        ZTUNNEL_TOKEN,
        &format!(
            "system:serviceaccount:{}:{}",
            node_account.namespace, node_account.service_account
        ),
        &[(EXTRA_NODE_NAME, NODE)],
    );

    let opts = BuildOptions {
        kube_client: Some(fake.client()),
        ..BuildOptions::default()
    };
    let app = tokio::time::timeout(PATIENCE, build_with(cfg, opts))
        .await
        .expect("app builds in time")
        .unwrap();
    assert!(
        tokio::time::timeout(PATIENCE, app.ready())
            .await
            .expect("ready in time"),
        "{}",
        app.failed().await
    );
    fake.wait_until(PATIENCE, "the root certificate ConfigMap", |f| {
        f.get::<ConfigMap>("app", ROOT_CONFIGMAP).is_some()
    })
    .await;

    // The readiness probe's path answers 200 on the monitoring port.
    let probe_path = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let status = http_get_status(app.bound.monitoring, probe_path).await;
    assert!(
        status.contains(" 200"),
        "{}: GET {probe_path}: {status}",
        golden.file
    );

    // ztunnel asks for the pod's certificate: the token is reviewed by the API.
    let identity = format!("spiffe://{trust_domain}/ns/app/sa/echo");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.bound.xds_plaintext))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr(&identity),
        validity_duration: 3600,
        metadata: Some(prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.clone())),
                },
            )]
            .into(),
        }),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ZTUNNEL_TOKEN}").parse().unwrap(),
    );
    let response = tokio::time::timeout(
        PATIENCE,
        IstioCertificateServiceClient::new(channel).create_certificate(request),
    )
    .await
    .expect("certificate in time")
    .unwrap_or_else(|status| panic!("{}: certificate refused: {status}", golden.file));
    assert!(!response.into_inner().cert_chain.is_empty());

    app.shutdown().await;
    fake.requests()
}

async fn check_variant(variant: &str) {
    let golden = Golden::load("istiod-compat", variant);
    let deployment = golden.one("Deployment");
    let namespace = namespace_of(deployment).to_string();
    let service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_string();
    let rules = bound_rules(&golden, &namespace, &service_account);
    assert!(
        !rules.is_empty(),
        "{}: no roles bound to {service_account}",
        golden.file
    );

    let accesses: BTreeSet<Access> = run_and_record(&golden).await.iter().map(access).collect();

    // Every request is granted.
    let denied: Vec<&Access> = accesses
        .iter()
        .filter(|a| !rules.iter().any(|r| r.grants(a)))
        .collect();
    assert!(
        denied.is_empty(),
        "{}: requests the chart does not grant: {denied:#?}",
        golden.file
    );

    // Every grant is used: each (group, resource, verb[, name]) of each rule by some request.
    let mut unused = Vec::new();
    for rule in &rules {
        for group in &rule.groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let names: Vec<Option<&String>> = if rule.names.is_empty() {
                        vec![None]
                    } else {
                        rule.names.iter().map(Some).collect()
                    };
                    for name in names {
                        let used = accesses.iter().any(|a| {
                            &a.group == group
                                && &a.resource == resource
                                && &a.verb == verb
                                && name.is_none_or(|n| a.name.as_ref() == Some(n))
                                && rule.grants(a)
                        });
                        if !used {
                            unused
                                .push(format!("{}: {verb} {group}/{resource} {name:?}", rule.role));
                        }
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "{}: grants never used: {unused:#?}",
        golden.file
    );

    // Sanity: the run exercised every part of the client.
    let verbs: HashMap<&str, usize> = accesses.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.verb.as_str()).or_default() += 1;
        m
    });
    for verb in ["list", "watch", "get", "create", "patch"] {
        assert!(
            verbs.contains_key(verb),
            "{}: no {verb} request seen: {accesses:#?}",
            golden.file
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_rbac_matches_the_client() {
    check_variant(VARIANTS[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondefault_values_rbac_matches_the_client() {
    check_variant(VARIANTS[1]).await;
}

#[test]
fn a_missing_grant_is_detected() {
    // The matcher is not vacuous: a Role limited by name or namespace refuses the others.
    let rule = Rule {
        role: "Role/x".into(),
        namespace: Some("istio-system".into()),
        groups: vec![String::new()],
        resources: vec!["secrets".into()],
        verbs: vec!["get".into()],
        names: vec!["cacerts".into()],
    };
    let get = |ns: &str, name: &str| Access {
        verb: "get".into(),
        group: String::new(),
        resource: "secrets".into(),
        namespace: Some(ns.into()),
        name: Some(name.into()),
    };
    assert!(rule.grants(&get("istio-system", "cacerts")));
    assert!(!rule.grants(&get("istio-system", "other")));
    assert!(!rule.grants(&get("default", "cacerts")));
    let record = RequestRecord {
        method: "PATCH".into(),
        path: "/api/v1/namespaces/app/configmaps/istio-ca-root-cert".into(),
        query: "fieldManager=istiod-compat&force=true".into(),
        resource: "configmaps".into(),
        watch: false,
        status: 200,
    };
    assert_eq!(
        access(&record),
        Access {
            verb: "patch".into(),
            group: String::new(),
            resource: "configmaps".into(),
            namespace: Some("app".into()),
            name: Some("istio-ca-root-cert".into()),
        }
    );
}
