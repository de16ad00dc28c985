use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use mesh_ca::{BACKDATE, CA_CERT, CA_KEY, CERT_CHAIN, LOCK_FILE, ROOT_CERT, generate_root};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const TD: &str = "cluster.local";
const TTL: Duration = Duration::from_secs(3600);

fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

/// Writes an Istio plug-in layout signed by an intermediate: returns (root, intermediate).
/// `with_chain` controls whether `cert-chain.pem` is written.
pub(crate) fn write_intermediate_layout(
    dir: &Path,
    with_chain: bool,
) -> (CertificateDer<'static>, CertificateDer<'static>) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "test root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int_params.distinguished_name = DistinguishedName::new();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "test intermediate");
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();

    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(CA_CERT), int.pem()).unwrap();
    fs::write(dir.join(CA_KEY), int_key.serialize_pem()).unwrap();
    fs::write(dir.join(ROOT_CERT), root.pem()).unwrap();
    if with_chain {
        fs::write(dir.join(CERT_CHAIN), format!("{}{}", int.pem(), root.pem())).unwrap();
    }
    (root.der().clone(), int.der().clone())
}

#[test]
fn creates_root_in_missing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/ca");
    let ca = LocalCa::load_or_create(&dir, TD, TTL).unwrap();

    assert!(dir.join(CA_CERT).exists());
    let mode = fs::metadata(dir.join(CA_KEY)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    assert!(!dir.join(ROOT_CERT).exists());

    assert_eq!(ca.roots().len(), 1);
    let (_, root) = X509Certificate::from_der(&ca.roots()[0]).unwrap();
    assert!(root.is_ca());
    assert_eq!(root.subject(), root.issuer());
    assert!(root.subject().to_string().contains(TD));
    assert!(
        ca.ca.intermediates().is_empty(),
        "a root is never sent in the chain"
    );
}

#[test]
fn reload_reuses_existing_root() {
    let tmp = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    let second = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    assert_eq!(first.roots(), second.roots());
}

#[test]
fn concurrent_creation_shares_one_root() {
    const N: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(tmp.path().join("ca"));
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let dir = dir.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                LocalCa::load_or_create(&dir, TD, TTL)
                    .unwrap()
                    .roots()
                    .to_vec()
            })
        })
        .collect();
    let roots: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        roots.iter().all(|r| r == &roots[0]),
        "all racers share one root"
    );
    let on_disk = fs::read(dir.join(CA_CERT)).unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(&on_disk).unwrap(),
        roots[0][0]
    );
    let leftovers: Vec<_> = fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test]
async fn leaf_has_spiffe_uri_only_and_mesh_usages() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    let before = SystemTime::now();
    let cert = ca.fetch(&id("echo")).await.unwrap();

    assert_eq!(cert.identity, id("echo"));
    assert_eq!(cert.chain.len(), 1);
    assert_eq!(cert.roots, ca.roots());
    assert!(matches!(cert.key, PrivateKeyDer::Pkcs8(_)));
    assert!(cert.not_before < before, "backdated");
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(lifetime >= TTL && lifetime <= TTL + BACKDATE + Duration::from_secs(2));

    let (_, leaf) = X509Certificate::from_der(&cert.chain[0]).unwrap();
    assert!(leaf.subject().as_raw().len() <= 2, "empty subject");
    assert!(!leaf.is_ca());
    assert_eq!(crate::identity::x509::hex(leaf.raw_serial()), cert.serial);
    let mut saw_san = false;
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                saw_san = true;
                assert_eq!(
                    san.general_names,
                    vec![GeneralName::URI(
                        "spiffe://cluster.local/ns/default/sa/echo"
                    )]
                );
                assert!(ext.critical, "SAN is critical with an empty subject");
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ku.digital_signature() && ku.key_encipherment());
                assert!(!ku.key_cert_sign());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
            }
            _ => {}
        }
    }
    assert!(saw_san);

    let other = ca.fetch(&id("echo")).await.unwrap();
    assert_ne!(other.serial, cert.serial, "random serial per fetch");
    assert_ne!(
        other.key.secret_der(),
        cert.key.secret_der(),
        "fresh key per fetch"
    );
}

#[test]
fn refuses_unusable_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    for ttl in [Duration::ZERO, Duration::from_secs(u64::MAX)] {
        let err = LocalCa::load_or_create(tmp.path(), TD, ttl).unwrap_err();
        assert!(matches!(err, IdentityError::BadValidity(_)), "{err}");
    }
    assert!(
        !tmp.path().join(CA_CERT).exists(),
        "nothing created on bad input"
    );
}

#[tokio::test]
async fn refuses_foreign_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    let err = ca
        .fetch(&Identity::new("other.domain", "default", "echo"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::TrustDomainMismatch { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn intermediate_layout_with_cert_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, int) = write_intermediate_layout(tmp.path(), true);
    let ca = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    let cert = ca.fetch(&id("echo")).await.unwrap();
    assert_eq!(cert.roots, vec![root]);
    assert_eq!(cert.chain.len(), 2);
    assert_eq!(cert.chain[1], int);
    assert!(
        !tmp.path().join(LOCK_FILE).exists(),
        "complete dirs are never locked"
    );
}

#[tokio::test]
async fn intermediate_layout_without_cert_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, int) = write_intermediate_layout(tmp.path(), false);
    let ca = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    let cert = ca.fetch(&id("echo")).await.unwrap();
    assert_eq!(cert.roots, vec![root]);
    assert_eq!(cert.chain[1..], [int]);
}

#[test]
fn errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();

    fs::write(tmp.path().join(CA_CERT), "garbage").unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");

    // A valid certificate with somebody else's key.
    let other = generate_root(TD).unwrap();
    fs::write(tmp.path().join(CA_CERT), other.cert_pem).unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");

    fs::write(
        tmp.path().join(CA_KEY),
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");

    // A fresh CA with an unparseable trust bundle.
    let tmp = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap();
    fs::write(tmp.path().join(ROOT_CERT), "").unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}

#[test]
fn incomplete_dir_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = write_intermediate_layout(tmp.path(), false);
    fs::remove_file(tmp.path().join(CA_KEY)).unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(
        matches!(&err, IdentityError::IncompleteCaDir { missing, .. } if missing == &[CA_KEY]),
        "{err}"
    );
    assert!(err.to_string().contains("ca-key.pem"));
    let root_on_disk = fs::read(tmp.path().join(ROOT_CERT)).unwrap();
    assert_eq!(CertificateDer::from_pem_slice(&root_on_disk).unwrap(), root);

    // Only a trust bundle: still not "empty", so no root is invented next to it.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(ROOT_CERT), "x").unwrap();
    let err = LocalCa::load_or_create(tmp.path(), TD, TTL).unwrap_err();
    assert!(
        matches!(err, IdentityError::IncompleteCaDir { .. }),
        "{err}"
    );
    assert!(!tmp.path().join(CA_CERT).exists());
}
