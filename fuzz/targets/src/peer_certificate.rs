//! The peer's leaf certificate (mTLS, both directions) and SPIFFE identity strings.

use mesh_core::Identity;
use rustls::pki_types::CertificateDer;

use crate::hbone::render;

/// `tls::peer_identity` on the bytes as a DER leaf (what rustls hands over after the
/// handshake: the chain is verified, but the SAN parsing is ztunnel's), and
/// `Identity::from_str` on the bytes as UTF-8 (URI SANs, local config, policy principals).
///
/// Invariants: an identity found in a certificate round-trips through Display, and a parsed
/// identity string displays as exactly the input.
pub fn peer_certificate(data: &[u8]) {
    let leaf = CertificateDer::from(data);
    if let Some(identity) = ztunnel::tls::peer_identity(std::slice::from_ref(&leaf)) {
        let text = identity.to_string();
        match text.parse::<Identity>() {
            Ok(again) => assert_eq!(identity, again, "{text} does not round-trip"),
            Err(error) => panic!("the certificate's identity {text:?} does not re-parse: {error}"),
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match text.parse::<Identity>() {
            Ok(identity) => assert_eq!(identity.to_string(), text, "identity is not canonical"),
            Err(error) => render(&error),
        }
    }
}
