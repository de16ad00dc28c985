//! Root-certificate ConfigMaps in enrolled namespaces.

use std::time::Duration;

use http::Method;
use istiod_compat::k8s::K8sError;
use istiod_compat::k8s::fake::{FakeApiServer, Fault, objects};
use istiod_compat::k8s::root_configmap::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY};
use istiod_compat::k8s::{publish_root_configmaps, run_root_configmaps};
use k8s_openapi::api::core::v1::ConfigMap;
use tokio_util::sync::CancellationToken;

use super::support::{AMBIENT, Harness, PATIENCE};

fn root_in(fake: &FakeApiServer, ns: &str) -> Option<String> {
    let cm: ConfigMap = fake.get(ns, ROOT_CONFIGMAP)?;
    cm.data?.get(ROOT_CONFIGMAP_KEY).cloned()
}

fn resource_version(fake: &FakeApiServer, ns: &str) -> Option<String> {
    fake.get::<ConfigMap>(ns, ROOT_CONFIGMAP)?
        .metadata
        .resource_version
}

#[tokio::test]
async fn published_into_enrolled_namespaces_only() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("a", &[AMBIENT]));
    fake.apply(&objects::namespace(
        "b",
        &[("istio.io/dataplane-mode", "none")],
    ));
    fake.apply(&objects::namespace("c", &[AMBIENT]));
    fake.apply(&objects::namespace("d", &[]));
    let mut h = Harness::start(fake);
    let snapshot = h.synced().await;
    let client = h.fake.client();

    assert_eq!(
        publish_root_configmaps(&client, &snapshot, "ROOT-1")
            .await
            .unwrap(),
        2
    );
    assert_eq!(root_in(&h.fake, "a").as_deref(), Some("ROOT-1"));
    assert_eq!(root_in(&h.fake, "c").as_deref(), Some("ROOT-1"));
    assert_eq!(root_in(&h.fake, "b"), None);
    assert_eq!(root_in(&h.fake, "d"), None);
    let cm: ConfigMap = h.fake.get("a", ROOT_CONFIGMAP).unwrap();
    assert_eq!(
        cm.metadata
            .labels
            .unwrap()
            .get("istio.io/config")
            .map(String::as_str),
        Some("true")
    );

    // Idempotent: the same root again changes nothing.
    let rv = resource_version(&h.fake, "a");
    publish_root_configmaps(&client, &snapshot, "ROOT-1")
        .await
        .unwrap();
    assert_eq!(resource_version(&h.fake, "a"), rv);
    // A new root replaces the old one.
    publish_root_configmaps(&client, &snapshot, "ROOT-2")
        .await
        .unwrap();
    assert_eq!(root_in(&h.fake, "a").as_deref(), Some("ROOT-2"));
    assert_ne!(resource_version(&h.fake, "a"), rv);

    // The apply went through server-side apply with our field manager.
    assert!(h.fake.requests().iter().any(|r| r.resource == "configmaps"
        && r.method == "PATCH"
        && r.query.contains("fieldManager=istiod-compat")));
    h.stop().await.unwrap();
}

#[tokio::test]
async fn failures_name_the_namespaces_and_the_rest_are_published() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("a", &[AMBIENT]));
    fake.apply(&objects::namespace("b", &[AMBIENT]));
    let mut h = Harness::start(fake);
    let snapshot = h.synced().await;
    h.fake.inject(
        Fault::status(500)
            .method(Method::PATCH)
            .resource("configmaps")
            .times(1),
    );
    let got = publish_root_configmaps(&h.fake.client(), &snapshot, "ROOT").await;
    match got {
        Err(K8sError::RootConfigMaps { namespaces, .. }) => assert_eq!(namespaces, vec!["a"]),
        other => panic!("expected a partial failure, got {other:?}"),
    }
    assert_eq!(root_in(&h.fake, "b").as_deref(), Some("ROOT"));
    h.stop().await.unwrap();
}

/// The long-running publisher follows enrolment and retries failures.
#[tokio::test]
async fn run_follows_enrolment_and_retries() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("a", &[AMBIENT]));
    fake.apply(&objects::namespace("later", &[]));
    fake.apply(&objects::namespace("istio-system", &[]));
    let mut h = Harness::start(fake);
    h.synced().await;
    // The first apply fails: the publisher retries on its own.
    h.fake
        .inject(Fault::status(500).resource("configmaps").times(1));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_root_configmaps(
        h.fake.client(),
        h.rx.clone(),
        "ROOT".into(),
        std::collections::BTreeSet::from(["istio-system".to_string()]),
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    h.fake
        .wait_until(PATIENCE, "root in a", |f| root_in(f, "a").is_some())
        .await;
    // The control plane's own namespace (where ztunnel runs) always gets it, enrolled or not.
    h.fake
        .wait_until(PATIENCE, "root in istio-system", |f| {
            root_in(f, "istio-system").is_some()
        })
        .await;
    assert!(root_in(&h.fake, "later").is_none(), "not enrolled yet");

    h.fake.apply(&objects::namespace("later", &[AMBIENT]));
    h.fake
        .wait_until(PATIENCE, "root in later", |f| root_in(f, "later").is_some())
        .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    h.stop().await.unwrap();
}
