//! Delta ADS: initial sync, incremental pushes, reconnects, on-demand, NACKs, bad types.

use std::collections::HashMap;

use prost::Message;
use tonic::Code;
use xds_proto::security::Authorization;
use xds_proto::workload::Address;
use xds_proto::workload::address::Type as AddressType;
use xds_proto::{ADDRESS_TYPE_URL as ADDRESS, AUTHORIZATION_TYPE_URL as AUTHZ};

use super::support::*;

const A: &str = "Kubernetes//v1/Pod/default/a";
const B: &str = "Kubernetes//v1/Pod/default/b";
const C: &str = "Kubernetes//v1/Pod/default/c";
const SVC: &str = "default/echo.default.svc.cluster.local";

fn base() -> istiod_compat::translate::XdsSnapshot {
    snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a1"),
            workload(B, [10, 0, 0, 2], "b1"),
            service("echo", [10, 96, 0, 10], "s1"),
        ],
        vec![authz("allow-echo", "p1")],
    )
}

/// Subscribes to both types (wildcard) and returns (address, authorization) responses, ACKed.
async fn sync(
    client: &mut AdsClient,
    initial: HashMap<String, String>,
) -> (
    xds_proto::discovery::DeltaDiscoveryResponse,
    xds_proto::discovery::DeltaDiscoveryResponse,
) {
    client.subscribe(ADDRESS, &[], &[], initial).await;
    let addresses = client.recv().await;
    assert_eq!(addresses.type_url, ADDRESS);
    client.ack(&addresses).await;
    client.subscribe(AUTHZ, &[], &[], HashMap::new()).await;
    let authorizations = client.recv().await;
    assert_eq!(authorizations.type_url, AUTHZ);
    client.ack(&authorizations).await;
    (addresses, authorizations)
}

#[tokio::test]
async fn initial_wildcard_sync() {
    let ads = AdsHarness::start(base()).await;
    let mut client = ads
        .connect("ztunnel~10.0.0.9~ztunnel-1.istio-system~istio-system.svc.cluster.local")
        .await;
    let (addresses, authorizations) = sync(&mut client, HashMap::new()).await;

    assert_eq!(names(&addresses), [A, B, SVC]);
    assert!(addresses.removed_resources.is_empty());
    assert!(!addresses.nonce.is_empty());
    assert_eq!(versions(&addresses)[A], "a1");
    let a = addresses.resources.iter().find(|r| r.name == A).unwrap();
    let any = a.resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS);
    let decoded = Address::decode(any.value.as_slice()).unwrap();
    assert!(matches!(decoded.r#type, Some(AddressType::Workload(w)) if w.uid == A));

    assert_eq!(names(&authorizations), ["default/allow-echo"]);
    let p = authorizations.resources[0].resource.as_ref().unwrap();
    assert_eq!(p.type_url, AUTHZ);
    assert_eq!(
        Authorization::decode(p.value.as_slice()).unwrap().name,
        "allow-echo"
    );
    assert_ne!(
        addresses.nonce, authorizations.nonce,
        "a nonce per response"
    );

    assert_eq!(ads.metrics.connected_proxies(), 1);
    assert_eq!(ads.metrics.pushes(ADDRESS), 1);
}

#[tokio::test]
async fn update_pushes_only_the_change_and_the_removal() {
    let ads = AdsHarness::start(base()).await;
    let mut client = ads.connect("node-1").await;
    sync(&mut client, HashMap::new()).await;

    // a changes, the service goes away; b and the policy are untouched.
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a2"),
            workload(B, [10, 0, 0, 2], "b1"),
        ],
        vec![authz("allow-echo", "p1")],
    ));
    let update = client.recv().await;
    assert_eq!(update.type_url, ADDRESS);
    assert_eq!(names(&update), [A]);
    assert_eq!(versions(&update)[A], "a2");
    assert_eq!(update.removed_resources, [SVC]);
    client.ack(&update).await;

    // The next response is the policy change: nothing was sent for the unchanged policy
    // in between.
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a2"),
            workload(B, [10, 0, 0, 2], "b1"),
        ],
        vec![authz("allow-echo", "p2")],
    ));
    let update = client.recv().await;
    assert_eq!(update.type_url, AUTHZ);
    assert_eq!(names(&update), ["default/allow-echo"]);
    assert!(update.removed_resources.is_empty());
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_what_changed() {
    let ads = AdsHarness::start(base()).await;
    let mut first = ads.connect("node-1").await;
    let (addresses, _) = sync(&mut first, HashMap::new()).await;
    let had = versions(&addresses);

    // b changes, c appears, the service goes away. The first stream seeing the push proves
    // the server serves it; then the proxy "restarts" with what it had before.
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a1"),
            workload(B, [10, 0, 0, 2], "b2"),
            workload(C, [10, 0, 0, 3], "c1"),
        ],
        vec![authz("allow-echo", "p1")],
    ));
    assert_eq!(names(&first.recv().await), [B, C]);
    drop(first);

    let mut second = ads.connect("node-1").await;
    second.subscribe(ADDRESS, &[], &[], had).await;
    let resync = second.recv().await;
    assert_eq!(names(&resync), [B, C], "a is unchanged and not resent");
    assert_eq!(versions(&resync)[B], "b2");
    assert_eq!(resync.removed_resources, [SVC]);
}

#[tokio::test]
async fn on_demand_by_ip() {
    let ads = AdsHarness::start(base()).await;
    let mut client = ads.connect("node-1").await;
    // ztunnel's XDS_ON_DEMAND start: subscribe and unsubscribe "*" = nothing yet.
    client
        .subscribe(ADDRESS, &["*"], &["*"], HashMap::new())
        .await;
    let first = client.recv().await;
    assert!(first.resources.is_empty() && first.removed_resources.is_empty());
    client.ack(&first).await;

    client
        .subscribe(ADDRESS, &["/10.0.0.2"], &[], HashMap::new())
        .await;
    let found = client.recv().await;
    assert_eq!(names(&found), [B]);
    assert_eq!(found.resources[0].aliases, ["/10.0.0.2"]);
    client.ack(&found).await;

    // A service VIP resolves to the service.
    client
        .subscribe(ADDRESS, &["/10.96.0.10"], &[], HashMap::new())
        .await;
    let svc = client.recv().await;
    assert_eq!(names(&svc), [SVC]);
    assert_eq!(svc.resources[0].aliases, ["/10.96.0.10"]);
    client.ack(&svc).await;

    // An unknown address is answered as removed, so the waiter does not hang.
    client
        .subscribe(ADDRESS, &["/10.9.9.9"], &[], HashMap::new())
        .await;
    let missing = client.recv().await;
    assert!(missing.resources.is_empty());
    assert_eq!(missing.removed_resources, ["/10.9.9.9"]);
    client.ack(&missing).await;

    // Only what was asked for is followed: a changes (not sent), b changes (sent).
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a2"),
            workload(B, [10, 0, 0, 2], "b2"),
            service("echo", [10, 96, 0, 10], "s1"),
        ],
        vec![authz("allow-echo", "p1")],
    ));
    let update = client.recv().await;
    assert_eq!(names(&update), [B]);
}

#[tokio::test]
async fn nack_is_logged_counted_and_not_resent() {
    let (logs, _guard) = Logs::capture();
    let ads = AdsHarness::start(base()).await;
    let mut client = ads.connect("ztunnel-node-7").await;
    client.subscribe(ADDRESS, &[], &[], HashMap::new()).await;
    let initial = client.recv().await;
    client
        .nack(&initial, &format!("{B}: unknown enum value 42"))
        .await;
    // Requests are handled in order: this answer proves the NACK was processed.
    client.subscribe(ADDRESS, &[A], &[], HashMap::new()).await;
    assert_eq!(names(&client.recv().await), [A]);
    assert_eq!(ads.metrics.nacks(ADDRESS), 1);
    let text = logs.text();
    assert!(
        text.contains("NACK") && text.contains("ztunnel-node-7") && text.contains(B),
        "NACK log with node id and resource: {text}"
    );
    assert!(text.contains("unknown enum value 42"), "{text}");

    // Unrelated change: only a is sent; the rejected b is not resent.
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a2"),
            workload(B, [10, 0, 0, 2], "b1"),
            service("echo", [10, 96, 0, 10], "s1"),
        ],
        vec![authz("allow-echo", "p1")],
    ));
    let update = client.recv().await;
    assert_eq!(names(&update), [A]);

    // Once b changes it is sent again.
    ads.publish(snapshot(
        vec![
            workload(A, [10, 0, 0, 1], "a2"),
            workload(B, [10, 0, 0, 2], "b2"),
            service("echo", [10, 96, 0, 10], "s1"),
        ],
        vec![authz("allow-echo", "p1")],
    ));
    let update = client.recv().await;
    assert_eq!(names(&update), [B]);
}

#[tokio::test]
async fn unknown_type_url_is_an_error_status() {
    let ads = AdsHarness::start(base()).await;
    let mut client = ads.connect("node-1").await;
    client
        .subscribe(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            &[],
            &[],
            HashMap::new(),
        )
        .await;
    let status = client.recv_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("envoy.config.cluster.v3.Cluster"));
}
