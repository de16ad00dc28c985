//! The registry: initial sync, changes flowing into snapshots, debouncing, missing CRDs,
//! watch failures, re-lists and bookmarks.

use std::time::Duration;

use http::Method;
use istiod_compat::crd::{AuthorizationPolicy, AuthorizationPolicySpec, PeerAuthentication};
use istiod_compat::k8s::fake::{FakeApiServer, Fault, objects};
use istiod_compat::k8s::{Kind, RegistryConfig};
use istiod_compat::model::Snapshot;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};

use super::support::{AMBIENT, Harness, PATIENCE, key};

fn pod_ip(s: &Snapshot, ns: &str, name: &str) -> Option<String> {
    s.pods
        .get(&key(ns, name))
        .and_then(|p| p.status.as_ref())
        .and_then(|st| st.pod_ip.clone())
}

fn pod_node(s: &Snapshot, ns: &str, name: &str) -> Option<String> {
    s.pods
        .get(&key(ns, name))
        .and_then(|p| p.spec.as_ref())
        .and_then(|sp| sp.node_name.clone())
}

fn label<'a>(
    labels: &'a Option<std::collections::BTreeMap<String, String>>,
    k: &str,
) -> Option<&'a str> {
    labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)
}

fn deny_all(ns: &str, name: &str) -> AuthorizationPolicy {
    objects::authorization_policy(
        ns,
        name,
        AuthorizationPolicySpec {
            action: Some("DENY".into()),
            ..Default::default()
        },
    )
}

/// Every kind in the cluster before start shows up in the first snapshot, and nothing is
/// published before every list is complete (a failing pod list delays, never truncates).
#[tokio::test]
async fn first_snapshot_is_complete_even_when_a_list_fails_first() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("app", &[AMBIENT]));
    fake.apply(&objects::node("node-a"));
    fake.apply(&objects::pod("app", "p1", "sa", "node-a", "10.0.0.1", &[]));
    fake.apply(&objects::service(
        "app",
        "svc",
        "10.96.0.10",
        &[80],
        &[("app", "x")],
    ));
    fake.apply(&objects::endpoint_slice(
        "app",
        "svc-1",
        "svc",
        &["10.0.0.1"],
        &[80],
    ));
    fake.apply(&deny_all("app", "deny"));
    fake.apply(&objects::peer_authentication("app", "strict", "STRICT"));
    fake.inject(
        Fault::status(500)
            .method(Method::GET)
            .resource("pods")
            .watch(false)
            .times(1),
    );

    let mut h = Harness::start(fake);
    let s = h.synced().await;
    assert!(s.namespaces.contains_key("app"));
    assert!(s.nodes.contains_key("node-a"));
    assert_eq!(pod_ip(&s, "app", "p1").as_deref(), Some("10.0.0.1"));
    assert!(s.services.contains_key(&key("app", "svc")));
    assert!(s.endpoint_slices.contains_key(&key("app", "svc-1")));
    assert!(s.authorization_policies.contains_key(&key("app", "deny")));
    assert!(s.peer_authentications.contains_key(&key("app", "strict")));
    assert_eq!(
        h.stats.snapshots_published(),
        1,
        "one complete snapshot, no partial one"
    );
    assert_eq!(
        h.stats.watch_errors(Kind::Pod),
        1,
        "the failed list was counted"
    );

    // Watches ask for bookmarks and resume from the list's version.
    let pod_watches: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.resource == "pods" && r.watch)
        .collect();
    assert!(!pod_watches.is_empty());
    assert!(
        pod_watches[0].query.contains("allowWatchBookmarks=true"),
        "{:?}",
        pod_watches[0]
    );
    assert!(
        pod_watches[0].query.contains("resourceVersion="),
        "{:?}",
        pod_watches[0]
    );
    h.stop().await.unwrap();
}

/// A pod becomes enrolled (namespace label, then pod label), changes IP, moves node and is
/// deleted: each step is in the next snapshot.
#[tokio::test]
async fn pod_lifecycle_reaches_snapshots() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("app", &[]));
    fake.apply(&objects::node("node-a"));
    fake.apply(&objects::node("node-b"));
    fake.apply(&objects::pod("app", "p1", "sa", "node-a", "10.0.0.1", &[]));
    let mut h = Harness::start(fake);
    let s = h.synced().await;
    assert_eq!(label(&s.namespaces["app"].metadata.labels, AMBIENT.0), None);

    h.fake.apply(&objects::namespace("app", &[AMBIENT]));
    h.expect("namespace enrolled", |s| {
        s.namespaces
            .get("app")
            .is_some_and(|ns| label(&ns.metadata.labels, AMBIENT.0) == Some("ambient"))
    })
    .await;

    h.fake.apply(&objects::pod(
        "app",
        "p1",
        "sa",
        "node-a",
        "10.0.0.1",
        &[AMBIENT],
    ));
    h.expect("pod labelled", |s| {
        s.pods
            .get(&key("app", "p1"))
            .is_some_and(|p| label(&p.metadata.labels, AMBIENT.0) == Some("ambient"))
    })
    .await;

    h.fake.apply(&objects::pod(
        "app",
        "p1",
        "sa",
        "node-a",
        "10.0.0.2",
        &[AMBIENT],
    ));
    h.expect("pod IP changed", |s| {
        pod_ip(s, "app", "p1").as_deref() == Some("10.0.0.2")
    })
    .await;

    // A pod never changes node in place: it is recreated under the same name elsewhere.
    assert!(h.fake.delete::<Pod>("app", "p1"));
    h.fake.apply(&objects::pod(
        "app",
        "p1",
        "sa",
        "node-b",
        "10.0.1.7",
        &[AMBIENT],
    ));
    let s = h
        .expect("pod on node-b", |s| {
            pod_node(s, "app", "p1").as_deref() == Some("node-b")
        })
        .await;
    assert_eq!(pod_ip(&s, "app", "p1").as_deref(), Some("10.0.1.7"));

    assert!(h.fake.delete::<Pod>("app", "p1"));
    h.expect("pod deleted", |s| !s.pods.contains_key(&key("app", "p1")))
        .await;
    assert_eq!(h.stats.total_watch_errors(), 0);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn policies_added_and_removed() {
    let fake = FakeApiServer::start().await.unwrap();
    let mut h = Harness::start(fake);
    let s = h.synced().await;
    assert!(s.authorization_policies.is_empty() && s.peer_authentications.is_empty());

    h.fake.apply(&deny_all("app", "deny"));
    h.fake.apply(&objects::peer_authentication(
        "istio-system",
        "mesh",
        "STRICT",
    ));
    let s = h
        .expect("policies added", |s| {
            s.authorization_policies.contains_key(&key("app", "deny"))
                && s.peer_authentications
                    .contains_key(&key("istio-system", "mesh"))
        })
        .await;
    assert_eq!(
        s.authorization_policies[&key("app", "deny")]
            .spec
            .action
            .as_deref(),
        Some("DENY")
    );

    h.fake.delete::<AuthorizationPolicy>("app", "deny");
    h.fake.delete::<PeerAuthentication>("istio-system", "mesh");
    h.expect("policies removed", |s| {
        s.authorization_policies.is_empty() && s.peer_authentications.is_empty()
    })
    .await;
    h.stop().await.unwrap();
}

/// A burst of changes makes one snapshot (debounce), and writes to kinds the registry does
/// not watch make none.
#[tokio::test]
async fn a_burst_makes_one_snapshot() {
    let fake = FakeApiServer::start().await.unwrap();
    let config = RegistryConfig {
        // Wide enough that a busy machine cannot split the burst.
        debounce: Duration::from_millis(300),
        max_delay: Duration::from_secs(10),
    };
    let mut h = Harness::start_with(fake, config);
    h.synced().await;
    let before = h.stats.snapshots_published();

    for i in 0..20 {
        h.fake.apply(&objects::pod(
            "app",
            &format!("p{i}"),
            "sa",
            "node-a",
            &format!("10.0.0.{i}"),
            &[],
        ));
    }
    h.expect("20 pods", |s| s.pods.len() == 20).await;
    assert_eq!(h.stats.snapshots_published(), before + 1);

    // Unwatched kinds and no-op writes publish nothing; the next real change is the next
    // snapshot.
    h.fake.apply(&ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("cm".into()),
            namespace: Some("app".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    h.fake
        .apply(&objects::pod("app", "p0", "sa", "node-a", "10.0.0.0", &[]));
    h.fake.apply(&objects::namespace("marker", &[]));
    h.expect("marker", |s| s.namespaces.contains_key("marker"))
        .await;
    assert_eq!(h.stats.snapshots_published(), before + 2);
    h.stop().await.unwrap();
}

/// Without the Istio CRDs the registry syncs without policies, and picks them up once
/// they are installed.
#[tokio::test]
async fn missing_crds_then_installed() {
    let fake = FakeApiServer::builder()
        .istio_crds(false)
        .start()
        .await
        .unwrap();
    fake.apply(&objects::namespace("app", &[]));
    let mut h = Harness::start(fake);
    let s = h.synced().await;
    assert!(s.namespaces.contains_key("app"));
    assert!(s.authorization_policies.is_empty());
    assert!(h.stats.is_missing(Kind::AuthorizationPolicy));
    assert!(h.stats.is_missing(Kind::PeerAuthentication));
    assert!(!h.stats.is_missing(Kind::Pod));

    h.fake.set_istio_crds(true);
    h.fake.apply(&deny_all("app", "deny"));
    h.expect("policy after CRD install", |s| {
        s.authorization_policies.contains_key(&key("app", "deny"))
    })
    .await;
    assert!(!h.stats.is_missing(Kind::AuthorizationPolicy));
    h.stop().await.unwrap();
}

/// Failing watches are counted and retried; the last snapshot stays published meanwhile
/// and changes flow again afterwards.
#[tokio::test]
async fn watch_failures_keep_the_last_snapshot_and_recover() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::pod("app", "p1", "sa", "node-a", "10.0.0.1", &[]));
    let mut h = Harness::start(fake);
    h.synced().await;

    h.fake
        .inject(Fault::status(500).resource("pods").watch(true).times(2));
    h.fake.disconnect_watches();
    let stats = h.stats.clone();
    h.fake
        .wait_until(PATIENCE, "two failed pod watches", |_| {
            stats.watch_errors(Kind::Pod) >= 2
        })
        .await;
    assert_eq!(
        pod_ip(&h.rx.borrow(), "app", "p1").as_deref(),
        Some("10.0.0.1"),
        "last snapshot still published"
    );

    h.fake
        .apply(&objects::pod("app", "p1", "sa", "node-a", "10.0.0.9", &[]));
    h.expect("change after recovery", |s| {
        pod_ip(s, "app", "p1").as_deref() == Some("10.0.0.9")
    })
    .await;
    h.stop().await.unwrap();
}

/// A watch that cannot resume (410 Gone after compaction) re-lists, and the re-list's view
/// replaces the old one, deletions included.
#[tokio::test]
async fn relist_after_410_replaces_the_store() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::pod("app", "old", "sa", "node-a", "10.0.0.1", &[]));
    let mut h = Harness::start(fake);
    h.synced().await;

    // Pods watches fail until the world has moved on and history is gone.
    h.fake
        .inject(Fault::status(500).resource("pods").watch(true));
    h.fake.disconnect_watches();
    let stats = h.stats.clone();
    h.fake
        .wait_until(PATIENCE, "pod watch failing", |_| {
            stats.watch_errors(Kind::Pod) >= 1
        })
        .await;
    h.fake.delete::<Pod>("app", "old");
    h.fake
        .apply(&objects::pod("app", "new", "sa", "node-a", "10.0.0.2", &[]));
    h.fake.compact();
    h.fake.clear_faults();

    let s = h
        .expect("re-listed pods", |s| {
            s.pods.contains_key(&key("app", "new")) && !s.pods.contains_key(&key("app", "old"))
        })
        .await;
    assert_eq!(s.pods.len(), 1);
    let pod_lists = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.resource == "pods" && !r.watch && r.method == "GET")
        .count();
    assert!(pod_lists >= 2, "a re-list happened ({pod_lists} lists)");
    h.stop().await.unwrap();
}

/// Bookmarks move the resume point: after a bookmark and a dropped connection the watch
/// resumes from the bookmark's version, without re-listing.
#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let fake = FakeApiServer::start().await.unwrap();
    let mut h = Harness::start(fake);
    h.synced().await;
    h.fake
        .wait_until(PATIENCE, "pod watch open", |f| watch_count(f, "pods") >= 1)
        .await;

    // Unwatched writes move the global version; a bookmark tells the watches.
    for i in 0..3 {
        h.fake.apply(&ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("cm{i}")),
                namespace: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let bookmarked = h.fake.resource_version();
    h.fake.bookmark();
    h.fake.disconnect_watches();
    let want = format!("resourceVersion={bookmarked}");
    h.fake
        .wait_until(PATIENCE, "pod watch resumed from the bookmark", |f| {
            f.requests()
                .iter()
                .any(|r| r.resource == "pods" && r.watch && r.query.contains(&want))
        })
        .await;
    h.fake.apply(&objects::namespace("late", &[]));
    h.expect("change after resuming", |s| {
        s.namespaces.contains_key("late")
    })
    .await;
    assert_eq!(list_count(&h.fake, "pods"), 1, "no re-list");
    assert_eq!(h.stats.total_watch_errors(), 0);
    h.stop().await.unwrap();
}

/// Watches ended by the server (`timeoutSeconds`, capped at 1 s here) restart from their
/// last version without re-listing, and keep delivering.
#[tokio::test]
async fn watch_timeouts_restart_without_relisting() {
    let fake = FakeApiServer::builder()
        .max_watch_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let mut h = Harness::start(fake);
    h.synced().await;
    h.fake
        .wait_until(
            PATIENCE,
            "namespace watch restarted after its timeout",
            |f| watch_count(f, "namespaces") >= 2,
        )
        .await;
    h.fake.apply(&objects::namespace("late", &[]));
    h.expect("change after watch restarts", |s| {
        s.namespaces.contains_key("late")
    })
    .await;
    assert_eq!(list_count(&h.fake, "namespaces"), 1, "no re-list");
    assert_eq!(h.stats.total_watch_errors(), 0);
    h.stop().await.unwrap();
}

fn list_count(fake: &FakeApiServer, resource: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.resource == resource && !r.watch && r.method == "GET")
        .count()
}

fn watch_count(fake: &FakeApiServer, resource: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.resource == resource && r.watch)
        .count()
}

/// Namespace deletions flow too, and shutdown returns Ok.
#[tokio::test]
async fn namespace_deleted_and_clean_shutdown() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&objects::namespace("gone", &[AMBIENT]));
    let mut h = Harness::start(fake);
    assert!(h.synced().await.namespaces.contains_key("gone"));
    h.fake.delete::<Namespace>("", "gone");
    h.expect("namespace deleted", |s| !s.namespaces.contains_key("gone"))
        .await;
    h.stop().await.unwrap();
}
