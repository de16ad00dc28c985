//! The crypto provider: the feature-selected backend, restricted to HBONE's suites and groups.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, NamedGroup};

/// TLS 1.3 suites HBONE allows, in preference order.
const CIPHER_SUITES: [CipherSuite; 2] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
];

/// Key-exchange groups in preference order; those a backend lacks are skipped.
const KX_GROUPS: [NamedGroup; 3] = [
    NamedGroup::X25519MLKEM768,
    NamedGroup::X25519,
    NamedGroup::secp256r1,
];

/// Which crypto library backs rustls in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// aws-lc-rs (feature `tls-aws-lc`, the default).
    AwsLc,
    /// ring (feature `tls-ring`).
    Ring,
    /// BoringSSL via `boring-rustls-provider` (feature `tls-boring`).
    Boring,
}

/// The backend compiled in. With several TLS features on, the explicitly chosen non-default
/// one wins: boring, then ring, then aws-lc.
pub const BACKEND: Backend = if cfg!(feature = "tls-boring") {
    Backend::Boring
} else if cfg!(feature = "tls-ring") {
    Backend::Ring
} else {
    Backend::AwsLc
};

#[cfg(not(any(feature = "tls-aws-lc", feature = "tls-ring", feature = "tls-boring")))]
compile_error!("enable one of the features tls-aws-lc, tls-ring or tls-boring");

#[cfg(feature = "tls-boring")]
fn backend_provider() -> CryptoProvider {
    boring_rustls_provider::provider()
}

#[cfg(all(feature = "tls-ring", not(feature = "tls-boring")))]
fn backend_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(all(
    feature = "tls-aws-lc",
    not(feature = "tls-ring"),
    not(feature = "tls-boring")
))]
fn backend_provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The crypto provider for every mesh TLS config: the feature-selected backend limited to
/// `TLS13_AES_256_GCM_SHA384` and `TLS13_AES_128_GCM_SHA256`, with key exchange preferring
/// X25519MLKEM768, then X25519, then P-256 (where the backend has them). Built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(restrict(backend_provider())))
        .clone()
}

/// Keeps (and orders) only the allowed suites and groups.
fn restrict(mut provider: CryptoProvider) -> CryptoProvider {
    let suites = std::mem::take(&mut provider.cipher_suites);
    provider.cipher_suites = CIPHER_SUITES
        .iter()
        .filter_map(|want| suites.iter().find(|s| s.suite() == *want).copied())
        .collect();
    let groups = std::mem::take(&mut provider.kx_groups);
    provider.kx_groups = KX_GROUPS
        .iter()
        .filter_map(|want| groups.iter().find(|g| g.name() == *want).copied())
        .collect();
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hbone_suites_and_groups() {
        let p = provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites, CIPHER_SUITES);
        assert!(p.cipher_suites.iter().all(|s| s.tls13().is_some()));

        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        let expected: &[NamedGroup] = match BACKEND {
            Backend::Ring => &KX_GROUPS[1..],
            Backend::AwsLc | Backend::Boring => &KX_GROUPS,
        };
        assert_eq!(groups, expected);
    }
}
