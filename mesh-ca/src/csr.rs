//! Certificate signing requests from untrusted callers: parsed, their self-signature
//! verified, their key and SANs checked, before anything is signed.

use mesh_core::Identity;
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Largest CSR accepted, PEM or DER (a 8192-bit RSA request is about 2.5 KiB of DER).
pub const MAX_CSR_LEN: usize = 64 * 1024;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
const MAX_RSA_BITS: usize = 8192;

/// Why a certificate signing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_LEN`].
    #[error("CSR is {0} bytes, more than the {MAX_CSR_LEN} accepted")]
    TooLarge(usize),
    /// Not exactly one `CERTIFICATE REQUEST` PEM block.
    #[error("bad CSR PEM: {0}")]
    Pem(String),
    /// The DER does not parse as a PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The request is not signed with the key it carries, or with an algorithm we refuse.
    #[error("CSR signature: {0}")]
    Signature(String),
    /// The key is neither ECDSA P-256 nor RSA of 2048 to 8192 bits.
    #[error("unsupported CSR key: {0}")]
    UnsupportedKey(String),
    /// The request does not carry exactly one SAN, or it is not a URI.
    #[error("CSR subjectAltName: {0}")]
    San(String),
    /// The SAN is not the identity being certified.
    #[error("CSR SAN {san} does not match the identity {identity}")]
    SanMismatch {
        /// The URI SAN of the request.
        san: String,
        /// The identity the certificate is for.
        identity: Identity,
    },
}

/// The kind of key a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 (what ztunnel generates).
    EcdsaP256,
    /// RSA with this many modulus bits.
    Rsa(usize),
}

/// The public key of a verified request, as rcgen needs it to sign a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsrPublicKey {
    alg: &'static SignatureAlgorithm,
    /// The subjectPublicKey BIT STRING contents.
    der: Vec<u8>,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.der
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A verified certificate signing request: its signature checks out with its own key, the
/// key is P-256 or RSA, and it carries exactly one SAN, a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    uri_san: String,
    key_kind: KeyKind,
    key: CsrPublicKey,
}

impl Csr {
    /// Parses and verifies a PEM request (exactly one `CERTIFICATE REQUEST` block).
    pub fn parse_pem(pem: &str) -> Result<Csr, CsrError> {
        if pem.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge(pem.len()));
        }
        let mut blocks = CertificateSigningRequestDer::pem_slice_iter(pem.as_bytes());
        let der = match (blocks.next(), blocks.next()) {
            (Some(Ok(der)), None) => der,
            (None, _) => {
                return Err(CsrError::Pem("no CERTIFICATE REQUEST block".into()));
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(CsrError::Pem(e.to_string())),
            (Some(Ok(_)), Some(Ok(_))) => {
                return Err(CsrError::Pem("several CERTIFICATE REQUEST blocks".into()));
            }
        };
        Csr::parse_der(&der)
    }

    /// Parses and verifies a DER request.
    pub fn parse_der(der: &[u8]) -> Result<Csr, CsrError> {
        if der.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge(der.len()));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(format!(
                "{} trailing bytes after the request",
                rest.len()
            )));
        }
        check_signature_algorithm(&csr)?;
        csr.verify_signature()
            .map_err(|e| CsrError::Signature(e.to_string()))?;
        let (key_kind, key) = public_key(&csr)?;
        let uri_san = single_uri_san(&csr)?;
        Ok(Csr {
            uri_san,
            key_kind,
            key,
        })
    }

    /// The one URI SAN (not necessarily a SPIFFE identity: callers decide).
    pub fn uri_san(&self) -> &str {
        &self.uri_san
    }

    /// The kind of key.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    pub(crate) fn public_key(&self) -> &CsrPublicKey {
        &self.key
    }
}

/// Only modern signature algorithms (no SHA-1, no MD5, no Ed25519 keys to certify).
fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let allowed = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
    ];
    if allowed.contains(alg) {
        Ok(())
    } else {
        Err(CsrError::Signature(format!(
            "signature algorithm {alg} is not accepted (ECDSA or RSA with SHA-256 or better)"
        )))
    }
}

fn public_key(csr: &X509CertificationRequest<'_>) -> Result<(KeyKind, CsrPublicKey), CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let der = spki.subject_public_key.data.to_vec();
    let alg_oid = &spki.algorithm.algorithm;
    if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            let curve = curve.map_or_else(|| "none".to_string(), |c| c.to_id_string());
            return Err(CsrError::UnsupportedKey(format!(
                "EC curve {curve} (only P-256 is accepted)"
            )));
        }
        // An uncompressed point: 0x04 || X || Y.
        if der.len() != 65 || der[0] != 0x04 {
            return Err(CsrError::UnsupportedKey(
                "P-256 public key is not an uncompressed point".into(),
            ));
        }
        let key = CsrPublicKey {
            alg: &PKCS_ECDSA_P256_SHA256,
            der,
        };
        return Ok((KeyKind::EcdsaP256, key));
    }
    if *alg_oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            Ok(_) | Err(_) => {
                return Err(CsrError::UnsupportedKey("malformed RSA public key".into()));
            }
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::UnsupportedKey(format!(
                "RSA key of {bits} bits ({MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted)"
            )));
        }
        let key = CsrPublicKey {
            alg: &PKCS_RSA_SHA256,
            der,
        };
        return Ok((KeyKind::Rsa(bits), key));
    }
    Err(CsrError::UnsupportedKey(format!(
        "key algorithm {alg_oid} (ECDSA P-256 or RSA are accepted)"
    )))
}

/// The request's SANs must be exactly one URI.
fn single_uri_san(csr: &X509CertificationRequest<'_>) -> Result<String, CsrError> {
    let mut names: Vec<&GeneralName<'_>> = Vec::new();
    let mut san_extensions = 0;
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                san_extensions += 1;
                names.extend(san.general_names.iter());
            }
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::Malformed(format!(
                    "bad requested extension: {error}"
                )));
            }
            _ => {}
        }
    }
    if san_extensions > 1 {
        return Err(CsrError::San(format!(
            "{san_extensions} subjectAltName extensions (exactly one is accepted)"
        )));
    }
    match names.as_slice() {
        [] => Err(CsrError::San(
            "no SAN (exactly one URI SAN is required)".into(),
        )),
        [GeneralName::URI(uri)] => Ok((*uri).to_string()),
        [other] => Err(CsrError::San(format!(
            "the SAN is not a URI: {other} (exactly one URI SAN is required)"
        ))),
        several => Err(CsrError::San(format!(
            "{} SANs (exactly one URI SAN is required)",
            several.len()
        ))),
    }
}

#[cfg(test)]
#[path = "csr_tests.rs"]
mod tests;
