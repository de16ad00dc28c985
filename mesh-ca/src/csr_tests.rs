use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, SanType, SignatureAlgorithm,
};

use super::*;

const SPIFFE: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// A CSR PEM with these SANs, signed by a fresh key of `alg`.
fn csr_with(alg: &'static SignatureAlgorithm, sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn accepts_p256_with_one_uri_san() {
    let csr = Csr::parse_pem(&csr_with(&PKCS_ECDSA_P256_SHA256, vec![uri(SPIFFE)])).unwrap();
    assert_eq!(csr.uri_san(), SPIFFE);
    assert_eq!(csr.key_kind(), KeyKind::EcdsaP256);
}

#[cfg(feature = "aws-lc")]
#[test]
fn accepts_rsa_2048() {
    let csr = Csr::parse_pem(&csr_with(&rcgen::PKCS_RSA_SHA256, vec![uri(SPIFFE)])).unwrap();
    assert_eq!(csr.key_kind(), KeyKind::Rsa(2048));
}

#[test]
fn refuses_other_keys() {
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let err = Csr::parse_pem(&csr_with(alg, vec![uri(SPIFFE)])).unwrap_err();
        assert!(
            matches!(err, CsrError::UnsupportedKey(_) | CsrError::Signature(_)),
            "{err}"
        );
    }
}

#[test]
fn refuses_bad_sans() {
    let cases: Vec<(Vec<SanType>, &str)> = vec![
        (vec![], "no SAN"),
        (vec![uri(SPIFFE), uri(SPIFFE)], "2 SANs"),
        (
            vec![uri(SPIFFE), uri("spiffe://cluster.local/ns/x/sa/y")],
            "2 SANs",
        ),
        (vec![uri(SPIFFE), dns("echo.default.svc")], "2 SANs"),
        (vec![dns("echo.default.svc")], "not a URI"),
    ];
    for (sans, want) in cases {
        let err = Csr::parse_pem(&csr_with(&PKCS_ECDSA_P256_SHA256, sans)).unwrap_err();
        assert!(matches!(err, CsrError::San(_)), "{err}");
        assert!(err.to_string().contains(want), "{err} should say {want}");
    }
}

#[test]
fn refuses_a_forged_signature() {
    let pem = csr_with(&PKCS_ECDSA_P256_SHA256, vec![uri(SPIFFE)]);
    let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // The SAN sits in the signed part: change one character of it.
    let at = der
        .windows(4)
        .position(|w| w == b"echo")
        .expect("SAN bytes in the DER");
    der[at] = b'f';
    let err = Csr::parse_der(&der).unwrap_err();
    assert!(matches!(err, CsrError::Signature(_)), "{err}");
}

#[test]
fn refuses_bad_pem_and_der() {
    for (input, want) in [
        ("", "no CERTIFICATE REQUEST"),
        ("garbage", "no CERTIFICATE REQUEST"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed",
        ),
    ] {
        let err = Csr::parse_pem(input).unwrap_err();
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
    let one = csr_with(&PKCS_ECDSA_P256_SHA256, vec![uri(SPIFFE)]);
    let err = Csr::parse_pem(&format!("{one}{one}")).unwrap_err();
    assert!(err.to_string().contains("several"), "{err}");

    let huge = "A".repeat(MAX_CSR_LEN + 1);
    assert!(matches!(Csr::parse_pem(&huge), Err(CsrError::TooLarge(_))));

    let der = CertificateSigningRequestDer::from_pem_slice(one.as_bytes()).unwrap();
    let mut trailing = der.as_ref().to_vec();
    trailing.push(0);
    assert!(matches!(
        Csr::parse_der(&trailing),
        Err(CsrError::Malformed(_))
    ));
}
