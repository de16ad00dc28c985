//! Writes the seeds of the `csr` target: requests as ztunnel sends them (P-256, one SPIFFE
//! URI SAN; DER and PEM), an RSA one, and the shapes the CA must refuse (other curves, SAN
//! counts and kinds, a foreign trust domain, a forged signature, truncation).
//!
//! ```sh
//! cargo run -p fuzz-targets --example csr_seeds -- fuzz/corpus/csr
//! ```

use std::error::Error;
use std::path::PathBuf;

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, PKCS_RSA_SHA256, SanType, SignatureAlgorithm,
};

const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn request(
    alg: &'static SignatureAlgorithm,
    sans: &[&str],
) -> Result<(Vec<u8>, String), Box<dyn Error>> {
    let key = KeyPair::generate_for(alg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for san in sans {
        params
            .subject_alt_names
            .push(match san.strip_prefix("dns:") {
                Some(dns) => SanType::DnsName((*dns).try_into()?),
                None => SanType::URI((*san).try_into()?),
            });
    }
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), csr.pem()?))
}

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: csr_seeds <corpus dir>")?,
    );
    std::fs::create_dir_all(&out)?;
    let write = |name: &str, bytes: &[u8]| std::fs::write(out.join(name), bytes);

    let (der, pem) = request(&PKCS_ECDSA_P256_SHA256, &[ECHO])?;
    write("p256-spiffe.der", &der)?;
    write("p256-spiffe.pem", pem.as_bytes())?;
    let mut forged = der.clone();
    if let Some(at) = forged.windows(4).position(|w| w == b"echo") {
        forged[at] = b'f';
    }
    write("bad-forged-signature.der", &forged)?;
    write("bad-truncated.der", &der[..der.len() / 2])?;
    write("bad-two-blocks.pem", format!("{pem}{pem}").as_bytes())?;

    write("rsa2048-spiffe.der", &request(&PKCS_RSA_SHA256, &[ECHO])?.0)?;
    write(
        "bad-p384.der",
        &request(&PKCS_ECDSA_P384_SHA384, &[ECHO])?.0,
    )?;
    write("bad-ed25519.der", &request(&PKCS_ED25519, &[ECHO])?.0)?;
    let other = "spiffe://cluster.local/ns/default/sa/other";
    write(
        "bad-two-uri-sans.der",
        &request(&PKCS_ECDSA_P256_SHA256, &[ECHO, other])?.0,
    )?;
    write(
        "bad-uri-and-dns.der",
        &request(&PKCS_ECDSA_P256_SHA256, &[ECHO, "dns:echo.default.svc"])?.0,
    )?;
    write(
        "bad-dns-only.der",
        &request(&PKCS_ECDSA_P256_SHA256, &["dns:echo.default.svc"])?.0,
    )?;
    write("bad-no-san.der", &request(&PKCS_ECDSA_P256_SHA256, &[])?.0)?;
    write(
        "foreign-trust-domain.der",
        &request(
            &PKCS_ECDSA_P256_SHA256,
            &["spiffe://evil.local/ns/default/sa/echo"],
        )?
        .0,
    )?;
    write(
        "non-spiffe-uri.der",
        &request(&PKCS_ECDSA_P256_SHA256, &["https://example.com/echo"])?.0,
    )?;
    Ok(())
}
