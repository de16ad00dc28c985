//! Certificate signing requests: what any caller of the Istio CA (istiod-compat's
//! `CreateCertificate`) sends, through `mesh-ca`'s verification and signing.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use mesh_ca::{Ca, CaError, CaMaterial, Csr, CsrError, Validity, generate_root};
use mesh_core::Identity;

use crate::hbone::render;

const TRUST_DOMAIN: &str = "cluster.local";

/// One CA for the whole run (creating a root costs a key generation).
fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let root = match generate_root(TRUST_DOMAIN) {
            Ok(root) => root,
            Err(error) => panic!("generating the fuzz CA: {error}"),
        };
        let material = CaMaterial {
            ca_cert: root.cert_pem.into_bytes(),
            ca_key: root.key_pem.into_bytes(),
            root_cert: None,
            cert_chain: None,
        };
        match Ca::from_material(&material, TRUST_DOMAIN, Path::new("fuzz")) {
            Ok(ca) => ca,
            Err(error) => panic!("loading the fuzz CA: {error}"),
        }
    })
}

/// `Csr::parse_der` on the bytes, and `Csr::parse_pem` on them as UTF-8. A request that
/// verifies is then signed for the identity in its SAN.
///
/// Invariants: a verified request for a SPIFFE identity of the CA's trust domain is always
/// signed, and the leaf certifies exactly that identity (as ztunnel reads it from a peer);
/// one for another trust domain is always refused as a SAN mismatch.
pub fn csr(data: &[u8]) {
    let mut parsed = vec![Csr::parse_der(data)];
    if let Ok(text) = std::str::from_utf8(data) {
        parsed.push(Csr::parse_pem(text));
    }
    for result in parsed {
        match result {
            Ok(csr) => sign(&csr),
            Err(error) => render(&error),
        }
    }
}

fn sign(csr: &Csr) {
    let Ok(requested) = csr.uri_san().parse::<Identity>() else {
        return;
    };
    let validity = match Validity::from_now(Duration::from_secs(3600)) {
        Ok(validity) => validity,
        Err(error) => panic!("a one-hour validity: {error}"),
    };
    let ours = Identity::new(
        TRUST_DOMAIN,
        requested.namespace(),
        requested.service_account(),
    );
    if requested.trust_domain() != TRUST_DOMAIN {
        match ca().sign_verified_csr(csr, &ours, validity) {
            Err(CaError::Csr(CsrError::SanMismatch { .. })) => {}
            other => panic!("a CSR for {requested} was signed for {ours}: {other:?}"),
        }
        return;
    }
    let chain = match ca().sign_verified_csr(csr, &ours, validity) {
        Ok(chain) => chain,
        Err(error) => panic!("a verified CSR for {ours} was not signed: {error}"),
    };
    let Some(leaf) = chain.first() else {
        panic!("an empty chain for {ours}");
    };
    let seen = ztunnel::tls::peer_identity(std::slice::from_ref(leaf));
    assert_eq!(
        seen.as_ref(),
        Some(&ours),
        "the leaf signed for {ours} reads as {seen:?}"
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The seeds reach what they are named for: `bad-*` are refused, the others verify (so
    /// the signing invariants are exercised, not skipped).
    #[test]
    fn seeds_cover_both_outcomes() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus/csr");
        let mut verified = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            let parsed = if name.ends_with(".pem") {
                Csr::parse_pem(std::str::from_utf8(&data).unwrap())
            } else {
                Csr::parse_der(&data)
            };
            assert_eq!(
                name.starts_with("bad-"),
                parsed.is_err(),
                "{name}: {parsed:?}"
            );
            if parsed.is_ok() {
                verified += 1;
            }
            csr(&data);
        }
        assert!(verified >= 5, "only {verified} seeds verify");
    }
}
