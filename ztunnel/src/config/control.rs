//! Control-plane settings: addresses of the xDS server and the Istio CA, the roots that
//! verify them, the bearer token, and the node identity sent with xDS (reference §8, §9,
//! §16.1).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Serialize, Serializer};

use mesh_core::env::{Error, Source, string};

use super::env;

/// Default of `XDS_ROOT_CA` and `CA_ROOT_CA` (the istio-ca-root-cert config map's mount).
pub const DEFAULT_ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
/// Default of `AUTH_TOKEN` (the projected service account token, audience `istio-ca`).
pub const DEFAULT_AUTH_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
/// Prefix of the proxy metadata variables sent in the xDS node.
pub const ISTIO_META_PREFIX: &str = "ISTIO_META_";

/// Where the roots that verify a control plane's TLS certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file, re-read on every new connection (so a rotated root needs no restart).
    File(PathBuf),
    /// The operating system's trust store (`SYSTEM`).
    System,
    /// PEM given inline in the variable.
    Pem(String),
}

impl RootCerts {
    /// `SYSTEM`, inline PEM (anything containing `-----BEGIN`, checked to hold at least one
    /// certificate), otherwise a file path (read when connecting).
    fn parse(value: &str) -> Result<RootCerts, String> {
        let value = value.trim();
        if value == "SYSTEM" {
            return Ok(RootCerts::System);
        }
        if value.contains("-----BEGIN") {
            let certs = parse_pem_certs(value.as_bytes())?;
            if certs.is_empty() {
                return Err("inline PEM holds no CERTIFICATE block".into());
            }
            return Ok(RootCerts::Pem(value.to_string()));
        }
        Ok(RootCerts::File(PathBuf::from(value)))
    }
}

/// Every `CERTIFICATE` block of a PEM document.
pub(crate) fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}

impl Serialize for RootCerts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RootCerts::File(path) => s.collect_str(&path.display()),
            RootCerts::System => s.serialize_str("SYSTEM"),
            RootCerts::Pem(_) => s.serialize_str("<inline PEM>"),
        }
    }
}

/// The bearer token sent as `authorization: Bearer <token>` to the xDS server and the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthToken {
    /// `AUTH_TOKEN` unset: the projected token file, re-read on every request. While the
    /// file does not exist no `authorization` header is sent (the server decides).
    DefaultFile(PathBuf),
    /// `AUTH_TOKEN` set: a file path if such a file exists when a request is made (re-read
    /// every time), otherwise the value itself is the token.
    Configured(String),
}

impl Serialize for AuthToken {
    /// Never dumps a static token: only paths of existing files are shown.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AuthToken::DefaultFile(path) => s.collect_str(&path.display()),
            AuthToken::Configured(value) if Path::new(value).is_file() => s.serialize_str(value),
            AuthToken::Configured(_) => s.serialize_str("<static token>"),
        }
    }
}

/// Everything about reaching the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneConfig {
    /// Roots verifying the xDS server (`XDS_ROOT_CA`).
    pub xds_root_ca: RootCerts,
    /// Roots verifying the CA (`CA_ROOT_CA`).
    pub ca_root_ca: RootCerts,
    /// Bearer token for both (`AUTH_TOKEN`).
    pub auth_token: AuthToken,
    /// This proxy's pod name (`POD_NAME`), for the xDS node id and `NAME` metadata.
    pub pod_name: String,
    /// This proxy's namespace (`POD_NAMESPACE`).
    pub pod_namespace: String,
    /// This proxy's IP (`INSTANCE_IP`); the node id uses `1.1.1.1` without it.
    pub instance_ip: Option<IpAddr>,
    /// `ISTIO_META_<KEY>` variables, prefix stripped, sent as xDS node metadata.
    pub proxy_metadata: BTreeMap<String, String>,
}

impl ControlPlaneConfig {
    pub(super) fn from_source(src: &dyn Source) -> Result<ControlPlaneConfig, Error> {
        let roots = |var: &'static str| -> Result<RootCerts, Error> {
            match string(src, var) {
                None => Ok(RootCerts::File(PathBuf::from(DEFAULT_ROOT_CA))),
                Some(value) => RootCerts::parse(&value).map_err(|reason| Error::InvalidVar {
                    var,
                    value: redact_pem(&value),
                    reason,
                }),
            }
        };
        let instance_ip = match string(src, env::INSTANCE_IP) {
            None => None,
            Some(value) => Some(
                value
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|e| Error::InvalidVar {
                        var: env::INSTANCE_IP,
                        value: value.clone(),
                        reason: e.to_string(),
                    })?,
            ),
        };
        let proxy_metadata = src
            .vars_with_prefix(ISTIO_META_PREFIX)
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ISTIO_META_PREFIX)?;
                (!key.is_empty()).then(|| (key.to_string(), v))
            })
            .collect();
        Ok(ControlPlaneConfig {
            xds_root_ca: roots(env::XDS_ROOT_CA)?,
            ca_root_ca: roots(env::CA_ROOT_CA)?,
            auth_token: match src.get(env::AUTH_TOKEN).filter(|t| !t.trim().is_empty()) {
                Some(value) => AuthToken::Configured(value.trim().to_string()),
                None => AuthToken::DefaultFile(PathBuf::from(DEFAULT_AUTH_TOKEN)),
            },
            pod_name: src.get(env::POD_NAME).unwrap_or_default(),
            pod_namespace: src.get(env::POD_NAMESPACE).unwrap_or_default(),
            instance_ip,
            proxy_metadata,
        })
    }
}

/// Inline PEM is long and not interesting in an error message.
fn redact_pem(value: &str) -> String {
    if value.contains("-----BEGIN") {
        "<inline PEM>".into()
    } else {
        value.to_string()
    }
}

/// Validates a control-plane address and normalizes it to a URI with a scheme: `https://`
/// is prepended when there is none; `http://` (plaintext) is kept; anything else, a path,
/// or a missing host is refused.
pub(super) fn control_address(var: &'static str, value: &str) -> Result<String, Error> {
    let invalid = |reason: String| Error::InvalidVar {
        var,
        value: value.to_string(),
        reason,
    };
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("https://{value}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| invalid(format!("not a URI: {e}")))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        other => {
            return Err(invalid(format!(
                "scheme {:?} is not supported (https, or http for plaintext)",
                other.unwrap_or("")
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(invalid("must not have a path".into()));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Whether a normalized control-plane address is plaintext (`http://`).
pub fn is_plaintext(address: &str) -> bool {
    address.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_are_checked() {
        let ok = |v: &str| control_address(env::XDS_ADDRESS, v).unwrap();
        assert_eq!(
            ok("istiod.istio-system.svc:15012"),
            "https://istiod.istio-system.svc:15012"
        );
        assert_eq!(ok("https://10.0.0.1:15012/"), "https://10.0.0.1:15012");
        assert_eq!(ok("http://127.0.0.1:15010"), "http://127.0.0.1:15010");
        assert_eq!(ok("[::1]:15012"), "https://[::1]:15012");
        for bad in ["ftp://x:1", "https://", "https://istiod:15012/path", "a b"] {
            let err = control_address(env::XDS_ADDRESS, bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("XDS_ADDRESS") && err.contains(bad), "{err}");
        }
        assert!(is_plaintext("http://127.0.0.1:15010"));
        assert!(!is_plaintext("https://127.0.0.1:15012"));
    }

    #[test]
    fn roots_token_and_metadata() {
        let src: HashMap<&str, &str> = HashMap::from([
            (env::XDS_ROOT_CA, "SYSTEM"),
            (env::AUTH_TOKEN, "static-token"),
            (env::INSTANCE_IP, "10.0.0.7"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_META_", "ignored"),
            ("OTHER", "x"),
        ]);
        let c = ControlPlaneConfig::from_source(&src).unwrap();
        assert_eq!(c.xds_root_ca, RootCerts::System);
        assert_eq!(c.ca_root_ca, RootCerts::File(DEFAULT_ROOT_CA.into()));
        assert_eq!(c.auth_token, AuthToken::Configured("static-token".into()));
        assert_eq!(c.instance_ip, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(
            c.proxy_metadata,
            BTreeMap::from([("DNS_CAPTURE".to_string(), "true".to_string())])
        );
        // A static token never appears in the config dump.
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("static-token"), "{json}");
    }

    #[test]
    fn bad_inline_pem_and_ip_name_the_variable() {
        let src: HashMap<&str, &str> = HashMap::from([(
            env::CA_ROOT_CA,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )]);
        let err = ControlPlaneConfig::from_source(&src)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CA_ROOT_CA"), "{err}");
        let src: HashMap<&str, &str> = HashMap::from([(env::INSTANCE_IP, "10.0.0")]);
        let err = ControlPlaneConfig::from_source(&src)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("INSTANCE_IP") && err.contains("10.0.0"),
            "{err}"
        );
    }
}
