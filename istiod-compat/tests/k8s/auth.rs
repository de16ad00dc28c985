//! TokenReviewAuthenticator against the fake apiserver's TokenReview.

use std::sync::Arc;

use http::Method;
use istiod_compat::ca::auth::{AuthError, Authenticator, Caller};
use istiod_compat::k8s::TokenReviewAuthenticator;
use istiod_compat::k8s::auth::{EXTRA_NODE_NAME, EXTRA_POD_NAME, EXTRA_POD_UID};
use istiod_compat::k8s::fake::{FakeApiServer, Fault, objects};
use istiod_compat::model::Snapshot;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::support::Harness;

const SA: &str = "system:serviceaccount:istio-system:ztunnel";

fn no_snapshot() -> watch::Receiver<Arc<Snapshot>> {
    watch::channel(Arc::new(Snapshot::default())).1
}

fn ztunnel(node: Option<&str>) -> Caller {
    Caller {
        namespace: "istio-system".into(),
        service_account: "ztunnel".into(),
        node: node.map(String::from),
    }
}

#[tokio::test]
async fn accepted_service_account_with_node_claim() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.set_token("t-node", SA, &[(EXTRA_NODE_NAME, "node-a")]);
    fake.set_token("t-plain", SA, &[]);
    let auth = TokenReviewAuthenticator::new(fake.client(), no_snapshot());
    assert_eq!(
        auth.authenticate("t-node").await,
        Ok(ztunnel(Some("node-a")))
    );
    assert_eq!(auth.authenticate("t-plain").await, Ok(ztunnel(None)));

    // The review asked for the istio-ca audience.
    let reviews: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.resource == "tokenreviews")
        .collect();
    assert_eq!(reviews.len(), 2);
    assert!(
        reviews
            .iter()
            .all(|r| r.method == "POST" && r.status == 201)
    );
}

/// The node comes from the bound pod as the registry sees it.
#[tokio::test]
async fn node_from_the_bound_pod_in_the_registry_snapshot() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::pod(
        "istio-system",
        "ztunnel-x",
        "ztunnel",
        "node-b",
        "10.0.0.5",
        &[],
    ));
    let mut h = Harness::start(fake);
    let s = h.synced().await;
    let uid = s.pods[&("istio-system".to_string(), "ztunnel-x".to_string())]
        .metadata
        .uid
        .clone()
        .unwrap();
    h.fake.set_token(
        "bound",
        SA,
        &[(EXTRA_POD_NAME, "ztunnel-x"), (EXTRA_POD_UID, &uid)],
    );
    h.fake.set_token(
        "stale",
        SA,
        &[
            (EXTRA_POD_NAME, "ztunnel-x"),
            (EXTRA_POD_UID, "some-older-pod"),
        ],
    );
    let auth = TokenReviewAuthenticator::new(h.fake.client(), h.rx.clone());
    assert_eq!(
        auth.authenticate("bound").await,
        Ok(ztunnel(Some("node-b")))
    );
    assert_eq!(auth.authenticate("stale").await, Ok(ztunnel(None)));

    // Once the pod is gone from the registry, its node is no longer vouched for.
    h.fake.delete::<Pod>("istio-system", "ztunnel-x");
    h.expect("pod gone", |s| s.pods.is_empty()).await;
    assert_eq!(auth.authenticate("bound").await, Ok(ztunnel(None)));
    h.stop().await.unwrap();
}

#[tokio::test]
async fn refused_tokens_are_invalid() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.set_token_with_audiences("wrong-aud", SA, &[], &["https://kubernetes.default.svc"]);
    fake.set_token("human", "alice", &[]);
    fake.set_token("node-user", "system:node:node-a", &[]);
    let auth = TokenReviewAuthenticator::new(fake.client(), no_snapshot());
    for token in ["unknown", "wrong-aud", "human", "node-user"] {
        let got = auth.authenticate(token).await;
        assert!(
            matches!(got, Err(AuthError::Invalid(_))),
            "{token}: {got:?}"
        );
    }
    assert_eq!(auth.authenticate("").await, Err(AuthError::Missing));
}

#[tokio::test]
async fn api_failures_are_unavailable() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.set_token("t", SA, &[]);
    let auth = TokenReviewAuthenticator::new(fake.client(), no_snapshot());
    fake.inject(
        Fault::status(500)
            .method(Method::POST)
            .resource("tokenreviews")
            .times(1),
    );
    let got = auth.authenticate("t").await;
    assert!(matches!(got, Err(AuthError::Unavailable(_))), "{got:?}");
    fake.inject(Fault::status(403).resource("tokenreviews").times(1));
    let got = auth.authenticate("t").await;
    assert!(
        matches!(got, Err(AuthError::Unavailable(_))),
        "no RBAC for reviews: {got:?}"
    );
    assert_eq!(auth.authenticate("t").await, Ok(ztunnel(None)), "recovers");

    // The apiserver going away.
    drop(fake);
    let got = auth.authenticate("t").await;
    assert!(matches!(got, Err(AuthError::Unavailable(_))), "{got:?}");
}
