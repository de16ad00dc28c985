//! The control-plane clients against in-process fakes (port 0, TLS unless stated): the
//! delta ADS client (sync, per-resource NACK, removal, reconnect, merge with the local file)
//! and the Istio CA client (CSR, chain, headers, impersonation).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use tokio_util::sync::CancellationToken;
use ztunnel::config::Config;
use ztunnel::control::{AuthHeaders, ControlTarget};
use ztunnel::identity::{CaClient, CertificateSource, IdentityError};
use ztunnel::metrics::{Metrics, TerminationReason, XdsMetrics};
use ztunnel::readiness::Readiness;
use ztunnel::socket::SocketFactory;
use ztunnel::state::{InboundProtocol, StateStore};
use ztunnel::test_helpers::ca::FakeCa;
use ztunnel::test_helpers::pki::TestPki;
use ztunnel::test_helpers::xds::{FakeAds, policy_resource, service_resource, workload_resource};
use ztunnel::test_helpers::xds_proto::security as xs;
use ztunnel::test_helpers::xds_proto::workload as xw;
use ztunnel::test_helpers::xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ztunnel::test_helpers::{eventually, wait_state};
use ztunnel::xds::XdsClient;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn workload(name: &str, ip: [u8; 4]) -> xw::Workload {
    xw::Workload {
        uid: format!("cluster1//v1/Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        workload_type: xw::WorkloadType::Pod as i32,
        services: HashMap::from([(
            "default/echo.default.svc.cluster.local".to_string(),
            xw::PortList {
                ports: vec![xw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        ..Default::default()
    }
}

fn uid(name: &str) -> String {
    format!("cluster1//v1/Pod/default/{name}")
}

fn service() -> xw::Service {
    xw::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![xw::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![xw::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

fn policy(name: &str) -> xs::Authorization {
    xs::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: xs::Scope::Namespace as i32,
        action: xs::Action::Allow as i32,
        ..Default::default()
    }
}

/// A config for an xDS client of `ads`, trusting `pki`'s root, with a static token.
fn client_config(address: &str, pki: &TestPki, extra: &[(&str, &str)]) -> Config {
    let mut src: HashMap<&str, &str> = HashMap::from([
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/a/a"),
        ("XDS_ADDRESS", address),
        ("XDS_ROOT_CA", pki.root_pem.as_str()),
        ("CA_ROOT_CA", pki.root_pem.as_str()),
        ("AUTH_TOKEN", "test-token"),
        ("CLUSTER_ID", "cluster1"),
        ("POD_NAME", "ztunnel-1"),
        ("POD_NAMESPACE", "istio-system"),
        ("INSTANCE_IP", "10.0.0.9"),
        ("NODE_NAME", "node1"),
    ]);
    src.extend(extra.iter().copied());
    Config::from_source(&src).unwrap()
}

struct Client {
    store: Arc<StateStore>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: CancellationToken,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn xds(c: &Client) -> &XdsMetrics {
    &c.metrics.xds
}

fn start_client(cfg: &Config, local: Option<Arc<StateStore>>) -> Client {
    let store = Arc::new(StateStore::default());
    let metrics = Arc::new(Metrics::new(Arc::default()));
    let readiness = Readiness::new();
    let mut client = XdsClient::new(
        cfg,
        cfg.xds_address.clone().unwrap(),
        store.clone(),
        metrics.xds.clone(),
        SocketFactory { mark: None },
    )
    .with_readiness(readiness.register("state manager"));
    if let Some(local) = local {
        client = client.with_local(local);
    }
    let stop = CancellationToken::new();
    tokio::spawn(client.run(stop.clone()));
    Client {
        store,
        metrics,
        readiness,
        stop,
    }
}

#[tokio::test]
async fn initial_sync_applies_everything_with_node_and_headers() {
    init_logs();
    let pki = TestPki::new();
    let ads = FakeAds::start_tls(&pki).await;
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![
            workload_resource(workload("a", [10, 0, 0, 1])),
            workload_resource(workload("b", [10, 0, 0, 2])),
            service_resource(service()),
        ],
        vec![],
    );
    ads.publish(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource(policy("p1"))],
        vec![],
    );
    let c = start_client(&client_config(&ads.https_address(), &pki, &[]), None);
    assert!(!c.readiness.is_ready(), "not ready before the first sync");

    let first = ads.next_request().await;
    assert_eq!(first.request.type_url, ADDRESS_TYPE_URL);
    assert_eq!(first.authorization.as_deref(), Some("Bearer test-token"));
    assert_eq!(first.cluster_id.as_deref(), Some("cluster1"));
    let node = first.request.node.clone().unwrap();
    assert_eq!(
        node.id,
        "ztunnel~10.0.0.9~ztunnel-1.istio-system~istio-system.svc.cluster.local"
    );
    let meta = node.metadata.unwrap().fields;
    for key in [
        "NAME",
        "NAMESPACE",
        "INSTANCE_IPS",
        "NODE_NAME",
        "CLUSTER_ID",
    ] {
        assert!(meta.contains_key(key), "{key} missing from node metadata");
    }
    assert!(first.request.initial_resource_versions.is_empty());
    let second = ads.next_request().await;
    assert_eq!(second.request.type_url, AUTHORIZATION_TYPE_URL);

    let answers = ads.answers(2).await;
    assert!(answers.iter().all(|a| a.nack().is_none()), "{answers:?}");
    wait_state(&c.store, "initial sync", |s| {
        s.workloads.len() == 2 && s.services.len() == 1 && s.policies.len() == 1
    })
    .await;
    let s = c.store.snapshot();
    let echo = s.services.values().next().unwrap();
    assert_eq!(
        echo.endpoints.len(),
        2,
        "endpoints merged from the workloads"
    );
    assert_eq!(s.workloads[&uid("a")].protocol, InboundProtocol::Hbone);
    assert!(s.policies.contains_key("default/p1"));
    eventually("readiness released", || c.readiness.is_ready()).await;
    assert_eq!(xds(&c).connects(), 1);
    let text = c.metrics.encode().unwrap();
    assert!(
        text.contains(
            "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("istio_xds_message_bytes_total"), "{text}");
}

#[tokio::test]
async fn bad_resource_is_nacked_by_name_the_rest_apply_and_removal_works() {
    init_logs();
    let pki = TestPki::new();
    let ads = FakeAds::start_tls(&pki).await;
    let c = start_client(&client_config(&ads.https_address(), &pki, &[]), None);
    ads.answers(2).await; // the two empty initial responses
    eventually("readiness released", || c.readiness.is_ready()).await;

    let mut legacy = workload("bad", [10, 0, 0, 3]);
    legacy.tunnel_protocol = xw::TunnelProtocol::LegacyIstioMtls as i32;
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![
            workload_resource(workload("a", [10, 0, 0, 1])),
            workload_resource(legacy),
            service_resource(service()),
        ],
        vec![],
    );
    let nack = ads.answers(1).await.remove(0);
    let message = nack.nack().expect("a NACK").to_string();
    assert!(
        message.starts_with(&format!("{}: ", uid("bad"))),
        "{message}"
    );
    assert!(message.contains("LEGACY_ISTIO_MTLS"), "{message}");
    assert!(
        !message.contains(&uid("a")),
        "only the bad resource is named: {message}"
    );
    wait_state(&c.store, "good resources applied", |s| {
        s.workloads.contains_key(&uid("a")) && s.services.len() == 1
    })
    .await;
    assert!(!c.store.snapshot().workloads.contains_key(&uid("bad")));
    assert_eq!(xds(&c).nacks(ADDRESS_TYPE_URL), 1);

    // A bad authorization: unknown action.
    let mut bad_policy = policy("bad");
    bad_policy.action = 7;
    ads.publish(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource(policy("good")), policy_resource(bad_policy)],
        vec![],
    );
    let nack = ads.answers(1).await.remove(0);
    assert!(
        nack.nack().unwrap().starts_with("default/bad: "),
        "{nack:?}"
    );
    wait_state(&c.store, "good policy applied", |s| {
        s.policies.contains_key("default/good")
    })
    .await;

    // Removal of a workload and of the service.
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![],
        vec![uid("a"), "default/echo.default.svc.cluster.local".into()],
    );
    assert!(ads.answers(1).await[0].nack().is_none());
    wait_state(&c.store, "removals applied", |s| {
        s.workloads.is_empty() && s.services.is_empty()
    })
    .await;
}

#[tokio::test]
async fn reconnect_resumes_without_nacked_names_and_keeps_state_while_down() {
    init_logs();
    let pki = TestPki::new();
    let ads = FakeAds::start_tls(&pki).await;
    let mut bad = workload("bad", [10, 0, 0, 3]);
    bad.addresses = vec![vec![1, 2, 3]];
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![
            workload_resource(workload("a", [10, 0, 0, 1])),
            workload_resource(bad),
        ],
        vec![],
    );
    ads.publish(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource(policy("p1"))],
        vec![],
    );
    let c = start_client(&client_config(&ads.https_address(), &pki, &[]), None);
    let answers = ads.answers(2).await;
    assert!(answers.iter().any(|a| a.nack().is_some()));
    wait_state(&c.store, "initial sync", |s| {
        s.workloads.len() == 1 && s.policies.len() == 1
    })
    .await;
    let version = c.store.version();

    ads.down();
    eventually("the stream failure is counted", || {
        xds(&c).terminations(TerminationReason::Error) >= 1
    })
    .await;
    eventually("reconnects are refused while down", || {
        xds(&c).terminations(TerminationReason::ConnectionError) >= 1
    })
    .await;
    // While disconnected: the last good state keeps serving, untouched.
    assert_eq!(c.store.version(), version);
    assert!(c.store.snapshot().workloads.contains_key(&uid("a")));
    // The server changes while the client is away.
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![workload_resource(workload("c", [10, 0, 0, 4]))],
        vec![uid("a")],
    );
    ads.up();

    let resumed = ads
        .wait_request(|r| r.stream > 1 && r.request.type_url == ADDRESS_TYPE_URL && !r.is_answer())
        .await;
    let versions = &resumed.request.initial_resource_versions;
    assert!(versions.contains_key(&uid("a")), "{versions:?}");
    assert!(
        !versions.contains_key(&uid("bad")),
        "NACKed names are not claimed: {versions:?}"
    );
    let policies = ads
        .wait_request(|r| {
            r.stream > 1 && r.request.type_url == AUTHORIZATION_TYPE_URL && !r.is_answer()
        })
        .await;
    assert!(
        policies
            .request
            .initial_resource_versions
            .contains_key("default/p1")
    );
    wait_state(&c.store, "resynced after reconnect", |s| {
        s.workloads.contains_key(&uid("c")) && !s.workloads.contains_key(&uid("a"))
    })
    .await;
    assert!(c.store.snapshot().policies.contains_key("default/p1"));
    assert_eq!(xds(&c).connects(), 2);
}

#[tokio::test]
async fn unreachable_server_backs_off_and_stays_not_ready() {
    init_logs();
    let pki = TestPki::new();
    // A port that was just free: connections are refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = start_client(&client_config(&format!("https://{addr}"), &pki, &[]), None);
    eventually("several refused connections", || {
        xds(&c).terminations(TerminationReason::ConnectionError) >= 3
    })
    .await;
    assert!(!c.readiness.is_ready());
    assert_eq!(c.store.version(), 0, "nothing published");
}

#[tokio::test]
async fn plaintext_server_and_merge_with_local_config() {
    init_logs();
    let pki = TestPki::new();
    let ads = FakeAds::start().await;
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![workload_resource(workload("a", [10, 0, 0, 1]))],
        vec![],
    );
    let local = Arc::new(StateStore::default());
    local.publish(
        ztunnel::localconfig::parse(
            r#"
workloads:
- uid: local-1
  name: local
  namespace: default
  workloadIps: ["10.9.0.1"]
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {80: 8080}
"#,
        )
        .unwrap(),
    );
    let c = start_client(
        &client_config(&ads.http_address(), &pki, &[]),
        Some(local.clone()),
    );
    wait_state(&c.store, "xDS and local resources merged", |s| {
        s.workloads.contains_key(&uid("a"))
            && s.workloads.contains_key("local-1")
            && s.services.len() == 1
    })
    .await;
    // The local service gets the xDS workload as an endpoint (it backs echo).
    let s = c.store.snapshot();
    assert!(
        s.services
            .values()
            .next()
            .unwrap()
            .endpoints
            .contains_key(&uid("a"))
    );
    // A change of the local file republishes the merge.
    local.publish(ztunnel::localconfig::parse("workloads: []").unwrap());
    wait_state(&c.store, "local resources gone", |s| {
        !s.workloads.contains_key("local-1") && s.workloads.contains_key(&uid("a"))
    })
    .await;
}

// === CA client ===

fn ca_client(ca: &FakeCa, impersonate: bool) -> CaClient {
    CaClient::new(
        ControlTarget {
            address: ca.https_address(),
            roots: ztunnel::config::RootCerts::Pem(ca.pki.root_pem.clone()),
            sockets: SocketFactory { mark: None },
        },
        AuthHeaders {
            token: ztunnel::config::AuthToken::Configured("ca-token".into()),
            cluster_id: "cluster1".into(),
        },
        Duration::from_secs(3600),
        impersonate,
    )
    .unwrap()
}

fn id(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn ca_client_gets_a_verifiable_certificate_for_the_identity() {
    init_logs();
    let ca = FakeCa::start(Arc::new(TestPki::new()), true).await;
    let client = ca_client(&ca, false);
    let cert = client.fetch(&id("echo")).await.unwrap();
    assert_eq!(cert.identity, id("echo"));
    assert_eq!(cert.chain.len(), 2, "leaf and intermediate");
    assert_eq!(cert.roots.len(), 2, "the root bundle holds two roots");
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(lifetime >= Duration::from_secs(3600), "{lifetime:?}");

    // The chain verifies to the bundle's roots.
    let mut roots = RootCertStore::empty();
    for r in &cert.roots {
        roots.add(r.clone()).unwrap();
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ztunnel::tls::provider())
            .build()
            .unwrap();
    verifier
        .verify_client_cert(
            &cert.chain[0],
            &cert.chain[1..],
            UnixTime::since_unix_epoch(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap(),
            ),
        )
        .unwrap();
    // And the key fits: a TLS server config can be built from it.
    ztunnel::tls::server_config(&cert).unwrap();

    let seen = ca.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer ca-token"));
    assert_eq!(seen[0].cluster_id.as_deref(), Some("cluster1"));
    assert_eq!(seen[0].validity_duration, 3600);
    assert!(!seen[0].has_metadata, "no impersonation in dedicated mode");

    // A fresh key for every request.
    let again = client.fetch(&id("echo")).await.unwrap();
    assert_ne!(again.chain[0], cert.chain[0]);
}

#[tokio::test]
async fn impersonation_metadata_and_identity_check() {
    init_logs();
    let ca = FakeCa::start(Arc::new(TestPki::new()), true).await;
    let client = ca_client(&ca, true);
    let cert = client.fetch(&id("pod-sa")).await.unwrap();
    assert_eq!(cert.identity, id("pod-sa"));
    assert_eq!(
        ca.requests()[0].impersonated.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/pod-sa")
    );
    // A CA that issues for someone else is refused when impersonating...
    ca.issue_for("spiffe://cluster.local/ns/default/sa/other");
    let err = client.fetch(&id("pod-sa")).await.unwrap_err();
    assert!(
        matches!(err, IdentityError::IdentityMismatch { .. }),
        "{err}"
    );
    // ...and accepted (with a warning) in dedicated mode, where the token decides.
    let dedicated = ca_client(&ca, false);
    let cert = dedicated.fetch(&id("pod-sa")).await.unwrap();
    assert_eq!(cert.identity, id("other"));
}

#[tokio::test]
async fn ca_errors_carry_the_grpc_status() {
    init_logs();
    let ca = FakeCa::start(Arc::new(TestPki::new()), true).await;
    ca.fail_with(tonic::Status::permission_denied("token rejected"));
    let err = ca_client(&ca, false)
        .fetch(&id("echo"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PermissionDenied") && err.contains("token rejected"),
        "{err}"
    );
    assert!(err.contains(&ca.https_address()), "{err}");

    // Untrusted server certificate: a TLS error, not a hang.
    let other = TestPki::new();
    let client = CaClient::new(
        ControlTarget {
            address: ca.https_address(),
            roots: ztunnel::config::RootCerts::Pem(other.root_pem.clone()),
            sockets: SocketFactory { mark: None },
        },
        AuthHeaders {
            token: ztunnel::config::AuthToken::Configured("t".into()),
            cluster_id: "c".into(),
        },
        Duration::from_secs(3600),
        false,
    )
    .unwrap();
    let err = client.fetch(&id("echo")).await.unwrap_err().to_string();
    assert!(err.contains("Unavailable"), "{err}");
}

// === A real proxy pair on the fakes ===

/// Two dedicated proxies (127.0.50.1 client, 127.0.50.2 server) that take their workloads
/// and policy from the fake ADS and their certificates from the fake CA (no local config,
/// no local CA), carrying a SOCKS5 → HBONE → echo connection that the server's policy only
/// allows for the client's CA-issued identity.
#[tokio::test]
async fn app_pair_runs_on_fake_istiod() {
    use ztunnel::test_helpers::inprocess::{
        echo_server, loopback_config, round_trip, socks5_connect,
    };
    init_logs();
    let pki = Arc::new(TestPki::new());
    let ads = FakeAds::start_tls(&pki).await;
    let ca = FakeCa::start(pki.clone(), true).await;
    let mut client = workload("client", [127, 0, 50, 1]);
    client.services.clear();
    let mut server = workload("server", [127, 0, 50, 2]);
    server.services.clear();
    ads.publish(
        ADDRESS_TYPE_URL,
        vec![workload_resource(client), workload_resource(server)],
        vec![],
    );
    let exact = |s: &str| xs::StringMatch {
        match_type: Some(xs::string_match::MatchType::Exact(s.into())),
    };
    ads.publish(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource(xs::Authorization {
            rules: vec![xs::Rule {
                clauses: vec![xs::Clause {
                    matches: vec![xs::Match {
                        principals: vec![exact("cluster.local/ns/default/sa/client")],
                        ..Default::default()
                    }],
                }],
            }],
            ..policy("only-client")
        })],
        vec![],
    );

    let dir = tempfile::tempdir().unwrap();
    let (xds_address, ca_address) = (ads.https_address(), ca.https_address());
    let env = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = vec![
            ("XDS_ADDRESS", xds_address.as_str()),
            ("CA_ADDRESS", ca_address.as_str()),
            ("XDS_ROOT_CA", pki.root_pem.as_str()),
            ("CA_ROOT_CA", pki.root_pem.as_str()),
            ("AUTH_TOKEN", "e2e-token"),
            ("CLUSTER_ID", "cluster1"),
        ];
        v.extend_from_slice(extra);
        v
    };
    let config = |info: &str, ip: &str, extra: &[(&'static str, &'static str)]| {
        let mut cfg = loopback_config(dir.path(), info, ip, &env(extra), false);
        cfg.local_xds_path = None;
        cfg
    };
    let (echo, _peers) = echo_server("127.0.50.2").await;
    let b = ztunnel::app::build(config("default/server/server", "127.0.50.2", &[]))
        .await
        .unwrap();
    let a = ztunnel::app::build(config(
        "default/client/client",
        "127.0.50.1",
        &[("UNSTABLE_ENABLE_SOCKS5", "true")],
    ))
    .await
    .unwrap();
    eventually("both proxies ready (xDS synced)", || {
        a.readiness.is_ready() && b.readiness.is_ready()
    })
    .await;
    assert!(
        !dir.path().join("ca").exists(),
        "no local CA directory is created when CA_ADDRESS is set"
    );

    let s = socks5_connect(a.bound.socks5.unwrap(), echo).await;
    assert_eq!(round_trip(s, b"via fake istiod").await, b"via fake istiod");

    let csrs = ca.requests();
    assert!(csrs.len() >= 2, "both identities were requested: {csrs:?}");
    assert!(
        csrs.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer e2e-token") && !r.has_metadata)
    );
    assert!(a.metrics.xds.connects() >= 1 && b.metrics.xds.connects() >= 1);
    a.shutdown().await;
    b.shutdown().await;
}
