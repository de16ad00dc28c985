//! Typed configuration from environment variables (Istio's names where istiod has one).
//!
//! Parsing goes through [`Source`] so tests inject a map instead of mutating the process
//! environment. Every bad value is an [`Error`] naming the variable, the value and why.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mesh_core::env::{path, serialize_duration, socket_addr, string, var};
use serde::Serialize;

use crate::ca::NodeAccount;
use crate::translate::TranslateConfig;
// The parsing layer shared with the other binaries.
pub use mesh_core::env::{EnvSource, Error, Source};

/// Environment variable names.
pub mod env {
    /// `files` or `kubernetes`.
    pub const REGISTRY: &str = "REGISTRY";
    /// Set inside a Kubernetes pod; selects the `kubernetes` registry by default.
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    /// Directory of Kubernetes YAML files (files registry).
    pub const LOCAL_DIR: &str = "LOCAL_DIR";
    /// Bearer tokens of the files mode (`tokens.yaml`).
    pub const TOKENS_FILE: &str = "TOKENS_FILE";
    /// Plug-in CA directory (files mode).
    pub const CA_DIR: &str = "CA_DIR";
    /// Cluster id.
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    /// Trust domain.
    pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
    /// DNS suffix of service hostnames.
    pub const DOMAIN_SUFFIX: &str = "DOMAIN_SUFFIX";
    /// Namespace whose policies apply mesh-wide.
    pub const ROOT_NAMESPACE: &str = "ROOT_NAMESPACE";
    /// Network of this cluster.
    pub const NETWORK: &str = "NETWORK";
    /// Namespace the control plane runs in (its Secrets, its service name).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Comma-separated `<namespace>/<serviceAccount>` allowed to impersonate.
    pub const CA_TRUSTED_NODE_ACCOUNTS: &str = "CA_TRUSTED_NODE_ACCOUNTS";
    /// Longest workload certificate lifetime.
    pub const MAX_WORKLOAD_CERT_TTL: &str = "MAX_WORKLOAD_CERT_TTL";
    /// Plaintext gRPC (ADS + CA).
    pub const XDS_PLAINTEXT_ADDR: &str = "XDS_PLAINTEXT_ADDR";
    /// TLS gRPC (ADS + CA).
    pub const XDS_TLS_ADDR: &str = "XDS_TLS_ADDR";
    /// HTTP `/ready` and `/metrics`.
    pub const MONITORING_ADDR: &str = "MONITORING_ADDR";
    /// Extra SANs of the serving certificate: comma-separated DNS names and IPs.
    pub const SERVING_CERT_SANS: &str = "SERVING_CERT_SANS";
    /// Quiet time before a snapshot burst is pushed.
    pub const PILOT_DEBOUNCE_AFTER: &str = "PILOT_DEBOUNCE_AFTER";
    /// Longest a burst may delay a push.
    pub const PILOT_DEBOUNCE_MAX: &str = "PILOT_DEBOUNCE_MAX";
    /// Log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// `json` for JSON logs.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";

    /// Every variable above: what the parser reads. `tests/chart_env.rs` checks the Helm
    /// chart against it and it against this module.
    pub const ALL: &[&str] = &[
        REGISTRY,
        KUBERNETES_SERVICE_HOST,
        LOCAL_DIR,
        TOKENS_FILE,
        CA_DIR,
        CLUSTER_ID,
        TRUST_DOMAIN,
        DOMAIN_SUFFIX,
        ROOT_NAMESPACE,
        NETWORK,
        POD_NAMESPACE,
        CA_TRUSTED_NODE_ACCOUNTS,
        MAX_WORKLOAD_CERT_TTL,
        XDS_PLAINTEXT_ADDR,
        XDS_TLS_ADDR,
        MONITORING_ADDR,
        SERVING_CERT_SANS,
        PILOT_DEBOUNCE_AFTER,
        PILOT_DEBOUNCE_MAX,
        RUST_LOG,
        LOG_FORMAT,
    ];
}

/// Default of [`env::MAX_WORKLOAD_CERT_TTL`].
pub const DEFAULT_MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where the Kubernetes objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// A directory of YAML files.
    Files,
    /// The Kubernetes API.
    Kubernetes,
}

impl FromStr for RegistryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "files" => Ok(RegistryKind::Files),
            "kubernetes" => Ok(RegistryKind::Kubernetes),
            _ => Err("expected files or kubernetes".into()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "text" | "plain" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

/// The control plane's configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Registry in use.
    pub registry: RegistryKind,
    /// Files registry directory (required with `files`).
    pub local_dir: Option<PathBuf>,
    /// Token file of the files mode; without it every CA request is refused.
    pub tokens_file: Option<PathBuf>,
    /// Plug-in CA directory (files mode; a root is created there if it is empty).
    pub ca_dir: PathBuf,
    /// Cluster id.
    pub cluster_id: String,
    /// Trust domain.
    pub trust_domain: String,
    /// DNS suffix.
    pub domain_suffix: String,
    /// Root namespace.
    pub root_namespace: String,
    /// Network ("" = default).
    pub network: String,
    /// Our namespace.
    pub pod_namespace: String,
    /// Accounts allowed to impersonate pods on their node.
    pub trusted_node_accounts: BTreeSet<NodeAccount>,
    /// Longest workload certificate lifetime.
    #[serde(serialize_with = "serialize_duration")]
    pub max_workload_cert_ttl: Duration,
    /// Plaintext gRPC listener.
    pub xds_plaintext_addr: SocketAddr,
    /// TLS gRPC listener.
    pub xds_tls_addr: SocketAddr,
    /// Monitoring listener.
    pub monitoring_addr: SocketAddr,
    /// Extra DNS SANs of the serving certificate.
    pub serving_dns_sans: Vec<String>,
    /// Extra IP SANs of the serving certificate.
    pub serving_ip_sans: Vec<IpAddr>,
    /// Debounce quiet time.
    #[serde(serialize_with = "serialize_duration")]
    pub debounce_after: Duration,
    /// Debounce bound.
    #[serde(serialize_with = "serialize_duration")]
    pub debounce_max: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

/// Parses a duration: `500ms`, `10s`, `5m`, `24h`, `2d`, `1h30m`, or a bare number of
/// seconds. A leading `-` gives `Ok(None)` (a negative duration).
pub fn parse_signed_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    match s.strip_prefix('-') {
        Some(rest) => parse_duration(rest).map(|_| None),
        None => parse_duration(s).map(Some),
    }
}

pub use mesh_core::parse_duration;

fn parse_accounts(s: &str) -> Result<BTreeSet<NodeAccount>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(NodeAccount::from_str)
        .collect()
}

fn parse_sans(s: &str) -> Result<(Vec<String>, Vec<IpAddr>), String> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for san in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Ok(ip) = san.parse::<IpAddr>() {
            ips.push(ip);
        } else if san
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'))
        {
            dns.push(san.to_string());
        } else {
            return Err(format!("{san:?} is neither a DNS name nor an IP address"));
        }
    }
    Ok((dns, ips))
}

impl Config {
    /// Reads and validates the configuration from `src`.
    pub fn from_source(src: &dyn Source) -> Result<Config, Error> {
        let registry = var(src, env::REGISTRY, RegistryKind::from_str)?.unwrap_or(
            if string(src, env::KUBERNETES_SERVICE_HOST).is_some() {
                RegistryKind::Kubernetes
            } else {
                RegistryKind::Files
            },
        );
        let local_dir = path(src, env::LOCAL_DIR);
        if registry == RegistryKind::Files && local_dir.is_none() {
            return Err(Error::Missing {
                var: env::LOCAL_DIR,
                why: "with REGISTRY=files",
            });
        }
        let max_ttl = match var(src, env::MAX_WORKLOAD_CERT_TTL, parse_signed_duration)? {
            // Unset, zero or negative: the default.
            None | Some(None) => DEFAULT_MAX_WORKLOAD_CERT_TTL,
            Some(Some(ttl)) if ttl.is_zero() => DEFAULT_MAX_WORKLOAD_CERT_TTL,
            Some(Some(ttl)) => ttl,
        };
        let (serving_dns_sans, serving_ip_sans) =
            var(src, env::SERVING_CERT_SANS, parse_sans)?.unwrap_or_default();
        let cfg = Config {
            registry,
            local_dir,
            tokens_file: path(src, env::TOKENS_FILE),
            ca_dir: path(src, env::CA_DIR).unwrap_or_else(|| PathBuf::from("./etc/cacerts")),
            cluster_id: string(src, env::CLUSTER_ID).unwrap_or_else(|| "Kubernetes".into()),
            trust_domain: string(src, env::TRUST_DOMAIN).unwrap_or_else(|| "cluster.local".into()),
            domain_suffix: string(src, env::DOMAIN_SUFFIX)
                .unwrap_or_else(|| "cluster.local".into()),
            root_namespace: string(src, env::ROOT_NAMESPACE)
                .unwrap_or_else(|| "istio-system".into()),
            network: src.get(env::NETWORK).unwrap_or_default(),
            pod_namespace: string(src, env::POD_NAMESPACE).unwrap_or_else(|| "istio-system".into()),
            trusted_node_accounts: var(src, env::CA_TRUSTED_NODE_ACCOUNTS, parse_accounts)?
                .unwrap_or_else(|| {
                    BTreeSet::from([NodeAccount {
                        namespace: "istio-system".into(),
                        service_account: "ztunnel".into(),
                    }])
                }),
            max_workload_cert_ttl: max_ttl,
            xds_plaintext_addr: var(src, env::XDS_PLAINTEXT_ADDR, socket_addr)?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15010))),
            xds_tls_addr: var(src, env::XDS_TLS_ADDR, socket_addr)?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15012))),
            monitoring_addr: var(src, env::MONITORING_ADDR, socket_addr)?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15014))),
            serving_dns_sans,
            serving_ip_sans,
            debounce_after: var(src, env::PILOT_DEBOUNCE_AFTER, parse_duration)?
                .unwrap_or(Duration::from_millis(100)),
            debounce_max: var(src, env::PILOT_DEBOUNCE_MAX, parse_duration)?
                .unwrap_or(Duration::from_secs(1)),
            log_format: var(src, env::LOG_FORMAT, LogFormat::from_str)?.unwrap_or_default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), Error> {
        if self.debounce_max < self.debounce_after {
            return Err(Error::InvalidVar {
                var: env::PILOT_DEBOUNCE_MAX,
                value: format!("{:?}", self.debounce_max),
                reason: format!(
                    "must not be shorter than {} ({:?})",
                    env::PILOT_DEBOUNCE_AFTER,
                    self.debounce_after
                ),
            });
        }
        if !mesh_ca::Validity::is_usable_ttl(self.max_workload_cert_ttl) {
            return Err(Error::InvalidVar {
                var: env::MAX_WORKLOAD_CERT_TTL,
                value: format!("{:?}", self.max_workload_cert_ttl),
                reason: "too long to encode in a certificate".into(),
            });
        }
        Ok(())
    }

    /// What translation needs.
    pub fn translate_config(&self) -> TranslateConfig {
        TranslateConfig {
            cluster_id: self.cluster_id.clone(),
            trust_domain: self.trust_domain.clone(),
            domain_suffix: self.domain_suffix.clone(),
            root_namespace: self.root_namespace.clone(),
            network: self.network.clone(),
        }
    }

    /// DNS SANs of the serving certificate: the names proxies dial, then the extra ones.
    pub fn serving_dns_names(&self) -> Vec<String> {
        let mut names = vec![
            format!("istiod-compat.{}.svc", self.pod_namespace),
            "istiod.istio-system.svc".to_string(),
            "localhost".to_string(),
        ];
        for extra in &self.serving_dns_sans {
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let mut map: HashMap<&str, &str> = HashMap::from([(env::LOCAL_DIR, "/tmp/x")]);
        map.extend(vars.iter().copied());
        Config::from_source(&map)
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.registry, RegistryKind::Files);
        assert_eq!(c.xds_plaintext_addr, "0.0.0.0:15010".parse().unwrap());
        assert_eq!(c.xds_tls_addr, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(c.monitoring_addr, "0.0.0.0:15014".parse().unwrap());
        assert_eq!(c.max_workload_cert_ttl, DEFAULT_MAX_WORKLOAD_CERT_TTL);
        assert_eq!(
            c.trusted_node_accounts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["istio-system/ztunnel"]
        );
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.translate_config().cluster_id, "Kubernetes");
        assert_eq!(
            c.serving_dns_names(),
            [
                "istiod-compat.istio-system.svc",
                "istiod.istio-system.svc",
                "localhost"
            ]
        );
        assert!(serde_json::to_string(&c).is_ok());
    }

    #[test]
    fn registry_defaults_to_kubernetes_in_a_pod() {
        let map = HashMap::from([(env::KUBERNETES_SERVICE_HOST, "10.96.0.1")]);
        let c = Config::from_source(&map).unwrap();
        assert_eq!(c.registry, RegistryKind::Kubernetes);
        assert!(c.local_dir.is_none());
        // Without a pod, the files registry needs its directory.
        let err = Config::from_source(&HashMap::<&str, &str>::new()).unwrap_err();
        assert!(err.to_string().contains(env::LOCAL_DIR), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable_and_value() {
        for (var, value) in [
            (env::REGISTRY, "etcd"),
            (env::XDS_TLS_ADDR, "localhost"),
            (env::MAX_WORKLOAD_CERT_TTL, "forever"),
            (env::CA_TRUSTED_NODE_ACCOUNTS, "ztunnel"),
            (env::SERVING_CERT_SANS, "a b"),
            (env::PILOT_DEBOUNCE_AFTER, "5x"),
            (env::LOG_FORMAT, "xml"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err().to_string();
            assert!(
                err.contains(var) && err.contains(value),
                "{var}={value}: {err}"
            );
        }
        let err = cfg(&[
            (env::PILOT_DEBOUNCE_AFTER, "2s"),
            (env::PILOT_DEBOUNCE_MAX, "1s"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains(env::PILOT_DEBOUNCE_MAX), "{err}");
    }

    #[test]
    fn max_ttl_zero_or_negative_is_the_default() {
        for v in ["0", "0s", "-1h"] {
            let c = cfg(&[(env::MAX_WORKLOAD_CERT_TTL, v)]).unwrap();
            assert_eq!(
                c.max_workload_cert_ttl, DEFAULT_MAX_WORKLOAD_CERT_TTL,
                "{v}"
            );
        }
        let c = cfg(&[(env::MAX_WORKLOAD_CERT_TTL, "2h")]).unwrap();
        assert_eq!(c.max_workload_cert_ttl, Duration::from_secs(7200));
        let c = cfg(&[(env::MAX_WORKLOAD_CERT_TTL, "90d")]).unwrap();
        assert_eq!(c.max_workload_cert_ttl, Duration::from_secs(90 * 86400));
    }

    #[test]
    fn lists() {
        let c = cfg(&[
            (
                env::CA_TRUSTED_NODE_ACCOUNTS,
                "istio-system/ztunnel, kube-system/mesh-node",
            ),
            (env::SERVING_CERT_SANS, "istiod.example.com, 10.0.0.1,::1"),
            (env::POD_NAMESPACE, "mesh"),
        ])
        .unwrap();
        assert_eq!(c.trusted_node_accounts.len(), 2);
        assert_eq!(c.serving_ip_sans.len(), 2);
        assert_eq!(
            c.serving_dns_names(),
            [
                "istiod-compat.mesh.svc",
                "istiod.istio-system.svc",
                "localhost",
                "istiod.example.com"
            ]
        );
        let c = cfg(&[(env::CA_TRUSTED_NODE_ACCOUNTS, "")]).unwrap();
        assert!(
            c.trusted_node_accounts.is_empty(),
            "empty = nobody may impersonate"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_signed_duration("-5m"), Ok(None));
        assert!(parse_signed_duration("-x").is_err());
    }
}
