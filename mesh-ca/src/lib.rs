//! The mesh certificate authority, shared by the node proxy (`ztunnel`'s local CA) and the
//! control plane (`istiod-compat`'s Istio CA), so both sign with one implementation.
//!
//! - [`Ca::load_or_create`] reads Istio's plug-in CA directory (`ca-cert.pem`, `ca-key.pem`,
//!   optional `root-cert.pem` and `cert-chain.pem`), creating a self-signed root there first
//!   when the directory is empty. Processes starting together serialize on a lock file.
//! - [`Ca::from_material`] builds the same CA from PEM held elsewhere (a Kubernetes Secret).
//! - [`Ca::issue`] makes a workload leaf (fresh key) for a SPIFFE identity,
//!   [`Ca::issue_server`] a serving leaf for DNS names and IPs, and [`Ca::sign_csr`] signs a
//!   verified certificate signing request ([`Csr`]).
#![deny(missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_core::Identity;

mod ca;
mod csr;
mod dir;

pub use ca::{Ca, CaMaterial, IssuedCert, RootPem, generate_root};
pub use csr::{Csr, CsrError, KeyKind};
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The signing CA certificate (Istio plug-in CA layout).
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing CA private key.
pub const CA_KEY: &str = "ca-key.pem";
/// Optional trust bundle; without it the CA certificate is the root.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Optional chain from the CA certificate up to (and usually including) the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// Serializes root creation between processes sharing a directory (flock).
pub const LOCK_FILE: &str = ".ca.lock";

/// How far leaves are backdated by [`Validity::from_now`], to tolerate clock skew between
/// peers.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Errors of the CA: loading or creating its files, and issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
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
    /// A CA file exists but its content is unusable.
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The offending file (for in-memory material: its origin joined with the file name).
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
    /// The CA only issues certificates for another trust domain.
    #[error(
        "cannot issue a certificate for {requested}: this CA serves trust domain {trust_domain}"
    )]
    TrustDomainMismatch {
        /// The identity asked for.
        requested: Identity,
        /// The trust domain of the CA.
        trust_domain: String,
    },
    /// A validity period cannot be encoded (empty, reversed, or beyond year 9999).
    #[error("invalid certificate validity: {0}")]
    BadValidity(String),
    /// A certificate signing request was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
}

/// The validity period of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// `not_before .. not_after`, checked: not empty and encodable in X.509.
    pub fn new(not_before: SystemTime, not_after: SystemTime) -> Result<Validity, CaError> {
        if not_after <= not_before {
            return Err(CaError::BadValidity(format!(
                "not_after {not_after:?} is not after not_before {not_before:?}"
            )));
        }
        asn1_time(not_before)?;
        asn1_time(not_after)?;
        Ok(Validity {
            not_before,
            not_after,
        })
    }

    /// Backdated by [`BACKDATE`] until `ttl` from now.
    pub fn from_now(ttl: Duration) -> Result<Validity, CaError> {
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| CaError::BadValidity(format!("ttl {ttl:?} overflows")))?;
        Validity::new(now.checked_sub(BACKDATE).unwrap_or(now), not_after)
    }

    /// Whether a ttl gives an encodable validity from now (positive, ends before year 10000).
    pub fn is_usable_ttl(ttl: Duration) -> bool {
        !ttl.is_zero()
            && SystemTime::now()
                .checked_add(ttl)
                .and_then(to_datetime)
                .is_some()
    }
}

/// `t` as a calendar time; `None` outside the years X.509 can encode.
fn to_datetime(t: SystemTime) -> Option<time::OffsetDateTime> {
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    (1..=9999).contains(&dt.year()).then_some(dt)
}

/// `t` for a certificate field, or an error if X.509 cannot encode it.
fn asn1_time(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    to_datetime(t)
        .ok_or_else(|| CaError::BadValidity(format!("{t:?} is outside the years X.509 can encode")))
}

/// PEM-encodes one DER certificate (64-column lines, `\n` line endings).
pub fn pem_certificate(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// PEM-encodes certificates one after the other (a chain or a trust bundle).
pub fn pem_certificates(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_certificate(c)).collect()
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn validity_checks() {
        let now = SystemTime::now();
        assert!(Validity::new(now, now).is_err());
        assert!(Validity::new(now, now - Duration::from_secs(1)).is_err());
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(matches!(
            Validity::new(now, far),
            Err(CaError::BadValidity(_))
        ));
        assert!(!Validity::is_usable_ttl(Duration::ZERO));
        assert!(!Validity::is_usable_ttl(Duration::from_secs(u64::MAX)));
        assert!(Validity::is_usable_ttl(Duration::from_secs(3600)));
        let v = Validity::from_now(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            v.not_after.duration_since(v.not_before).unwrap(),
            Duration::from_secs(3600) + BACKDATE
        );
    }

    #[test]
    fn pem_round_trips() {
        for len in [1usize, 2, 3, 47, 48, 49, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = pem_certificate(&der);
            assert!(!pem.contains('\r'));
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
        }
        let two = pem_certificates(&[
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![4u8, 5]),
        ]);
        let back: Vec<_> = CertificateDer::pem_slice_iter(two.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 2);
    }
}
