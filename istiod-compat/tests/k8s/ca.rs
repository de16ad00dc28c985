//! load_or_create_ca_secret against the fake apiserver.

use std::collections::BTreeMap;

use http::Method;
use istiod_compat::k8s::ca_secret::{
    CA_CERT_KEY, CA_KEY_KEY, CERT_CHAIN_KEY, PLUGIN_CA_SECRET, ROOT_CERT_KEY,
    SELF_SIGNED_CA_SECRET, generate_self_signed_root,
};
use istiod_compat::k8s::fake::{FakeApiServer, Fault};
use istiod_compat::k8s::{CaSource, K8sError, load_or_create_ca_secret};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const NS: &str = "istio-system";

fn secret(name: &str, entries: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

fn secret_creates(fake: &FakeApiServer) -> Vec<u16> {
    fake.requests()
        .into_iter()
        .filter(|r| r.resource == "secrets" && r.method == "POST")
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn created_once_then_reused() {
    let fake = FakeApiServer::start().await.unwrap();
    let client = fake.client();
    let first = load_or_create_ca_secret(&client, NS, SELF_SIGNED_CA_SECRET)
        .await
        .unwrap();
    assert_eq!(first.source, CaSource::SelfSignedCreated);
    assert!(first.cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(first.key_pem.contains("PRIVATE KEY"));
    assert_eq!(first.root_cert_pem, first.cert_pem);

    let stored: Secret = fake.get(NS, SELF_SIGNED_CA_SECRET).unwrap();
    assert_eq!(stored.type_.as_deref(), Some("istio.io/ca-root"));
    let data = stored.data.unwrap();
    assert_eq!(data[CA_CERT_KEY].0, first.cert_pem.as_bytes());
    assert_eq!(data[CA_KEY_KEY].0, first.key_pem.as_bytes());

    let second = load_or_create_ca_secret(&client, NS, SELF_SIGNED_CA_SECRET)
        .await
        .unwrap();
    assert_eq!(second.source, CaSource::SelfSigned);
    assert_eq!(
        (second.cert_pem, second.key_pem),
        (first.cert_pem, first.key_pem)
    );
    assert_eq!(secret_creates(&fake), vec![201]);
}

/// Replicas starting together: one create wins, everyone ends up with its root.
#[tokio::test]
async fn concurrent_starts_agree_on_one_root() {
    let fake = FakeApiServer::start().await.unwrap();
    let client = fake.client();
    let results = futures_util::future::join_all(
        (0..8).map(|_| load_or_create_ca_secret(&client, NS, SELF_SIGNED_CA_SECRET)),
    )
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let stored: Secret = fake.get(NS, SELF_SIGNED_CA_SECRET).unwrap();
    let stored_cert = stored.data.unwrap()[CA_CERT_KEY].0.clone();
    for r in &results {
        assert_eq!(r.cert_pem.as_bytes(), stored_cert.as_slice());
        assert_eq!(r.key_pem, results[0].key_pem);
    }
    let created = results
        .iter()
        .filter(|r| r.source == CaSource::SelfSignedCreated)
        .count();
    assert_eq!(created, 1);
    assert_eq!(
        secret_creates(&fake).iter().filter(|s| **s == 201).count(),
        1,
        "exactly one successful create"
    );
}

/// The race made deterministic: our read misses the Secret, our create gets 409, and the
/// re-read returns the winner's root untouched.
#[tokio::test]
async fn create_conflict_reads_the_winners_secret() {
    let fake = FakeApiServer::start().await.unwrap();
    let (cert, key) = generate_self_signed_root("cluster.local").unwrap();
    fake.apply(&secret(
        SELF_SIGNED_CA_SECRET,
        &[(CA_CERT_KEY, &cert), (CA_KEY_KEY, &key)],
    ));
    // Two GETs miss: `cacerts` (absent anyway) and our Secret (there, but "not yet").
    fake.inject(
        Fault::status(404)
            .method(Method::GET)
            .resource("secrets")
            .times(2),
    );
    let got = load_or_create_ca_secret(&fake.client(), NS, SELF_SIGNED_CA_SECRET)
        .await
        .unwrap();
    assert_eq!(got.source, CaSource::SelfSigned);
    assert_eq!(
        (got.cert_pem.as_str(), got.key_pem.as_str()),
        (cert.as_str(), key.as_str())
    );
    assert_eq!(secret_creates(&fake), vec![409]);
}

#[tokio::test]
async fn plug_in_cacerts_win() {
    let fake = FakeApiServer::start().await.unwrap();
    let (root, _) = generate_self_signed_root("root.example").unwrap();
    let (inter, inter_key) = generate_self_signed_root("inter.example").unwrap();
    fake.apply(&secret(
        PLUGIN_CA_SECRET,
        &[
            (CA_CERT_KEY, &inter),
            (CA_KEY_KEY, &inter_key),
            (ROOT_CERT_KEY, &root),
            (CERT_CHAIN_KEY, &format!("{inter}{root}")),
        ],
    ));
    let got = load_or_create_ca_secret(&fake.client(), NS, SELF_SIGNED_CA_SECRET)
        .await
        .unwrap();
    assert_eq!(got.source, CaSource::PlugIn);
    assert_eq!(got.cert_pem, inter);
    assert_eq!(got.root_cert_pem, root);
    assert_eq!(got.cert_chain_pem, format!("{inter}{root}"));
    assert!(
        fake.get::<Secret>(NS, SELF_SIGNED_CA_SECRET).is_none(),
        "no self-signed root made"
    );
}

#[tokio::test]
async fn unusable_secret_is_an_error_and_left_alone() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&secret(SELF_SIGNED_CA_SECRET, &[(CA_CERT_KEY, "garbage")]));
    let got = load_or_create_ca_secret(&fake.client(), NS, SELF_SIGNED_CA_SECRET).await;
    assert!(
        matches!(got, Err(K8sError::InvalidCaSecret { .. })),
        "{got:?}"
    );
    assert!(secret_creates(&fake).is_empty());
    let stored: Secret = fake.get(NS, SELF_SIGNED_CA_SECRET).unwrap();
    assert_eq!(stored.data.unwrap()[CA_CERT_KEY].0, b"garbage");
}

#[tokio::test]
async fn api_errors_surface() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.inject(Fault::status(500).resource("secrets"));
    let got = load_or_create_ca_secret(&fake.client(), NS, SELF_SIGNED_CA_SECRET).await;
    assert!(
        matches!(got, Err(K8sError::Api { op: "get", .. })),
        "{got:?}"
    );
}
