//! The CA itself: its signing key and certificates, and the leaves it issues.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::csr::Csr;
use crate::dir::{CaFiles, DirState};
use crate::{
    CA_CERT, CA_KEY, CERT_CHAIN, CaError, CsrError, ROOT_CERT, Validity, asn1_time,
    pem_certificates,
};

/// How far a created root is backdated.
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);
/// Lifetime of a created root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The plug-in CA files' contents, wherever they are kept (a directory, a Secret).
#[derive(Clone, Default)]
pub struct CaMaterial {
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: Vec<u8>,
    /// `ca-key.pem`: its private key (PKCS#8, or SEC1/PKCS#1 as rcgen reads them).
    pub ca_key: Vec<u8>,
    /// `root-cert.pem`: the trust bundle; without it the CA certificate is the root.
    pub root_cert: Option<Vec<u8>>,
    /// `cert-chain.pem`: the CA certificate up to the root.
    pub cert_chain: Option<Vec<u8>>,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("ca_cert", &self.ca_cert.len())
            .field("ca_key", &"<redacted>")
            .field("root_cert", &self.root_cert.as_ref().map(Vec::len))
            .field("cert_chain", &self.cert_chain.as_ref().map(Vec::len))
            .finish()
    }
}

/// A freshly generated self-signed root, as PEM.
#[derive(Clone)]
pub struct RootPem {
    /// The root certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for RootPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A leaf issued with a fresh key.
#[derive(Debug)]
pub struct IssuedCert {
    /// Leaf first, then intermediates (never a root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
}

/// A CA issuing certificates for one trust domain.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// End of the signing certificate's validity: signed CSRs never outlive it.
    ca_not_after: SystemTime,
    /// Appended after every leaf: the CA certificate and further intermediates, never a root.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the plug-in CA files from `dir`. If none of them exists (or `dir` is missing),
    /// a self-signed ECDSA P-256 root is created there first. Processes starting concurrently
    /// on the same directory serialize on a lock file and end up sharing one root. A directory
    /// with only some of the files is an error and is never overwritten.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let files = CaFiles::new(dir);
        // Fast path without the lock: a complete (possibly read-only) plug-in directory.
        if files.state()? != DirState::Complete {
            files.create_root_if_empty(trust_domain)?;
        }
        Ca::load(dir, trust_domain)
    }

    /// Loads a complete plug-in CA directory, creating nothing.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let files = CaFiles::new(dir);
        let ca = Ca::from_material(&files.read_material()?, trust_domain, files.dir())?;
        tracing::info!(
            dir = %dir.display(),
            trust_domain,
            intermediates = ca.intermediates.len(),
            roots = ca.roots.len(),
            "CA loaded"
        );
        Ok(ca)
    }

    /// Builds the CA from the plug-in files' contents. Errors name `origin` joined with the
    /// file name (`origin` is the directory, or e.g. `secret istio-system/cacerts`).
    pub fn from_material(
        material: &CaMaterial,
        trust_domain: &str,
        origin: &Path,
    ) -> Result<Ca, CaError> {
        let invalid = |name: &str, reason: String| CaError::InvalidFile {
            path: origin.join(name),
            reason,
        };
        let ca_cert = parse_certs(&material.ca_cert)
            .map_err(|reason| invalid(CA_CERT, reason))?
            .swap_remove(0);
        let key_pem = std::str::from_utf8(&material.ca_key)
            .map_err(|_| invalid(CA_KEY, "not UTF-8 PEM".into()))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(CA_KEY, format!("unsupported or malformed private key: {e}")))?;
        let (_, parsed) = X509Certificate::from_der(&ca_cert)
            .map_err(|e| invalid(CA_CERT, format!("bad certificate: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                CA_KEY,
                format!("key does not match the public key of {CA_CERT}"),
            ));
        }
        if !parsed.is_ca() {
            return Err(invalid(
                CA_CERT,
                "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        let ca_not_after: SystemTime = parsed.validity().not_after.to_datetime().into();
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| invalid(CA_CERT, format!("not usable as an issuer: {e}")))?;

        let roots = match &material.root_cert {
            Some(bytes) => parse_certs(bytes).map_err(|reason| invalid(ROOT_CERT, reason))?,
            None => vec![ca_cert.clone()],
        };
        let mut intermediates = match &material.cert_chain {
            Some(bytes) => parse_certs(bytes).map_err(|reason| invalid(CERT_CHAIN, reason))?,
            None => Vec::new(),
        };
        if intermediates.first() != Some(&ca_cert) {
            intermediates.insert(0, ca_cert);
        }
        intermediates.retain(|c| !roots.contains(c));

        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            issuer,
            ca_not_after,
            intermediates,
            roots,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust roots (handed out with every certificate).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// What follows every leaf in a chain: the CA certificate and further intermediates.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// Every root as one PEM bundle (the last element of an Istio CA response).
    pub fn root_bundle_pem(&self) -> String {
        pem_certificates(&self.roots)
    }

    /// Issues a workload certificate for `id` (fresh P-256 key, the SPIFFE URI as the only
    /// SAN, random serial) valid for `validity`.
    pub fn issue(&self, id: &Identity, validity: Validity) -> Result<IssuedCert, CaError> {
        self.check_trust_domain(id)?;
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|source| {
            CaError::Generate {
                what: "workload URI SAN",
                source,
            }
        })?;
        self.issue_with_sans(vec![SanType::URI(uri)], validity, "workload certificate")
    }

    /// Issues a serving certificate (fresh P-256 key) for DNS names and IP addresses.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<IssuedCert, CaError> {
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            let dns = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|source| {
                CaError::Generate {
                    what: "serving DNS SAN",
                    source,
                }
            })?;
            sans.push(SanType::DnsName(dns));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue_with_sans(sans, validity, "serving certificate")
    }

    fn issue_with_sans(
        &self,
        sans: Vec<SanType>,
        validity: Validity,
        what: &'static str,
    ) -> Result<IssuedCert, CaError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
                what: "leaf key",
                source,
            })?;
        let leaf = leaf_params(sans, validity)?
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate { what, source })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(IssuedCert {
            chain: self.chain_with(leaf.der().clone()),
            key,
        })
    }

    /// Verifies a PEM certificate signing request (see [`Csr::parse_pem`]), checks that its
    /// one URI SAN is `identity`, and signs it for `ttl` (backdated like
    /// [`Validity::from_now`], never beyond the CA certificate's own expiry). Returns the
    /// chain: leaf first, then intermediates (never a root).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let csr = Csr::parse_pem(csr_pem)?;
        let validity = Validity::from_now(ttl)?;
        self.sign_verified_csr(&csr, identity, validity)
    }

    /// [`Ca::sign_csr`] for an already parsed and verified request, with an explicit
    /// validity (its end capped at the CA certificate's expiry).
    pub fn sign_verified_csr(
        &self,
        csr: &Csr,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.check_trust_domain(identity)?;
        if csr.uri_san() != identity.to_string() {
            return Err(CsrError::SanMismatch {
                san: csr.uri_san().to_string(),
                identity: identity.clone(),
            }
            .into());
        }
        let capped = Validity::new(
            validity.not_before,
            validity.not_after.min(self.ca_not_after),
        )?;
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(|source| {
            CaError::Generate {
                what: "workload URI SAN",
                source,
            }
        })?;
        let leaf = leaf_params(vec![SanType::URI(uri)], capped)?
            .signed_by(csr.public_key(), &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "workload certificate",
                source,
            })?;
        Ok(self.chain_with(leaf.der().clone()))
    }

    fn check_trust_domain(&self, id: &Identity) -> Result<(), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::TrustDomainMismatch {
                requested: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn chain_with(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(leaf);
        chain.extend(self.intermediates.iter().cloned());
        chain
    }
}

/// A mesh leaf: empty subject, the given SANs (critical, as the subject is empty), not a
/// CA, usable for both TLS client and server.
fn leaf_params(sans: Vec<SanType>, validity: Validity) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.not_before = asn1_time(validity.not_before)?;
    params.not_after = asn1_time(validity.not_after)?;
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
    Ok(params)
}

/// A self-signed ECDSA P-256 root for `trust_domain` (organization = the trust domain),
/// valid for ten years: what [`Ca::load_or_create`] writes into an empty directory, and what
/// a control plane stores when it creates its own CA.
pub fn generate_root(trust_domain: &str) -> Result<RootPem, CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
            what: "root key",
            source,
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
        .map_err(|source| CaError::Generate {
            what: "root certificate",
            source,
        })?;
    Ok(RootPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
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

/// Every PEM certificate of a file; at least one is required and each must parse.
fn parse_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE PEM block".into());
    }
    for cert in &certs {
        X509Certificate::from_der(cert).map_err(|e| format!("bad certificate: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
