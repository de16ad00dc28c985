//! A throwaway PKI for control-plane fakes: root → intermediate, a TLS server certificate
//! for `127.0.0.1`/`localhost`, and CSR signing (the fake Istio CA).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helper")]

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::tls::{ALPN_H2, provider};

/// Root and intermediate CA, plus an unrelated second root for multi-root bundles.
pub struct TestPki {
    intermediate: CertifiedIssuer<'static, KeyPair>,
    /// The root certificate, PEM.
    pub root_pem: String,
    /// The intermediate certificate, PEM.
    pub intermediate_pem: String,
    /// Another self-signed root (trusted alongside, signs nothing).
    pub other_root_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    params
}

fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A fresh PKI.
    pub fn new() -> TestPki {
        let root = CertifiedIssuer::self_signed(ca_params("test root"), key()).unwrap();
        let intermediate =
            CertifiedIssuer::signed_by(ca_params("test intermediate"), key(), &root).unwrap();
        let other = CertifiedIssuer::self_signed(ca_params("other root"), key()).unwrap();
        TestPki {
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            other_root_pem: other.pem(),
            intermediate,
        }
    }

    /// The root bundle a CA hands out: the real root and the unrelated one.
    pub fn root_bundle(&self) -> String {
        format!("{}{}", self.root_pem, self.other_root_pem)
    }

    /// The root as DER.
    pub fn root_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.root_pem.as_bytes()).unwrap()
    }

    /// A TLS 1.3 server config (ALPN h2) for `127.0.0.1` and `localhost`, chain leaf +
    /// intermediate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = key();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &self.intermediate).unwrap();
        let chain = vec![leaf.der().clone(), self.intermediate.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    }

    /// Signs a PEM CSR (signature verified) with the intermediate for `ttl`. The SANs are
    /// the CSR's unless `uri_san` replaces them. Returns the leaf PEM, or why the CSR was
    /// refused.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        ttl: Duration,
        uri_san: Option<&str>,
    ) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("bad CSR: {e}"))?;
        if let Some(uri) = uri_san {
            csr.params.subject_alt_names =
                vec![SanType::URI(uri.try_into().map_err(|e| format!("{e}"))?)];
        }
        let now = OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(1);
        csr.params.not_after = now + ttl;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        csr.params.use_authority_key_identifier_extension = true;
        let leaf = csr
            .signed_by(&self.intermediate)
            .map_err(|e| format!("signing: {e}"))?;
        Ok(leaf.pem())
    }
}
