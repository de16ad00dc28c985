//! Kubernetes → node proxy, end to end: the whole app (`app::build_with`) in Kubernetes mode
//! against the in-repo fake apiserver, with a delta ADS client on the plaintext port acting
//! as a node proxy. Each change made in the fake must reach the client as the next delta,
//! holding exactly the resource that changed (or its removal) and nothing else.
//!
//! No sleeps: every wait is on the next ADS response, bounded by [`PATIENCE`].

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use istiod_compat::app::{App, BuildOptions, build_with};
use istiod_compat::config::{Config, env};
use istiod_compat::crd::{AuthorizationPolicy, AuthorizationPolicySpec, Rule, RuleFrom, Source};
use istiod_compat::k8s::fake::{FakeApiServer, objects};
use k8s_openapi::api::core::v1::Pod;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use xds_proto::security::{Action, Authorization, Scope};
use xds_proto::workload::address::Type as AddressType;
use xds_proto::workload::{Address, TunnelProtocol, Workload};
use xds_proto::{ADDRESS_TYPE_URL as ADDRESS, AUTHORIZATION_TYPE_URL as AUTHZ};

/// Upper bound for anything the test waits for (the machine may be busy; kube's watch
/// backoff starts at 800 ms).
const PATIENCE: Duration = Duration::from_secs(20);

/// Enrolment label.
const AMBIENT: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
const NS: &str = "app";
const POD: &str = "echo-1";
/// `translate::workload::pod_uid` with the default cluster id.
const POD_UID: &str = "Kubernetes//v1/Pod/app/echo-1";
/// `namespace/hostname` of the Service.
const SVC: &str = "app/echo.app.svc.cluster.local";
const POLICY: &str = "deny-untrusted";
const POLICY_KEY: &str = "app/deny-untrusted";

/// `f`, or a panic naming `what` after [`PATIENCE`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

/// The app in Kubernetes mode on `fake`, every listener on 127.0.0.1:0, short ADS debounce.
async fn start_app(fake: &FakeApiServer) -> App {
    let vars: HashMap<&str, &str> = HashMap::from([
        (env::REGISTRY, "kubernetes"),
        (env::XDS_PLAINTEXT_ADDR, "127.0.0.1:0"),
        (env::XDS_TLS_ADDR, "127.0.0.1:0"),
        (env::MONITORING_ADDR, "127.0.0.1:0"),
        (env::PILOT_DEBOUNCE_AFTER, "1ms"),
        (env::PILOT_DEBOUNCE_MAX, "5ms"),
    ]);
    let cfg = Config::from_source(&vars).unwrap();
    let opts = BuildOptions {
        kube_client: Some(fake.client()),
        ..BuildOptions::default()
    };
    within("building the app", build_with(cfg, opts))
        .await
        .unwrap()
}

/// One delta ADS stream, driven as a node proxy drives it: every response is ACKed.
struct Proxy {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Proxy {
    async fn connect(addr: SocketAddr) -> Proxy {
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        let channel = within("connecting to the plaintext port", endpoint.connect())
            .await
            .unwrap();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let call = client.delta_aggregated_resources(ReceiverStream::new(rx));
        let responses = within("opening the ADS stream", call)
            .await
            .unwrap()
            .into_inner();
        Proxy { tx, responses }
    }

    async fn send(&self, mut req: DeltaDiscoveryRequest) {
        req.node = Some(Node {
            id: "ztunnel~10.0.0.100~ztunnel-a.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        });
        self.tx.send(req).await.unwrap();
    }

    /// A wildcard subscription to `type_url`.
    async fn subscribe_wildcard(&self, type_url: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await;
    }

    /// The next response, whatever its type, ACKed.
    async fn recv(&mut self, what: &str) -> DeltaDiscoveryResponse {
        let resp = within(what, self.responses.message())
            .await
            .expect("ADS stream error")
            .expect("ADS stream ended");
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
        resp
    }

    /// The next response, which must be of `type_url` (nothing of the other type may come
    /// first).
    async fn next(&mut self, type_url: &str, what: &str) -> DeltaDiscoveryResponse {
        let resp = self.recv(what).await;
        assert_eq!(
            resp.type_url,
            type_url,
            "{what}: unexpected response {}",
            describe(&resp)
        );
        resp
    }
}

/// Names, removals and type of a response, for assertion messages.
fn describe(resp: &DeltaDiscoveryResponse) -> String {
    format!(
        "type {} resources {:?} removed {:?}",
        resp.type_url,
        names(resp),
        resp.removed_resources
    )
}

/// Resource names of a response, sorted.
fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// The address named `name` in an Address response, decoded.
fn address(resp: &DeltaDiscoveryResponse, name: &str) -> Address {
    let resource = resp
        .resources
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} not in {}", describe(resp)));
    let any = resource.resource.as_ref().expect("resource body");
    assert_eq!(any.type_url, ADDRESS);
    Address::decode(any.value.as_slice()).unwrap()
}

/// The workload named `uid` in an Address response, decoded.
fn workload(resp: &DeltaDiscoveryResponse, uid: &str) -> Workload {
    match address(resp, uid).r#type {
        Some(AddressType::Workload(w)) => w,
        other => panic!("{uid}: expected a workload, got {other:?}"),
    }
}

/// The next Address response must carry exactly the pod's workload (and no removals).
async fn expect_pod_workload(proxy: &mut Proxy, what: &str) -> Workload {
    let resp = proxy.next(ADDRESS, what).await;
    assert_eq!(names(&resp), [POD_UID], "{what}: {}", describe(&resp));
    assert!(
        resp.removed_resources.is_empty(),
        "{what}: {}",
        describe(&resp)
    );
    workload(&resp, POD_UID)
}

fn pod(node: &str, ip: &str) -> Pod {
    objects::pod(NS, POD, "echo", node, ip, &[("app", "echo")])
}

/// A namespace-wide L4 policy (no selector: it is not listed on any workload).
fn deny_untrusted() -> AuthorizationPolicy {
    objects::authorization_policy(
        NS,
        POLICY,
        AuthorizationPolicySpec {
            action: Some("DENY".into()),
            rules: Some(vec![Rule {
                from: vec![RuleFrom {
                    source: Source {
                        namespaces: vec!["untrusted".into()],
                        ..Default::default()
                    },
                }],
                ..Default::default()
            }]),
            ..Default::default()
        },
    )
}

fn tunnel(w: &Workload) -> TunnelProtocol {
    TunnelProtocol::try_from(w.tunnel_protocol).unwrap()
}

#[tokio::test]
async fn kubernetes_changes_reach_the_node_proxy_as_deltas() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace(NS, &[]));
    fake.apply(&objects::node("node-a"));
    fake.apply(&objects::node("node-b"));
    fake.apply(&objects::service(
        NS,
        "echo",
        "10.96.0.10",
        &[80],
        &[("app", "echo")],
    ));
    let app = start_app(&fake).await;
    let mut proxy = Proxy::connect(app.bound.xds_plaintext).await;

    // Initial sync (answered once the registry's first complete snapshot is translated):
    // the Service, and no policies.
    proxy.subscribe_wildcard(ADDRESS).await;
    let initial = proxy.next(ADDRESS, "initial addresses").await;
    assert_eq!(names(&initial), [SVC], "{}", describe(&initial));
    assert!(initial.removed_resources.is_empty());
    assert!(matches!(
        address(&initial, SVC).r#type,
        Some(AddressType::Service(s)) if s.hostname == "echo.app.svc.cluster.local"
    ));
    proxy.subscribe_wildcard(AUTHZ).await;
    let initial = proxy.next(AUTHZ, "initial authorizations").await;
    assert!(
        initial.resources.is_empty() && initial.removed_resources.is_empty(),
        "{}",
        describe(&initial)
    );

    // 1. A pod in a namespace that is not enrolled: a plain workload (no tunnel), listed
    //    under the Service it matches; the Service itself is not resent.
    fake.apply(&pod("node-a", "10.0.0.1"));
    let w = expect_pod_workload(&mut proxy, "new pod").await;
    assert_eq!(w.uid, POD_UID);
    assert_eq!((w.namespace.as_str(), w.name.as_str()), (NS, POD));
    assert_eq!(tunnel(&w), TunnelProtocol::None);
    assert_eq!(w.addresses, [vec![10, 0, 0, 1]]);
    assert_eq!(w.node, "node-a");
    assert_eq!(w.service_account, "echo");
    assert!(w.services.contains_key(SVC), "{:?}", w.services);

    //    Enrolling the namespace resends that workload, now HBONE.
    fake.apply(&objects::namespace(NS, &[AMBIENT]));
    let w = expect_pod_workload(&mut proxy, "namespace enrolled").await;
    assert_eq!(tunnel(&w), TunnelProtocol::Hbone);
    assert_eq!(w.addresses, [vec![10, 0, 0, 1]]);
    assert_eq!(w.node, "node-a");

    // 2. The pod's IP changes: the workload is resent with the new address.
    fake.apply(&pod("node-a", "10.0.0.2"));
    let w = expect_pod_workload(&mut proxy, "pod IP changed").await;
    assert_eq!(w.addresses, [vec![10, 0, 0, 2]]);
    assert_eq!(tunnel(&w), TunnelProtocol::Hbone);
    assert_eq!(w.node, "node-a");

    // 3. The pod moves node: recreated under the same name on node-b. The registry and the
    //    ADS server debounce, so this is normally one delta; on a busy machine the deletion
    //    may be pushed on its own first. Either way only this workload is concerned.
    assert!(fake.delete::<Pod>(NS, POD));
    fake.apply(&pod("node-b", "10.0.0.2"));
    let w = loop {
        let resp = proxy.next(ADDRESS, "pod moved to node-b").await;
        if resp.resources.is_empty() {
            assert_eq!(
                resp.removed_resources,
                [POD_UID],
                "only the moving pod may be removed: {}",
                describe(&resp)
            );
            continue;
        }
        assert_eq!(names(&resp), [POD_UID], "{}", describe(&resp));
        assert!(resp.removed_resources.is_empty(), "{}", describe(&resp));
        break workload(&resp, POD_UID);
    };
    assert_eq!(w.node, "node-b");
    assert_eq!(w.addresses, [vec![10, 0, 0, 2]]);
    assert_eq!(tunnel(&w), TunnelProtocol::Hbone);

    // 4. An AuthorizationPolicy is added, then removed: Authorization deltas only (it has no
    //    selector, so no workload is resent).
    fake.apply(&deny_untrusted());
    let resp = proxy.next(AUTHZ, "policy added").await;
    assert_eq!(names(&resp), [POLICY_KEY], "{}", describe(&resp));
    assert!(resp.removed_resources.is_empty(), "{}", describe(&resp));
    let any = resp.resources[0].resource.as_ref().expect("resource body");
    assert_eq!(any.type_url, AUTHZ);
    let policy = Authorization::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        (policy.namespace.as_str(), policy.name.as_str()),
        (NS, POLICY)
    );
    assert_eq!(policy.action, Action::Deny as i32);
    assert_eq!(policy.scope, Scope::Namespace as i32);
    assert_eq!(policy.rules.len(), 1);

    assert!(fake.delete::<AuthorizationPolicy>(NS, POLICY));
    let resp = proxy.next(AUTHZ, "policy removed").await;
    assert!(resp.resources.is_empty(), "{}", describe(&resp));
    assert_eq!(resp.removed_resources, [POLICY_KEY]);

    // 5. The pod is deleted: only its removal is pushed (the Service stays).
    assert!(fake.delete::<Pod>(NS, POD));
    let resp = proxy.next(ADDRESS, "pod deleted").await;
    assert!(resp.resources.is_empty(), "{}", describe(&resp));
    assert_eq!(resp.removed_resources, [POD_UID]);

    // The served snapshot agrees: the Service is all that is left.
    let served = app.xds_snapshots.borrow().clone();
    assert_eq!(served.addresses.keys().collect::<Vec<_>>(), [SVC]);
    assert!(served.authorizations.is_empty());

    drop(proxy);
    within("app shutdown", app.shutdown()).await;
}
