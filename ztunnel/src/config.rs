//! Typed configuration, read from environment variables with Istio ztunnel's names.
//!
//! Parsing goes through [`Source`] so tests inject a map instead of mutating the process
//! environment. Every bad value is an [`Error`] naming the variable, the value and why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mesh_core::env::{parse_bool, parse_u32, path, serialize_duration, string, var};
use serde::Serialize;

mod control;
mod inpod;

pub(crate) use control::parse_pem_certs;
pub use control::{AuthToken, ControlPlaneConfig, RootCerts, is_plaintext};
pub use inpod::{DEFAULT_MARK as DEFAULT_INPOD_MARK, InpodConfig};
// The parsing layer shared with the other binaries.
pub use mesh_core::env::{EnvSource, Error, Source};

/// Environment variable names (Istio's where Istio has one).
pub mod env {
    /// Path of the local YAML config (workloads, services, policies).
    pub const LOCAL_XDS_PATH: &str = "LOCAL_XDS_PATH";
    /// xDS server address; empty disables xDS.
    pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
    /// Istio CA address; empty selects the local CA.
    pub const CA_ADDRESS: &str = "CA_ADDRESS";
    /// Roots verifying the xDS server: a path, `SYSTEM`, or inline PEM.
    pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
    /// Roots verifying the Istio CA: a path, `SYSTEM`, or inline PEM.
    pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
    /// Bearer token for xDS and CA requests: a file path, or the token itself.
    pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
    /// This proxy's pod name (xDS node id).
    pub const POD_NAME: &str = "POD_NAME";
    /// This proxy's pod namespace (xDS node id).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// This proxy's pod IP (xDS node id).
    pub const INSTANCE_IP: &str = "INSTANCE_IP";
    /// Directory of the local (plug-in layout) CA.
    pub const LOCAL_CA_DIR: &str = "LOCAL_CA_DIR";
    /// `shared` or `dedicated`.
    pub const PROXY_MODE: &str = "PROXY_MODE";
    /// `<namespace>/<name>/<service account>` of the workload a dedicated proxy serves.
    pub const PROXY_WORKLOAD_INFO: &str = "PROXY_WORKLOAD_INFO";
    /// Name of the node this proxy runs on.
    pub const NODE_NAME: &str = "NODE_NAME";
    /// Cluster id.
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    /// Overrides `CLUSTER_ID`.
    pub const ISTIO_META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
    /// Trust domain of the proxy's own identity.
    pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
    /// Network of this proxy.
    pub const NETWORK: &str = "NETWORK";
    /// Enables the SOCKS5 listener on 15080.
    pub const UNSTABLE_ENABLE_SOCKS5: &str = "UNSTABLE_ENABLE_SOCKS5";
    /// Streams per pooled HBONE connection.
    pub const POOL_MAX_STREAMS_PER_CONNECTION: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
    /// Idle time after which a pooled connection is released.
    pub const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
    /// HTTP/2 stream window.
    pub const HTTP2_STREAM_WINDOW_SIZE: &str = "HTTP2_STREAM_WINDOW_SIZE";
    /// HTTP/2 connection window.
    pub const HTTP2_CONNECTION_WINDOW_SIZE: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
    /// HTTP/2 max frame size.
    pub const HTTP2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
    /// Workload certificate lifetime.
    pub const SECRET_TTL: &str = "SECRET_TTL";
    /// Keep the client's source IP toward the app: unset = best effort, true = required.
    pub const ENABLE_ORIG_SRC: &str = "ENABLE_ORIG_SRC";
    /// SO_MARK of every socket the proxy opens.
    pub const PACKET_MARK: &str = "PACKET_MARK";
    /// Shared mode: the node agent's ZDS socket (SOCK_SEQPACKET).
    pub const INPOD_UDS: &str = "INPOD_UDS";
    /// Shared mode: SO_REUSEPORT on the per-pod listeners.
    pub const INPOD_PORT_REUSE: &str = "INPOD_PORT_REUSE";
    /// How long draining connections may finish after shutdown starts.
    pub const CONNECTION_TERMINATION_DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
    /// Kubernetes pod termination grace period; derives the termination deadline.
    pub const TERMINATION_GRACE_PERIOD_SECONDS: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
    /// Listen on IPv6 too.
    pub const IPV6_ENABLED: &str = "IPV6_ENABLED";
    /// Log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// `json` for JSON logs.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";

    /// Every variable above: what the parser reads (besides the `ISTIO_META_*` prefix).
    /// `tests/chart_env.rs` checks the Helm chart against it and it against this module.
    pub const ALL: &[&str] = &[
        LOCAL_XDS_PATH,
        XDS_ADDRESS,
        CA_ADDRESS,
        XDS_ROOT_CA,
        CA_ROOT_CA,
        AUTH_TOKEN,
        POD_NAME,
        POD_NAMESPACE,
        INSTANCE_IP,
        LOCAL_CA_DIR,
        PROXY_MODE,
        PROXY_WORKLOAD_INFO,
        NODE_NAME,
        CLUSTER_ID,
        ISTIO_META_CLUSTER_ID,
        TRUST_DOMAIN,
        NETWORK,
        UNSTABLE_ENABLE_SOCKS5,
        POOL_MAX_STREAMS_PER_CONNECTION,
        POOL_UNUSED_RELEASE_TIMEOUT,
        HTTP2_STREAM_WINDOW_SIZE,
        HTTP2_CONNECTION_WINDOW_SIZE,
        HTTP2_FRAME_SIZE,
        SECRET_TTL,
        ENABLE_ORIG_SRC,
        PACKET_MARK,
        INPOD_UDS,
        INPOD_PORT_REUSE,
        CONNECTION_TERMINATION_DEADLINE,
        TERMINATION_GRACE_PERIOD_SECONDS,
        IPV6_ENABLED,
        RUST_LOG,
        LOG_FORMAT,
    ];
}

/// `shared` (one proxy for every pod of the node) or `dedicated` (one workload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Serves every enrolled pod of the node (needs the node agent).
    Shared,
    /// Serves the one workload of its own network namespace.
    Dedicated,
}

impl FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(ProxyMode::Shared),
            "dedicated" => Ok(ProxyMode::Dedicated),
            _ => Err("expected shared or dedicated".into()),
        }
    }
}

/// The workload a dedicated proxy serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service account.
    pub service_account: String,
}

impl FromStr for WorkloadInfo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                Ok(WorkloadInfo {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err("expected <namespace>/<name>/<service account>".into()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
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

/// Where certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CaSource {
    /// Sign locally with the plug-in CA in this directory (created if empty).
    Local(PathBuf),
    /// Ask an Istio CA at this address (`https://host:port`, or `http://` for plaintext).
    Istio(String),
}

/// Whether to spoof the client's source IP toward the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OrigSrc {
    /// Try, fall back to the proxy's own address (unset).
    BestEffort,
    /// Required: fail start-up if not possible.
    Required,
    /// Never.
    Disabled,
}

/// HTTP/2 settings for HBONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Http2Config {
    /// Initial stream window.
    pub stream_window: u32,
    /// Initial connection window.
    pub connection_window: u32,
    /// Max frame size.
    pub frame_size: u32,
}

/// The proxy's complete, validated configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Shared or dedicated.
    pub proxy_mode: ProxyMode,
    /// The workload served in dedicated mode.
    pub proxy_workload_info: Option<WorkloadInfo>,
    /// Node name (required to find local workloads).
    pub node_name: String,
    /// Cluster id.
    pub cluster_id: String,
    /// Trust domain of the proxy's own identity.
    pub trust_domain: String,
    /// Network of this proxy (empty = default network).
    pub network: String,
    /// Local YAML config, watched for changes.
    pub local_xds_path: Option<PathBuf>,
    /// xDS server (`https://host:port`, or `http://` for plaintext); `None` disables xDS.
    pub xds_address: Option<String>,
    /// Certificate source.
    pub ca: CaSource,
    /// Roots, token and node identity for the xDS server and the CA.
    pub control: ControlPlaneConfig,
    /// Workload certificate lifetime.
    #[serde(serialize_with = "serialize_duration")]
    pub secret_ttl: Duration,
    /// SOCKS5 listener enabled.
    pub enable_socks5: bool,
    /// Streams per pooled HBONE connection.
    pub pool_max_streams_per_connection: u32,
    /// Idle time after which a pooled connection is released.
    #[serde(serialize_with = "serialize_duration")]
    pub pool_unused_release_timeout: Duration,
    /// HTTP/2 settings.
    pub http2: Http2Config,
    /// Source IP preservation toward the app.
    pub orig_src: OrigSrc,
    /// SO_MARK on every socket the proxy opens (`None` = unmarked).
    pub packet_mark: Option<u32>,
    /// Shared (in-pod) mode settings.
    pub inpod: InpodConfig,
    /// Deadline for draining connections at shutdown.
    #[serde(serialize_with = "serialize_duration")]
    pub termination_deadline: Duration,
    /// Outbound capture listener (15001).
    pub outbound_addr: SocketAddr,
    /// Inbound plaintext capture listener (15006).
    pub inbound_plaintext_addr: SocketAddr,
    /// Inbound HBONE listener (15008).
    pub inbound_addr: SocketAddr,
    /// SOCKS5 listener (15080).
    pub socks5_addr: SocketAddr,
    /// Admin listener (15000, localhost).
    pub admin_addr: SocketAddr,
    /// Readiness listener (15021).
    pub readiness_addr: SocketAddr,
    /// Prometheus metrics listener (15020, wildcard).
    pub metrics_addr: SocketAddr,
    /// Outbound upstream connect timeout.
    #[serde(serialize_with = "serialize_duration")]
    pub connect_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// How often the local config file is checked for changes.
    #[serde(serialize_with = "serialize_duration")]
    pub local_config_poll: Duration,
}

pub use mesh_core::parse_duration;

fn wildcard(ipv6: bool, port: u16) -> SocketAddr {
    if ipv6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl Config {
    /// Reads and validates the configuration from `src`.
    pub fn from_source(src: &dyn Source) -> Result<Config, Error> {
        let proxy_mode =
            var(src, env::PROXY_MODE, ProxyMode::from_str)?.unwrap_or(ProxyMode::Shared);
        let proxy_workload_info = var(src, env::PROXY_WORKLOAD_INFO, WorkloadInfo::from_str)?;
        let ipv6 = var(src, env::IPV6_ENABLED, parse_bool)?.unwrap_or(true);

        let ca = match string(src, env::CA_ADDRESS) {
            Some(addr) => CaSource::Istio(control::control_address(env::CA_ADDRESS, &addr)?),
            None => CaSource::Local(
                path(src, env::LOCAL_CA_DIR)
                    .unwrap_or_else(|| PathBuf::from("./var/run/ztunnel/ca")),
            ),
        };

        let termination_deadline =
            match var(src, env::CONNECTION_TERMINATION_DEADLINE, parse_duration)? {
                Some(d) => d,
                None => match var(src, env::TERMINATION_GRACE_PERIOD_SECONDS, |s| {
                    s.parse::<u64>().map_err(|e| e.to_string())
                })? {
                    // Leave the kubelet time to kill us after the drain, as Istio does.
                    Some(tgps) if tgps > 10 => Duration::from_secs(tgps - 5),
                    Some(tgps) => Duration::from_secs(tgps.saturating_sub(1).max(1)),
                    None => Duration::from_secs(5),
                },
            };

        let http2 = Http2Config {
            stream_window: var(src, env::HTTP2_STREAM_WINDOW_SIZE, parse_u32)?.unwrap_or(4 << 20),
            connection_window: var(src, env::HTTP2_CONNECTION_WINDOW_SIZE, parse_u32)?
                .unwrap_or(16 << 20),
            frame_size: var(src, env::HTTP2_FRAME_SIZE, parse_u32)?.unwrap_or(1 << 20),
        };

        let cfg = Config {
            proxy_mode,
            proxy_workload_info,
            node_name: src.get(env::NODE_NAME).unwrap_or_default(),
            cluster_id: string(src, env::ISTIO_META_CLUSTER_ID)
                .or_else(|| string(src, env::CLUSTER_ID))
                .unwrap_or_else(|| "Kubernetes".into()),
            trust_domain: string(src, env::TRUST_DOMAIN).unwrap_or_else(|| "cluster.local".into()),
            network: src.get(env::NETWORK).unwrap_or_default(),
            local_xds_path: path(src, env::LOCAL_XDS_PATH),
            xds_address: string(src, env::XDS_ADDRESS)
                .map(|addr| control::control_address(env::XDS_ADDRESS, &addr))
                .transpose()?,
            ca,
            control: ControlPlaneConfig::from_source(src)?,
            secret_ttl: var(src, env::SECRET_TTL, parse_duration)?
                .unwrap_or(Duration::from_secs(24 * 3600)),
            enable_socks5: var(src, env::UNSTABLE_ENABLE_SOCKS5, parse_bool)?.unwrap_or(false),
            pool_max_streams_per_connection: var(
                src,
                env::POOL_MAX_STREAMS_PER_CONNECTION,
                parse_u32,
            )?
            .unwrap_or(100),
            pool_unused_release_timeout: var(
                src,
                env::POOL_UNUSED_RELEASE_TIMEOUT,
                parse_duration,
            )?
            .unwrap_or(Duration::from_secs(300)),
            http2,
            orig_src: match var(src, env::ENABLE_ORIG_SRC, parse_bool)? {
                None => OrigSrc::BestEffort,
                Some(true) => OrigSrc::Required,
                Some(false) => OrigSrc::Disabled,
            },
            packet_mark: Some(var(src, env::PACKET_MARK, parse_u32)?.unwrap_or(1337)),
            inpod: InpodConfig {
                uds: path(src, env::INPOD_UDS).unwrap_or_else(|| PathBuf::from(inpod::DEFAULT_UDS)),
                port_reuse: var(src, env::INPOD_PORT_REUSE, parse_bool)?.unwrap_or(true),
                ipv6,
            },
            termination_deadline,
            outbound_addr: wildcard(ipv6, 15001),
            inbound_plaintext_addr: wildcard(ipv6, 15006),
            inbound_addr: wildcard(ipv6, 15008),
            socks5_addr: localhost(15080),
            admin_addr: localhost(15000),
            readiness_addr: wildcard(ipv6, 15021),
            metrics_addr: wildcard(ipv6, 15020),
            connect_timeout: Duration::from_secs(10),
            log_format: var(src, env::LOG_FORMAT, LogFormat::from_str)?.unwrap_or(LogFormat::Text),
            local_config_poll: Duration::from_millis(250),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), Error> {
        match self.proxy_mode {
            ProxyMode::Dedicated if self.proxy_workload_info.is_none() => {
                return Err(Error::Invalid(format!(
                    "{} is required when {}=dedicated",
                    env::PROXY_WORKLOAD_INFO,
                    env::PROXY_MODE
                )));
            }
            ProxyMode::Shared => inpod::validate(self)?,
            ProxyMode::Dedicated => {}
        }
        if self.local_xds_path.is_none() && self.xds_address.is_none() {
            return Err(Error::Invalid(format!(
                "no configuration source: set {} (control plane) or {} (local config file), or both",
                env::XDS_ADDRESS,
                env::LOCAL_XDS_PATH
            )));
        }
        if self.pool_max_streams_per_connection == 0 {
            return Err(Error::InvalidVar {
                var: env::POOL_MAX_STREAMS_PER_CONNECTION,
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.http2.frame_size < 16_384 || self.http2.frame_size > 16_777_215 {
            return Err(Error::InvalidVar {
                var: env::HTTP2_FRAME_SIZE,
                value: self.http2.frame_size.to_string(),
                reason: "must be between 16384 and 16777215".into(),
            });
        }
        if self.secret_ttl < Duration::from_secs(60) {
            return Err(Error::InvalidVar {
                var: env::SECRET_TTL,
                value: format!("{:?}", self.secret_ttl),
                reason: "must be at least 1m".into(),
            });
        }
        Ok(())
    }

    /// The workload served in dedicated mode (validated to exist then).
    pub fn workload_info(&self) -> Option<&WorkloadInfo> {
        self.proxy_workload_info.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (env::PROXY_MODE, "dedicated"),
            (env::PROXY_WORKLOAD_INFO, "default/echo/echo-sa"),
            (env::LOCAL_XDS_PATH, "/tmp/x.yaml"),
            (env::LOCAL_CA_DIR, "/tmp/ca"),
        ])
    }

    #[test]
    fn defaults() {
        let cfg = Config::from_source(&base()).unwrap();
        assert_eq!(cfg.proxy_mode, ProxyMode::Dedicated);
        assert_eq!(cfg.packet_mark, Some(1337));
        assert_eq!(cfg.pool_max_streams_per_connection, 100);
        assert_eq!(cfg.termination_deadline, Duration::from_secs(5));
        assert_eq!(cfg.http2.stream_window, 4 << 20);
        assert_eq!(cfg.inbound_addr.port(), 15008);
        assert_eq!(cfg.ca, CaSource::Local("/tmp/ca".into()));
        assert_eq!(cfg.cluster_id, "Kubernetes");
        let info = cfg.workload_info().unwrap();
        assert_eq!(info.service_account, "echo-sa");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (env::PROXY_MODE, "sidecar"),
            (env::PROXY_WORKLOAD_INFO, "default/echo"),
            (env::POOL_MAX_STREAMS_PER_CONNECTION, "many"),
            (env::SECRET_TTL, "1 day"),
            (env::PACKET_MARK, "0xzz"),
            (env::UNSTABLE_ENABLE_SOCKS5, "maybe"),
            (env::LOG_FORMAT, "xml"),
            (env::CONNECTION_TERMINATION_DEADLINE, "soon"),
        ] {
            let mut src = base();
            src.insert(var, value);
            let err = Config::from_source(&src).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
            assert!(err.contains(value), "{err}");
        }
    }

    #[test]
    fn cross_field_validation() {
        let mut src = base();
        src.remove(env::PROXY_WORKLOAD_INFO);
        assert!(
            Config::from_source(&src)
                .unwrap_err()
                .to_string()
                .contains(env::PROXY_WORKLOAD_INFO)
        );
        let mut src = base();
        src.insert(env::POOL_MAX_STREAMS_PER_CONNECTION, "0");
        assert!(Config::from_source(&src).is_err());
        let mut src = base();
        src.remove(env::LOCAL_XDS_PATH);
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(
            err.contains(env::XDS_ADDRESS) && err.contains(env::LOCAL_XDS_PATH),
            "{err}"
        );
    }

    #[test]
    fn control_plane() {
        let mut src = base();
        src.remove(env::LOCAL_XDS_PATH);
        src.insert(env::XDS_ADDRESS, "istiod.istio-system.svc:15012");
        src.insert(env::CA_ADDRESS, "http://127.0.0.1:15010");
        src.insert(env::POD_NAME, "ztunnel-abc");
        let cfg = Config::from_source(&src).unwrap();
        assert_eq!(
            cfg.xds_address.as_deref(),
            Some("https://istiod.istio-system.svc:15012")
        );
        assert_eq!(cfg.ca, CaSource::Istio("http://127.0.0.1:15010".into()));
        assert_eq!(cfg.control.pod_name, "ztunnel-abc");
        assert_eq!(
            cfg.control.auth_token,
            AuthToken::DefaultFile(control::DEFAULT_AUTH_TOKEN.into())
        );
        for (var, value) in [
            (env::XDS_ADDRESS, "ftp://istiod:15012"),
            (env::CA_ADDRESS, "https://istiod:15012/v1"),
            (env::INSTANCE_IP, "not-an-ip"),
        ] {
            let mut bad = src.clone();
            bad.insert(var, value);
            let err = Config::from_source(&bad).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn overrides() {
        let mut src = base();
        src.insert(env::PACKET_MARK, "0x111");
        src.insert(env::POOL_UNUSED_RELEASE_TIMEOUT, "90s");
        src.insert(env::TERMINATION_GRACE_PERIOD_SECONDS, "30");
        src.insert(env::ENABLE_ORIG_SRC, "false");
        src.insert(env::ISTIO_META_CLUSTER_ID, "c1");
        let cfg = Config::from_source(&src).unwrap();
        assert_eq!(cfg.packet_mark, Some(0x111));
        assert_eq!(cfg.pool_unused_release_timeout, Duration::from_secs(90));
        assert_eq!(cfg.termination_deadline, Duration::from_secs(25));
        assert_eq!(cfg.orig_src, OrigSrc::Disabled);
        assert_eq!(cfg.cluster_id, "c1");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        for bad in ["", "s", "10x", "h1", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
