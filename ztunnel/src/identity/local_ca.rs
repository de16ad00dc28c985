//! A CA that signs workload certificates in-process from Istio's plug-in CA files, creating a
//! self-signed root when the directory is empty. Used without istiod (local config) and in
//! tests. The CA itself is `mesh-ca` (shared with istiod-compat); this is the adapter to
//! [`CertificateSource`].

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use mesh_ca::{Ca, CaError, Validity};
use mesh_core::Identity;

use super::{BoxFuture, CertificateSource, IdentityError, WorkloadCertificate};

/// An in-process CA issuing SPIFFE workload certificates for one trust domain.
pub struct LocalCa {
    ca: Ca,
    ttl: Duration,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("ca", &self.ca)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl From<CaError> for IdentityError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Io {
                action,
                path,
                source,
            } => IdentityError::Io {
                action,
                path,
                source,
            },
            CaError::InvalidFile { path, reason } => IdentityError::InvalidFile { path, reason },
            CaError::IncompleteCaDir {
                dir,
                present,
                missing,
            } => IdentityError::IncompleteCaDir {
                dir,
                present,
                missing,
            },
            CaError::Generate { what, source } => IdentityError::Generate { what, source },
            CaError::TrustDomainMismatch {
                requested,
                trust_domain,
            } => IdentityError::TrustDomainMismatch {
                requested,
                trust_domain,
            },
            CaError::BadValidity(reason) => IdentityError::BadValidity(reason),
            CaError::Csr(e) => IdentityError::Other(e.to_string()),
        }
    }
}

impl LocalCa {
    /// Loads the plug-in CA files from `dir` (`ca-cert.pem`, `ca-key.pem`, optional
    /// `root-cert.pem` and `cert-chain.pem`). If none of them exists (or `dir` is missing), a
    /// self-signed ECDSA P-256 root is created there first. Processes starting concurrently on
    /// the same directory serialize on a lock file and end up sharing one root.
    ///
    /// Leaves are valid for `ttl` and only issued for identities in `trust_domain`.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<LocalCa, IdentityError> {
        if !Validity::is_usable_ttl(ttl) {
            return Err(IdentityError::BadValidity(format!(
                "certificate ttl {ttl:?} must be positive and end before year 10000"
            )));
        }
        let ca = Ca::load_or_create(dir, trust_domain)?;
        Ok(LocalCa { ca, ttl })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// The trust roots handed out with every certificate.
    pub fn roots(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.ca.roots()
    }

    /// Issues a certificate for `id` with an explicit validity period (fresh P-256 key, the
    /// SPIFFE URI as the only SAN, random serial). [`CertificateSource::fetch`] uses
    /// now − 1 min .. now + ttl; tests use this to make expired or future certificates.
    pub fn issue(
        &self,
        id: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, IdentityError> {
        let issued = self.ca.issue(id, Validity::new(not_before, not_after)?)?;
        WorkloadCertificate::new(issued.chain, issued.key, self.ca.roots().to_vec())
    }
}

impl CertificateSource for LocalCa {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>> {
        Box::pin(async move {
            let validity = Validity::from_now(self.ttl)?;
            self.issue(id, validity.not_before, validity.not_after)
        })
    }
}

#[cfg(test)]
#[path = "local_ca_tests.rs"]
pub(crate) mod tests;
