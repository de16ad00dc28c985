//! [`CaClient`]: workload certificates from an Istio CA (istiod or `istiod-compat`) over
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` (reference §8).
//!
//! Every fetch generates a fresh ECDSA P-256 key and a CSR with an empty subject and exactly
//! one URI SAN, the SPIFFE identity. The response chain is leaf first, then intermediates;
//! its last element is the root bundle (one or more PEM roots), which becomes the trust
//! store.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_core::Identity;
use prost_types::value::Kind;
use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use tracing::warn;
use x509_parser::prelude::{FromDer, X509Certificate};
use xds_proto::ca::IstioCertificateRequest;
use xds_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;

use super::{BoxFuture, CertificateSource, IdentityError, WorkloadCertificate};
use crate::config::parse_pem_certs;
use crate::control::{AuthHeaders, ControlTarget, describe_status};

/// Metadata key asking the CA to issue for another identity (shared mode).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A [`CertificateSource`] backed by an Istio CA.
pub struct CaClient {
    address: String,
    channel: Channel,
    auth: AuthHeaders,
    ttl: Duration,
    impersonate: bool,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .field("ttl", &self.ttl)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// A client for the CA at `target` (the channel connects lazily; call within a tokio
    /// runtime). Certificates are
    /// requested for `ttl`. With `impersonate` (shared mode: one proxy for many
    /// identities) each request names the identity in `ImpersonatedIdentity` metadata and
    /// the issued leaf must carry exactly that identity; without it (dedicated mode) the CA
    /// decides from the token.
    pub fn new(
        target: ControlTarget,
        auth: AuthHeaders,
        ttl: Duration,
        impersonate: bool,
    ) -> Result<CaClient, IdentityError> {
        let channel = target
            .channel()
            .map_err(|source| IdentityError::CaConnection {
                address: target.address.clone(),
                source,
            })?;
        Ok(CaClient {
            address: target.address,
            channel,
            auth,
            ttl,
            impersonate,
        })
    }

    async fn request(&self, id: &Identity) -> Result<WorkloadCertificate, IdentityError> {
        let (csr, key) = csr(id)?;
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        self.auth
            .apply(request.metadata_mut())
            .await
            .map_err(|source| IdentityError::CaConnection {
                address: self.address.clone(),
                source,
            })?;
        let response = IstioCertificateServiceClient::new(self.channel.clone())
            .create_certificate(request)
            .await
            .map_err(|status| IdentityError::CaRequest {
                address: self.address.clone(),
                status: describe_status(&status),
            })?
            .into_inner();
        let cert = certificate(response.cert_chain, &key)?;
        if cert.identity != *id {
            if self.impersonate {
                return Err(IdentityError::IdentityMismatch {
                    requested: id.clone(),
                    issued: cert.identity.clone(),
                });
            }
            warn!(requested = %id, issued = %cert.identity,
                "the CA issued a certificate for another identity (it follows the token)");
        }
        Ok(cert)
    }
}

impl CertificateSource for CaClient {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>> {
        Box::pin(self.request(id))
    }
}

/// A fresh P-256 key and a PEM CSR for `id`: empty subject, one URI SAN.
fn csr(id: &Identity) -> Result<(String, KeyPair), IdentityError> {
    let generate = |what| move |source| IdentityError::Generate { what, source };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate("workload key"))?;
    let uri =
        rcgen::string::Ia5String::try_from(id.to_string()).map_err(generate("workload URI SAN"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(generate("certificate signing request"))?;
    Ok((csr, key))
}

/// `cert_chain` → certificate: every element but the last is the chain (leaf first), the
/// last is the root bundle. The leaf must hold `key`'s public key.
fn certificate(
    cert_chain: Vec<String>,
    key: &KeyPair,
) -> Result<WorkloadCertificate, IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidCertificate(reason);
    let Some((roots_pem, chain_pems)) = cert_chain.split_last() else {
        return Err(invalid("the CA returned an empty cert_chain".into()));
    };
    if chain_pems.is_empty() {
        return Err(invalid(
            "cert_chain has one element; expected the leaf (and intermediates), then the root bundle"
                .into(),
        ));
    }
    let mut chain: Vec<CertificateDer<'static>> = Vec::with_capacity(chain_pems.len());
    for (i, pem) in chain_pems.iter().enumerate() {
        let certs = parse_pem_certs(pem.as_bytes())
            .map_err(|e| invalid(format!("cert_chain[{i}]: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(format!("cert_chain[{i}] holds no certificate")));
        }
        chain.extend(certs);
    }
    let roots = parse_pem_certs(roots_pem.as_bytes())
        .map_err(|e| invalid(format!("root bundle (last cert_chain element): {e}")))?;
    if roots.is_empty() {
        return Err(invalid(
            "root bundle (last cert_chain element) holds no certificate".into(),
        ));
    }
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| invalid(format!("leaf: cannot parse: {e}")))?;
    if leaf.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(invalid(
            "the leaf's public key is not the key of our request".into(),
        ));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    WorkloadCertificate::new(chain, key, roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_has_empty_subject_and_one_uri_san() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
        let (pem, _key) = csr(&id).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(parsed.params.distinguished_name.iter().count(), 0);
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).unwrap();
        assert_eq!(parsed.params.subject_alt_names, vec![SanType::URI(uri)]);
        assert_eq!(parsed.public_key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn malformed_chains_are_refused() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        for (chain, reason) in [
            (vec![], "empty"),
            (vec!["x".to_string()], "one element"),
            (
                vec!["garbage".into(), "garbage".into()],
                "holds no certificate",
            ),
        ] {
            let err = certificate(chain, &key).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }
}
