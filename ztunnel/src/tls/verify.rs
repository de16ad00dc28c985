//! Certificate verifiers: webpki chain validation to the mesh roots plus SPIFFE checks.
//!
//! Client side: the server's leaf must carry one of the expected identities (no hostname
//! check, no SNI). Server side: the client's leaf must be in our trust domain; which identity
//! may connect is authorization's business, not TLS's.

use std::sync::Arc;

use mesh_core::Identity;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

use super::TlsError;
use crate::identity::x509::LeafInfo;

/// Reads the URI SANs of a peer leaf, as a rustls error if it does not parse.
fn peer_uris(end_entity: &CertificateDer<'_>) -> Result<LeafInfo, Error> {
    LeafInfo::parse(end_entity).map_err(|reason| {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            TlsError::BadPeerCertificate(reason),
        ))))
    })
}

fn rejected(err: TlsError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Client-side verifier: chain to the mesh roots, then a SPIFFE identity match.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    pub(crate) webpki: Arc<WebPkiServerVerifier>,
    pub(crate) expected: Vec<Identity>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki validates the chain (roots, validity, serverAuth EKU) before it compares the
        // name, so a name mismatch means the chain itself is good. The name is a dummy: the
        // SPIFFE identity below is what we check.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let leaf = peer_uris(end_entity)?;
        if leaf.identities().any(|id| self.expected.contains(&id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rejected(TlsError::IdentityMismatch {
                expected: self.expected.clone(),
                presented: leaf.uris,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Server-side verifier: client certificate required, chained to the mesh roots, with a
/// URI SAN in our trust domain.
#[derive(Debug)]
pub(crate) struct TrustDomainVerifier {
    pub(crate) webpki: Arc<dyn ClientCertVerifier>,
    pub(crate) trust_domain: String,
}

impl TrustDomainVerifier {
    pub(crate) fn new(
        roots: Arc<rustls::RootCertStore>,
        trust_domain: &str,
    ) -> Result<Self, TlsError> {
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, super::provider())
            .build()
            .map_err(TlsError::Verifier)?;
        Ok(TrustDomainVerifier {
            webpki,
            trust_domain: trust_domain.to_string(),
        })
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Every mesh client has exactly one certificate: hints would only add bytes.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let leaf = peer_uris(end_entity)?;
        if leaf
            .identities()
            .any(|id| id.trust_domain() == self.trust_domain)
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rejected(TlsError::TrustDomainMismatch {
                expected: self.trust_domain.clone(),
                presented: leaf.uris,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
