use std::net::Ipv4Addr;
use std::path::PathBuf;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::{BACKDATE, LOCK_FILE};

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

fn csr_for(san: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn sans(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                    other => format!("{other}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks each certificate is signed by the next, and the last by one of `roots`.
fn verify_chain(chain: &[CertificateDer<'_>], roots: &[CertificateDer<'_>]) {
    let parsed: Vec<_> = chain
        .iter()
        .map(|c| X509Certificate::from_der(c).unwrap().1)
        .collect();
    for pair in parsed.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .expect("signed by the next certificate");
    }
    let last = parsed.last().unwrap();
    let ok = roots.iter().any(|r| {
        let (_, root) = X509Certificate::from_der(r).unwrap();
        last.verify_signature(Some(root.public_key())).is_ok()
    });
    assert!(ok, "chain does not end at a root");
}

fn not_after(der: &CertificateDer<'_>) -> SystemTime {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.validity().not_after.to_datetime().into()
}

#[test]
fn creates_then_reuses_a_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/ca");
    let first = Ca::load_or_create(&dir, TD).unwrap();
    assert!(dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists());
    assert!(dir.join(LOCK_FILE).exists());
    assert!(
        first.intermediates().is_empty(),
        "a root is never in the chain"
    );
    let second = Ca::load_or_create(&dir, TD).unwrap();
    assert_eq!(first.roots(), second.roots());
    let loaded = Ca::load(&dir, TD).unwrap();
    assert_eq!(first.roots(), loaded.roots());
}

#[test]
fn load_never_creates() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Ca::load(tmp.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::IncompleteCaDir { .. }), "{err}");
    assert!(!tmp.path().join(CA_CERT).exists());
}

#[test]
fn signs_a_csr_for_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(tmp.path(), TD).unwrap();
    let (key, csr) = csr_for(&id("echo").to_string());
    let before = SystemTime::now();
    let chain = ca.sign_csr(&csr, &id("echo"), DAY).unwrap();
    assert_eq!(chain.len(), 1, "leaf only: the CA certificate is the root");
    verify_chain(&chain, ca.roots());
    assert_eq!(
        sans(&chain[0]),
        vec!["URI:spiffe://cluster.local/ns/default/sa/echo"]
    );
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice(),
        "the leaf certifies the CSR's key"
    );
    assert!(!leaf.is_ca());
    let nb: SystemTime = leaf.validity().not_before.to_datetime().into();
    assert!(nb <= before - BACKDATE + Duration::from_secs(1));
    let lifetime = not_after(&chain[0]).duration_since(nb).unwrap();
    assert!(lifetime >= DAY && lifetime <= DAY + BACKDATE + Duration::from_secs(2));
}

#[test]
fn csr_san_must_be_the_identity_of_this_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(tmp.path(), TD).unwrap();
    let (_, csr) = csr_for(&id("echo").to_string());
    let err = ca.sign_csr(&csr, &id("other"), DAY).unwrap_err();
    assert!(
        matches!(err, CaError::Csr(CsrError::SanMismatch { .. })),
        "{err}"
    );
    let foreign = Identity::new("evil.local", "default", "echo");
    let (_, csr) = csr_for(&foreign.to_string());
    let err = ca.sign_csr(&csr, &foreign, DAY).unwrap_err();
    assert!(matches!(err, CaError::TrustDomainMismatch { .. }), "{err}");
    let err = ca.sign_csr("nope", &id("echo"), DAY).unwrap_err();
    assert!(matches!(err, CaError::Csr(CsrError::Pem(_))), "{err}");
}

/// A root and an intermediate CA (short-lived) as plug-in material.
fn intermediate_material(ca_ttl: Duration) -> (CaMaterial, CertificateDer<'static>) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    root_params
        .distinguished_name
        .push(DnType::CommonName, "root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    int_params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    int_params.not_after = asn1_time(SystemTime::now() + ca_ttl).unwrap();
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let material = CaMaterial {
        ca_cert: int.pem().into_bytes(),
        ca_key: int_key.serialize_pem().into_bytes(),
        root_cert: Some(root.pem().into_bytes()),
        cert_chain: Some(format!("{}{}", int.pem(), root.pem()).into_bytes()),
    };
    (material, root.der().clone())
}

#[test]
fn intermediate_chain_and_expiry_cap() {
    let (material, root) = intermediate_material(Duration::from_secs(3600));
    let ca = Ca::from_material(&material, TD, Path::new("secret istio-system/cacerts")).unwrap();
    assert_eq!(ca.roots(), [root]);
    let (_, csr) = csr_for(&id("echo").to_string());
    let chain = ca.sign_csr(&csr, &id("echo"), DAY).unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
    verify_chain(&chain, ca.roots());
    assert!(
        not_after(&chain[0]) <= not_after(&chain[1]),
        "a leaf never outlives its CA"
    );
    assert!(
        ca.root_bundle_pem()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
}

#[test]
fn material_errors_name_the_origin_and_file() {
    let (mut material, _) = intermediate_material(DAY);
    let origin = PathBuf::from("secret istio-system/cacerts");
    material.ca_key = generate_root(TD).unwrap().key_pem.into_bytes();
    let err = Ca::from_material(&material, TD, &origin).unwrap_err();
    assert!(
        err.to_string()
            .contains("secret istio-system/cacerts/ca-key.pem"),
        "{err}"
    );
    material.ca_cert = b"garbage".to_vec();
    let err = Ca::from_material(&material, TD, &origin).unwrap_err();
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
}

#[test]
fn serving_certificate_has_dns_and_ip_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(tmp.path(), TD).unwrap();
    let cert = ca
        .issue_server(
            &["istiod.istio-system.svc".into(), "localhost".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Validity::from_now(DAY).unwrap(),
        )
        .unwrap();
    verify_chain(&cert.chain, ca.roots());
    assert_eq!(
        sans(&cert.chain[0]),
        vec![
            "DNS:istiod.istio-system.svc",
            "DNS:localhost",
            "IP:[127, 0, 0, 1]"
        ]
    );
    assert!(matches!(cert.key, PrivateKeyDer::Pkcs8(_)));
}

#[test]
fn workload_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(tmp.path(), TD).unwrap();
    let cert = ca
        .issue(&id("echo"), Validity::from_now(DAY).unwrap())
        .unwrap();
    verify_chain(&cert.chain, ca.roots());
    assert_eq!(
        sans(&cert.chain[0]),
        vec!["URI:spiffe://cluster.local/ns/default/sa/echo"]
    );
    let err = ca
        .issue(
            &Identity::new("other", "default", "echo"),
            Validity::from_now(DAY).unwrap(),
        )
        .unwrap_err();
    assert!(matches!(err, CaError::TrustDomainMismatch { .. }), "{err}");
}
