//! Workload certificates: where they come from ([`CertificateSource`]) and the cache that
//! keeps one per SPIFFE identity fresh ([`CertManager`]).

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use mesh_core::Identity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A boxed, sendable future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors from certificate sources and the certificate manager.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Placeholder until the identity module lands.
    #[error("{0}")]
    Other(String),
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

/// Something that can issue a certificate for an identity (local CA, Istio CA client, ...).
pub trait CertificateSource: Send + Sync + 'static {
    /// Issues a fresh certificate (fresh key) for `id`.
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>>;
}
