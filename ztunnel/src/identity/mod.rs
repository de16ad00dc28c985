//! Workload certificates: where they come from ([`CertificateSource`]) and the cache that
//! keeps one per SPIFFE identity fresh ([`CertManager`]).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_core::Identity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod caclient;
mod local_ca;
mod manager;
pub(crate) mod x509;

pub use caclient::{CaClient, IMPERSONATED_IDENTITY};
pub use local_ca::LocalCa;
pub use manager::{CertDump, CertManager, CertificateDump};

#[cfg(test)]
pub(crate) use local_ca::tests::write_intermediate_layout;

/// A boxed, sendable future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors from certificate sources and the certificate manager.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Anything that fits no other variant (kept for sources written elsewhere).
    #[error("{0}")]
    Other(String),
    /// A file or directory could not be read, written or created.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing (`reading`, `creating`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is unusable.
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA directory holds some of the plug-in CA files but not the ones required.
    #[error(
        "CA directory {} is incomplete: found {present:?} but not {missing:?}",
        dir.display()
    )]
    IncompleteCaDir {
        /// The CA directory.
        dir: PathBuf,
        /// CA files that exist.
        present: Vec<&'static str>,
        /// CA files that are required and absent.
        missing: Vec<&'static str>,
    },
    /// Key or certificate generation failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The source only issues certificates for another trust domain.
    #[error(
        "cannot issue a certificate for {requested}: this CA serves trust domain {trust_domain}"
    )]
    TrustDomainMismatch {
        /// The identity asked for.
        requested: Identity,
        /// The trust domain of the CA.
        trust_domain: String,
    },
    /// A requested validity period cannot be encoded (zero TTL, or beyond year 9999).
    #[error("invalid certificate validity: {0}")]
    BadValidity(String),
    /// A certificate obtained from a source is malformed or unusable.
    #[error("invalid workload certificate: {0}")]
    InvalidCertificate(String),
    /// The certificate held for an identity has expired and no fresh one could be fetched.
    #[error("certificate for {identity} expired at {not_after}")]
    Expired {
        /// The identity.
        identity: Identity,
        /// Expiry, RFC 3339.
        not_after: String,
    },
    /// Fetching failed and no valid certificate is held; the manager keeps retrying.
    #[error("certificate for {identity} unavailable: {source}")]
    Unavailable {
        /// The identity.
        identity: Identity,
        /// The last fetch error (shared by every waiting caller).
        #[source]
        source: Arc<IdentityError>,
    },
    /// The Istio CA refused or failed the request (gRPC status code and message).
    #[error("Istio CA {address}: {status}")]
    CaRequest {
        /// The CA address.
        address: String,
        /// `<code>: <message>[: <transport error>]`.
        status: String,
    },
    /// The CA could not be reached or its credentials could not be prepared (channel,
    /// token file).
    #[error("Istio CA {address}: {source}")]
    CaConnection {
        /// The CA address.
        address: String,
        /// What failed.
        #[source]
        source: crate::control::ControlError,
    },
    /// The CA issued a certificate for another identity than the one requested.
    #[error("the CA issued a certificate for {issued}, not the requested {requested}")]
    IdentityMismatch {
        /// The identity asked for.
        requested: Identity,
        /// The identity in the issued leaf.
        issued: Identity,
    },
    /// The identity was forgotten (see [`CertManager::forget`]) while a caller waited.
    #[error("certificate for {0} is no longer managed")]
    Forgotten(Identity),
    /// The certificate manager cannot run its refresh task (no tokio runtime).
    #[error("cannot start certificate refresh for {identity}: {reason}")]
    NoRuntime {
        /// The identity.
        identity: Identity,
        /// Why the task could not start.
        reason: String,
    },
}

/// A leaf certificate for one identity, with its key, chain and the trust roots.
#[derive(Debug)]
pub struct WorkloadCertificate {
    /// The identity in the leaf's URI SAN.
    pub identity: Identity,
    /// Leaf first, then intermediates (never the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors for the mesh.
    pub roots: Vec<CertificateDer<'static>>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Leaf serial number, hex.
    pub serial: String,
}

impl WorkloadCertificate {
    /// Builds a workload certificate from what a CA returned, reading the identity (first
    /// SPIFFE URI SAN), validity and serial number from the leaf (`chain[0]`).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::InvalidCertificate("empty certificate chain".into()))?;
        let info = x509::LeafInfo::parse(leaf).map_err(IdentityError::InvalidCertificate)?;
        let identity = info.identities().next().ok_or_else(|| {
            IdentityError::InvalidCertificate(format!(
                "leaf has no SPIFFE URI SAN (URIs: {:?})",
                info.uris
            ))
        })?;
        if roots.is_empty() {
            return Err(IdentityError::InvalidCertificate("no trust roots".into()));
        }
        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        })
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Something that can issue a certificate for an identity (local CA, Istio CA client, ...).
pub trait CertificateSource: Send + Sync + 'static {
    /// Issues a fresh certificate (fresh key) for `id`.
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>>;
}
