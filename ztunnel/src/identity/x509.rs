//! Small X.509 helpers shared by the identity and TLS modules: leaf parsing (SPIFFE URI
//! SANs, validity, serial), PEM encoding and RFC 3339 formatting.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use mesh_core::Identity;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// What the mesh needs to know about a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    /// Every URI SAN, in certificate order (SPIFFE or not).
    pub(crate) uris: Vec<String>,
    /// Start of validity.
    pub(crate) not_before: SystemTime,
    /// End of validity.
    pub(crate) not_after: SystemTime,
    /// Serial number, lowercase hex without separators.
    pub(crate) serial: String,
}

impl LeafInfo {
    /// Parses a DER certificate. The error is a human-readable reason.
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
        let validity = cert.validity();
        Ok(LeafInfo {
            uris: uri_sans(&cert)?,
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
            serial: hex(cert.raw_serial()),
        })
    }

    /// The URI SANs that parse as SPIFFE identities, in certificate order.
    pub(crate) fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.uris.iter().filter_map(|u| u.parse().ok())
    }
}

/// The URI SANs of a certificate.
fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `t` as a calendar time; `None` outside years ±9999 (which X.509 cannot encode anyway).
pub(crate) fn to_datetime(t: SystemTime) -> Option<OffsetDateTime> {
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// RFC 3339 (UTC) rendering of a time, for dumps and error messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    to_datetime(t)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t:?}"))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// PEM-encodes one DER certificate (64-column base64 lines, trailing newline).
pub(crate) fn pem_certificate(der: &[u8]) -> String {
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = (n >> (18 - 6 * i)) & 0x3f;
                b64.push(char::from(BASE64[idx as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_round_trips() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = pem_certificate(&der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
            assert!(pem.lines().all(|l| l.len() <= 64));
        }
    }

    #[test]
    fn hex_and_rfc3339() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        assert_eq!(rfc3339(t), "1970-01-02T00:00:00Z");
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
        assert_eq!(to_datetime(far), None);
        assert!(!rfc3339(far).is_empty());
    }
}
