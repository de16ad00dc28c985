//! rustls configuration for HBONE: TLS 1.3 only, mesh roots, SPIFFE SAN checks.
//!
//! - [`client_config`]: presents our workload chain, no SNI, no resumption, and accepts a
//!   server only if its leaf carries one of the expected SPIFFE identities.
//! - [`server_config`]: requires a client certificate from the mesh roots whose SPIFFE
//!   identity is in our trust domain.
//! - [`peer_identity`]: the identity used for policy, metrics and logs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mesh_core::Identity;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::identity::WorkloadCertificate;
use crate::identity::x509::LeafInfo;

mod provider;
mod verify;

pub use provider::{BACKEND, Backend, provider};

/// The ALPN protocol of HBONE (HTTP/2), on both sides.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building TLS configs, and the reasons peers are rejected.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The workload certificate carries no trust roots.
    #[error("no trust roots in the workload certificate for {0}")]
    NoRoots(Identity),
    /// A trust root could not be parsed.
    #[error("trust root #{index} of {identity}: {source}")]
    BadRoot {
        /// Owner of the certificate whose roots are bad.
        identity: Identity,
        /// Position in `roots`.
        index: usize,
        /// Why webpki refused it.
        #[source]
        source: Box<rustls::Error>,
    },
    /// The webpki verifier could not be built.
    #[error("building certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// A client config was requested without any acceptable server identity.
    #[error("no expected server identity given")]
    NoExpectedIdentities,
    /// rustls refused part of the configuration (protocol versions, our chain or key).
    #[error("configuring {what} for {identity}: {source}")]
    Config {
        /// Which part.
        what: &'static str,
        /// Owner of the workload certificate.
        identity: Identity,
        /// The rustls error.
        #[source]
        source: Box<rustls::Error>,
    },
    /// The server presented none of the identities the client expects.
    #[error(
        "server identity mismatch: expected one of {expected:?}, presented URI SANs {presented:?}"
    )]
    IdentityMismatch {
        /// Acceptable identities.
        expected: Vec<Identity>,
        /// URI SANs of the server's leaf.
        presented: Vec<String>,
    },
    /// The client's certificate is not in our trust domain.
    #[error(
        "client trust domain mismatch: expected a SPIFFE identity in {expected}, presented URI SANs {presented:?}"
    )]
    TrustDomainMismatch {
        /// Our trust domain.
        expected: String,
        /// URI SANs of the client's leaf.
        presented: Vec<String>,
    },
    /// The peer's leaf certificate could not be parsed.
    #[error("unparseable peer certificate: {0}")]
    BadPeerCertificate(String),
}

/// The server name handed to rustls when dialing: `0.0.0.0`. With SNI disabled it is never
/// sent, and the verifier ignores it (identities are checked instead).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// The SPIFFE identity of a peer: the first URI SAN of the leaf (`certs[0]`) that parses as
/// one. `None` without certificates or such a SAN.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<Identity> {
    let leaf = LeafInfo::parse(certs.first()?).ok()?;
    leaf.identities().next()
}

fn root_store(cert: &WorkloadCertificate) -> Result<Arc<RootCertStore>, TlsError> {
    if cert.roots.is_empty() {
        return Err(TlsError::NoRoots(cert.identity.clone()));
    }
    let mut store = RootCertStore::empty();
    for (index, root) in cert.roots.iter().enumerate() {
        store
            .add(root.clone())
            .map_err(|source| TlsError::BadRoot {
                identity: cert.identity.clone(),
                index,
                source: Box::new(source),
            })?;
    }
    Ok(Arc::new(store))
}

fn config_err(
    what: &'static str,
    cert: &WorkloadCertificate,
) -> impl FnOnce(rustls::Error) -> TlsError {
    let identity = cert.identity.clone();
    move |source| TlsError::Config {
        what,
        identity,
        source: Box::new(source),
    }
}

/// Client config for dialing a peer that must present one of `expected` (OR'd): TLS 1.3,
/// ALPN `h2`, no SNI, no session resumption, presenting `cert`'s chain. Dial with
/// [`server_name`].
pub fn client_config(
    cert: &WorkloadCertificate,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentities);
    }
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(root_store(cert)?, provider.clone())
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(verify::IdentityVerifier { webpki, expected });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("protocol versions", cert))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(config_err("client certificate", cert))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Server config presenting `cert`: TLS 1.3, ALPN `h2`, a client certificate required,
/// verified against `cert.roots` and in the same trust domain as `cert.identity`.
pub fn server_config(cert: &WorkloadCertificate) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(verify::TrustDomainVerifier::new(
        root_store(cert)?,
        cert.identity.trust_domain(),
    )?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err("protocol versions", cert))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(config_err("server certificate", cert))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Clients never resume; don't mint tickets nobody will use.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
