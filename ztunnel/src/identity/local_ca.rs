//! A CA that signs workload certificates in-process from Istio's plug-in CA files, creating a
//! self-signed root when the directory is empty. Used without istiod (local config) and in
//! tests.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{BoxFuture, CertificateSource, IdentityError, WorkloadCertificate, x509};

/// The signing CA certificate (Istio plug-in CA layout).
const CA_CERT: &str = "ca-cert.pem";
/// The signing CA private key.
const CA_KEY: &str = "ca-key.pem";
/// Optional trust bundle; without it the CA certificate is the root.
const ROOT_CERT: &str = "root-cert.pem";
/// Optional chain from the CA certificate up to (and usually including) the root.
const CERT_CHAIN: &str = "cert-chain.pem";
/// Serializes root creation between processes sharing the directory (flock).
const LOCK_FILE: &str = ".ca.lock";

/// How far leaves are backdated, to tolerate clock skew between peers.
const BACKDATE: Duration = Duration::from_secs(60);
/// How far a created root is backdated.
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);
/// Lifetime of a created root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An in-process CA issuing SPIFFE workload certificates for one trust domain.
pub struct LocalCa {
    trust_domain: String,
    ttl: Duration,
    issuer: Issuer<'static, KeyPair>,
    /// Appended after every leaf: the CA certificate and further intermediates, never a root.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
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
        let valid_ttl = !ttl.is_zero()
            && SystemTime::now()
                .checked_add(ttl)
                .and_then(x509::to_datetime)
                .is_some();
        if !valid_ttl {
            return Err(IdentityError::BadValidity(format!(
                "certificate ttl {ttl:?} must be positive and end before year 10000"
            )));
        }
        let files = CaFiles::new(dir);
        // Fast path without the lock: a complete (possibly read-only) plug-in directory.
        if files.state()? != DirState::Complete {
            create_root_if_empty(&files, trust_domain)?;
        }
        let ca = load(&files, trust_domain, ttl)?;
        tracing::info!(
            dir = %dir.display(),
            trust_domain,
            intermediates = ca.intermediates.len(),
            roots = ca.roots.len(),
            "local CA loaded"
        );
        Ok(ca)
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust roots handed out with every certificate.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
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
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::TrustDomainMismatch {
                requested: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            IdentityError::Generate {
                what: "workload key",
                source,
            }
        })?;
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|source| {
            IdentityError::Generate {
                what: "workload URI SAN",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.not_before = asn1_time(not_before)?;
        params.not_after = asn1_time(not_after)?;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf =
            params
                .signed_by(&key, &self.issuer)
                .map_err(|source| IdentityError::Generate {
                    what: "workload certificate",
                    source,
                })?;
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCertificate::new(chain, key, self.roots.clone())
    }
}

impl CertificateSource for LocalCa {
    fn fetch<'a>(
        &'a self,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, IdentityError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
            let not_after = now.checked_add(self.ttl).ok_or_else(|| {
                IdentityError::BadValidity(format!("ttl {:?} overflows", self.ttl))
            })?;
            self.issue(id, not_before, not_after)
        })
    }
}

/// `t` for a certificate field, or an error if X.509 cannot encode it.
fn asn1_time(t: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
    x509::to_datetime(t).ok_or_else(|| {
        IdentityError::BadValidity(format!("{t:?} is outside the years X.509 can encode"))
    })
}

/// A positive, non-zero 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive as a DER INTEGER and never zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Paths of the plug-in CA files in one directory.
struct CaFiles {
    dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum DirState {
    /// `ca-cert.pem` and `ca-key.pem` exist.
    Complete,
    /// None of the CA files exists: a root may be created.
    Empty,
    /// Some CA files exist, but not both required ones.
    Incomplete {
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
}

impl CaFiles {
    fn new(dir: &Path) -> Self {
        CaFiles {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn state(&self) -> Result<DirState, IdentityError> {
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for name in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
            let path = self.path(name);
            let exists = path.try_exists().map_err(|source| IdentityError::Io {
                action: "checking",
                path,
                source,
            })?;
            match (exists, name == CA_CERT || name == CA_KEY) {
                (true, _) => present.push(name),
                (false, true) => missing.push(name),
                (false, false) => {}
            }
        }
        Ok(if missing.is_empty() {
            DirState::Complete
        } else if present.is_empty() {
            DirState::Empty
        } else {
            DirState::Incomplete { present, missing }
        })
    }

    /// Reads a file; `Ok(None)` if it does not exist.
    fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, IdentityError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, IdentityError> {
        let path = self.path(name);
        fs::read(&path).map_err(|source| IdentityError::Io {
            action: "reading",
            path,
            source,
        })
    }

    /// Parses every PEM certificate in a file; at least one is required.
    fn certs(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidFile {
            path: self.path(name),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("no CERTIFICATE PEM block".into()));
        }
        for cert in &certs {
            X509Certificate::from_der(cert)
                .map_err(|e| invalid(format!("bad certificate: {e}")))?;
        }
        Ok(certs)
    }
}

/// Creates a self-signed root in `files.dir` unless another process did (or does) so first.
fn create_root_if_empty(files: &CaFiles, trust_domain: &str) -> Result<(), IdentityError> {
    fs::create_dir_all(&files.dir).map_err(|source| IdentityError::Io {
        action: "creating",
        path: files.dir.clone(),
        source,
    })?;
    let lock_path = files.path(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| IdentityError::Io {
            action: "opening lock file",
            path: lock_path.clone(),
            source,
        })?;
    // Blocks until no other process (or thread) is creating; released when `lock` drops,
    // including when a process dies mid-way.
    lock.lock().map_err(|source| IdentityError::Io {
        action: "locking",
        path: lock_path,
        source,
    })?;
    match files.state()? {
        DirState::Complete => Ok(()),
        DirState::Incomplete { present, missing } => Err(IdentityError::IncompleteCaDir {
            dir: files.dir.clone(),
            present,
            missing,
        }),
        DirState::Empty => {
            let (cert_pem, key_pem) = generate_root(trust_domain)?;
            // Key first: a crash in between leaves a key without certificate, reported as an
            // incomplete directory rather than a certificate we cannot sign with.
            publish(files, CA_KEY, key_pem.as_bytes(), 0o600)?;
            publish(files, CA_CERT, cert_pem.as_bytes(), 0o644)?;
            sync_dir(&files.dir)?;
            tracing::info!(dir = %files.dir.display(), trust_domain, "created self-signed mesh root");
            Ok(())
        }
    }
}

/// A self-signed ECDSA P-256 root: (certificate PEM, PKCS#8 key PEM).
fn generate_root(trust_domain: &str) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
        IdentityError::Generate {
            what: "root key",
            source,
        }
    })?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = asn1_time(now.checked_sub(ROOT_BACKDATE).unwrap_or(now))?;
    params.not_after = asn1_time(now.checked_add(ROOT_TTL).unwrap_or(now))?;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Generate {
            what: "root certificate",
            source,
        })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `name` atomically: a private temp file in the same directory, fsync, rename.
fn publish(files: &CaFiles, name: &str, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let target = files.path(name);
    let tmp = files.path(&format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::rng().next_u64()
    ));
    let io_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io {
            action,
            path,
            source,
        }
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.write_all(contents).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &target).map_err(io_err("renaming into", &target))
    })();
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Io {
            action: "syncing",
            path: dir.to_path_buf(),
            source,
        })
}

/// Loads a complete plug-in CA directory.
fn load(files: &CaFiles, trust_domain: &str, ttl: Duration) -> Result<LocalCa, IdentityError> {
    match files.state()? {
        DirState::Complete => {}
        DirState::Empty => {
            return Err(IdentityError::IncompleteCaDir {
                dir: files.dir.clone(),
                present: Vec::new(),
                missing: vec![CA_CERT, CA_KEY],
            });
        }
        DirState::Incomplete { present, missing } => {
            return Err(IdentityError::IncompleteCaDir {
                dir: files.dir.clone(),
                present,
                missing,
            });
        }
    }
    let ca_cert = files.certs(CA_CERT, &files.read(CA_CERT)?)?.swap_remove(0);
    let key_pem = files.read(CA_KEY)?;
    let invalid_key = |reason: String| IdentityError::InvalidFile {
        path: files.path(CA_KEY),
        reason,
    };
    let key_pem = String::from_utf8(key_pem).map_err(|_| invalid_key("not UTF-8 PEM".into()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| invalid_key(format!("unsupported or malformed private key: {e}")))?;
    check_key_matches(files, &ca_cert, &key)?;
    let issuer =
        Issuer::from_ca_cert_der(&ca_cert, key).map_err(|e| IdentityError::InvalidFile {
            path: files.path(CA_CERT),
            reason: format!("not usable as an issuer: {e}"),
        })?;

    let roots = match files.read_optional(ROOT_CERT)? {
        Some(bytes) => files.certs(ROOT_CERT, &bytes)?,
        None => vec![ca_cert.clone()],
    };
    let mut intermediates = match files.read_optional(CERT_CHAIN)? {
        Some(bytes) => files.certs(CERT_CHAIN, &bytes)?,
        None => Vec::new(),
    };
    if intermediates.first() != Some(&ca_cert) {
        intermediates.insert(0, ca_cert);
    }
    intermediates.retain(|c| !roots.contains(c));

    Ok(LocalCa {
        trust_domain: trust_domain.to_string(),
        ttl,
        issuer,
        intermediates,
        roots,
    })
}

/// Refuses a key that does not belong to the CA certificate (leaves would not verify).
fn check_key_matches(
    files: &CaFiles,
    ca_cert: &CertificateDer<'_>,
    key: &KeyPair,
) -> Result<(), IdentityError> {
    let (_, parsed) =
        X509Certificate::from_der(ca_cert).map_err(|e| IdentityError::InvalidFile {
            path: files.path(CA_CERT),
            reason: format!("bad certificate: {e}"),
        })?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(IdentityError::InvalidFile {
            path: files.path(CA_KEY),
            reason: format!("key does not match the public key of {CA_CERT}"),
        });
    }
    if !parsed.is_ca() {
        return Err(IdentityError::InvalidFile {
            path: files.path(CA_CERT),
            reason: "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "local_ca_tests.rs"]
pub(crate) mod tests;
