//! The Istio CA over gRPC: who may get which certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use istiod_compat::ca::Outcome;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Verifies `chain` (leaf, intermediates..., root bundle last) as a TLS peer would, and
/// returns the leaf's URI SANs and lifetime.
fn verify(chain: &[String], roots: &[CertificateDer<'static>]) -> (Vec<String>, Duration) {
    assert!(chain.len() >= 2, "leaf and root bundle at least: {chain:?}");
    let bundle = certs(chain.last().unwrap());
    assert_eq!(bundle, roots, "the last element is the root bundle");
    let mut store = RootCertStore::empty();
    for root in &bundle {
        store.add(root.clone()).unwrap();
    }
    let leaf = certs(&chain[0]).remove(0);
    let intermediates: Vec<_> = chain[1..chain.len() - 1]
        .iter()
        .flat_map(|p| certs(p))
        .collect();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&leaf, &intermediates, UnixTime::now())
        .expect("the chain verifies to the root");

    let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
    let sans = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other}"),
        })
        .collect();
    let validity = parsed.validity();
    let nb: SystemTime = validity.not_before.to_datetime().into();
    let na: SystemTime = validity.not_after.to_datetime().into();
    (sans, na.duration_since(nb).unwrap())
}

#[tokio::test]
async fn node_proxy_impersonates_an_identity_running_on_its_node() {
    let ca = CaHarness::start(DAY).await;
    let echo = spiffe("default", "echo");
    let resp = ca
        .request(Some(NODE1_TOKEN), csr(&[&echo]), Some(&echo), 3600)
        .await
        .unwrap();
    let (sans, lifetime) = verify(&resp.cert_chain, ca.ca.roots());
    assert_eq!(sans, [echo]);
    assert!(lifetime <= Duration::from_secs(3600 + 60) && lifetime >= Duration::from_secs(3600));
    assert_eq!(ca.metrics.requests(Outcome::Issued), 1);
}

#[tokio::test]
async fn identity_without_a_pod_on_the_node_is_denied() {
    let ca = CaHarness::start(DAY).await;
    let echo = spiffe("default", "echo");
    // echo runs on node-1, not node-2.
    let err = ca
        .request(Some(NODE2_TOKEN), csr(&[&echo]), Some(&echo), 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node-2"), "{}", err.message());

    // An identity running nowhere.
    let other = spiffe("default", "other");
    let err = ca
        .request(Some(NODE1_TOKEN), csr(&[&other]), Some(&other), 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A trusted account whose token names no node.
    let err = ca
        .request(
            Some(NODELESS_ZTUNNEL_TOKEN),
            csr(&[&echo]),
            Some(&echo),
            3600,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("no node"), "{}", err.message());
    assert_eq!(ca.metrics.requests(Outcome::PermissionDenied), 3);
}

#[tokio::test]
async fn missing_or_wrong_token_is_unauthenticated() {
    let ca = CaHarness::start(DAY).await;
    let echo = spiffe("default", "echo");
    let err = ca
        .request(None, csr(&[&echo]), None, 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = ca
        .request(Some("not-a-token"), csr(&[&echo]), None, 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(ca.metrics.requests(Outcome::Unauthenticated), 2);
}

#[tokio::test]
async fn malformed_csrs_are_invalid_arguments() {
    let ca = CaHarness::start(DAY).await;
    let echo = spiffe("default", "echo");
    let cases = [
        csr(&[&echo, &spiffe("default", "other")]),
        csr(&[&echo, "dns:echo.default.svc"]),
        csr(&[]),
        csr(&["dns:echo.default.svc"]),
        csr(&["spiffe://evil.local/ns/default/sa/echo"]),
        csr(&["https://example.com/echo"]),
        "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n".into(),
        String::new(),
    ];
    for (i, bad) in cases.into_iter().enumerate() {
        let err = ca
            .request(Some(ECHO_TOKEN), bad, None, 3600)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
    }
    // A foreign trust domain in the impersonation metadata, too.
    let foreign = "spiffe://evil.local/ns/default/sa/echo";
    let err = ca
        .request(Some(NODE1_TOKEN), csr(&[&echo]), Some(foreign), 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn workloads_get_only_their_own_identity() {
    let ca = CaHarness::start(DAY).await;
    let echo = spiffe("default", "echo");
    let other = spiffe("default", "other");

    // Its own identity: fine.
    let resp = ca
        .request(Some(ECHO_TOKEN), csr(&[&echo]), None, 3600)
        .await
        .unwrap();
    assert_eq!(
        verify(&resp.cert_chain, ca.ca.roots()).0,
        std::slice::from_ref(&echo)
    );

    // Another identity, with or without impersonation metadata: denied.
    let err = ca
        .request(Some(ECHO_TOKEN), csr(&[&other]), None, 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = ca
        .request(Some(ECHO_TOKEN), csr(&[&other]), Some(&other), 3600)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("not a trusted node account"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn ttl_is_capped_at_the_maximum() {
    let max = Duration::from_secs(2 * 3600);
    let ca = CaHarness::start(max).await;
    let echo = spiffe("default", "echo");
    for requested in [48 * 3600, 0, -5] {
        let resp = ca
            .request(Some(ECHO_TOKEN), csr(&[&echo]), None, requested)
            .await
            .unwrap();
        let (_, lifetime) = verify(&resp.cert_chain, ca.ca.roots());
        assert!(
            lifetime >= max && lifetime <= max + Duration::from_secs(61),
            "requested {requested}s: lifetime {lifetime:?}"
        );
    }
    let resp = ca
        .request(Some(ECHO_TOKEN), csr(&[&echo]), None, 600)
        .await
        .unwrap();
    let (_, lifetime) = verify(&resp.cert_chain, ca.ca.roots());
    assert!(lifetime <= Duration::from_secs(661), "{lifetime:?}");
}
