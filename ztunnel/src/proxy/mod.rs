//! The data path: listeners, outbound, inbound, HBONE and the connection pool.

pub mod connection_manager;
pub mod copy;
pub mod error;
pub mod hbone;
pub mod inbound;
pub mod listener;
pub mod memory;
pub mod outbound;
pub mod pool;
pub mod socks5;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::TlsConnector;

use crate::config::{Config, OrigSrc, WorkloadInfo};
use crate::identity::{BoxFuture, CertManager, WorkloadCertificate};
use crate::metrics::Metrics;
use crate::socket::{OriginalDestination, ProxySockets, SocketFactory};
use crate::state::{StateStore, Workload};
use crate::tls;
use connection_manager::ConnectionManager;
use error::ProxyError;
use hbone::{H2Client, H2Settings, HboneError, SetupStage};
use pool::{Connector, Pool, WorkloadKey};

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// Connections to these ports on the proxy itself would loop.
pub fn is_illegal_port(port: u16) -> bool {
    matches!(port, OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | HBONE_PORT)
}

/// How long a connection waits for its local workload to appear in the configuration.
const LOCAL_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// Everything the connection handlers share.
pub struct ProxyInputs {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Mesh state.
    pub state: Arc<StateStore>,
    /// Workload certificates.
    pub certs: Arc<CertManager>,
    /// The workload this proxy serves (dedicated: `PROXY_WORKLOAD_INFO`; shared: the pod's
    /// ZDS WorkloadInfo).
    pub workload: Option<WorkloadInfo>,
    /// HBONE connection pool.
    pub pool: Pool,
    /// Socket creation (mark; the pod's netns in shared mode).
    pub sockets: ProxySockets,
    /// Original destination lookup.
    pub orig_dst: Arc<dyn OriginalDestination>,
    /// Live inbound connections, for policy revocation.
    pub connections: Arc<ConnectionManager>,
    /// HTTP/2 settings.
    pub h2: H2Settings,
    /// Whether upstream connections to the app spoof the client IP.
    pub spoof_source: bool,
    /// Traffic metrics.
    pub metrics: Arc<Metrics>,
    /// Server TLS config for the current certificate (rebuilt when the cert changes).
    server_config: Mutex<Option<(Arc<WorkloadCertificate>, Arc<rustls::ServerConfig>)>>,
}

/// What one proxy instance is built from (see [`ProxyInputs::from_parts`]).
pub struct ProxyParts {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Mesh state (shared by every instance).
    pub state: Arc<StateStore>,
    /// Workload certificates (shared by every instance).
    pub certs: Arc<CertManager>,
    /// The workload served.
    pub workload: Option<WorkloadInfo>,
    /// Where and how sockets are made.
    pub sockets: ProxySockets,
    /// Original destination lookup.
    pub orig_dst: Arc<dyn OriginalDestination>,
    /// Whether upstream connections to the app spoof the client IP.
    pub spoof_source: bool,
    /// Metrics (shared by every instance).
    pub metrics: Arc<Metrics>,
}

impl ProxyInputs {
    /// Builds the inputs of the dedicated-mode proxy: it serves `PROXY_WORKLOAD_INFO` from
    /// the current netns. `spoof_source` is the start-up decision for source-IP preservation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        state: Arc<StateStore>,
        certs: Arc<CertManager>,
        sockets: SocketFactory,
        orig_dst: Arc<dyn OriginalDestination>,
        spoof_source: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<ProxyInputs> {
        let workload = cfg.workload_info().cloned();
        ProxyInputs::from_parts(ProxyParts {
            cfg,
            state,
            certs,
            workload,
            sockets: sockets.into(),
            orig_dst,
            spoof_source,
            metrics,
        })
    }

    /// Builds one proxy instance (its own pool and connection manager) from `parts`.
    pub fn from_parts(parts: ProxyParts) -> Arc<ProxyInputs> {
        let ProxyParts {
            cfg,
            state,
            certs,
            workload,
            sockets,
            orig_dst,
            spoof_source,
            metrics,
        } = parts;
        let h2 = H2Settings {
            stream_window: cfg.http2.stream_window,
            connection_window: cfg.http2.connection_window,
            frame_size: cfg.http2.frame_size,
            max_streams_per_connection: cfg.pool_max_streams_per_connection,
            ..H2Settings::default()
        };
        let connector = Arc::new(TlsHboneConnector {
            certs: certs.clone(),
            sockets: sockets.clone(),
            h2: h2.clone(),
            connect_timeout: cfg.connect_timeout,
        });
        let pool = Pool::new(
            connector,
            cfg.pool_max_streams_per_connection,
            cfg.pool_unused_release_timeout,
        );
        Arc::new(ProxyInputs {
            cfg,
            state,
            certs,
            workload,
            pool,
            sockets,
            orig_dst,
            connections: Arc::new(ConnectionManager::default()),
            h2,
            spoof_source,
            metrics,
            server_config: Mutex::new(None),
        })
    }

    /// The workload this proxy serves, waiting briefly for configuration to deliver it.
    pub async fn local_workload(&self) -> Result<Arc<Workload>, ProxyError> {
        let Some(info) = self.workload.as_ref() else {
            return Err(ProxyError::UnknownLocalWorkload(
                "(no workload: PROXY_WORKLOAD_INFO unset)".into(),
            ));
        };
        let find = || {
            self.state.snapshot().workload_by_info(
                &info.namespace,
                &info.name,
                &info.service_account,
            )
        };
        if let Some(w) = find() {
            return Ok(w);
        }
        let mut changes = self.state.subscribe();
        let wait = async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                if let Some(w) = find() {
                    return Some(w);
                }
            }
        };
        tokio::time::timeout(LOCAL_WORKLOAD_WAIT, wait)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                ProxyError::UnknownLocalWorkload(format!(
                    "{}/{} (service account {})",
                    info.namespace, info.name, info.service_account
                ))
            })
    }

    /// Connects to the local application at `dst`, from the client's IP when allowed.
    pub async fn connect_local(
        &self,
        dst: SocketAddr,
        client: SocketAddr,
    ) -> Result<tokio::net::TcpStream, ProxyError> {
        let src = (self.spoof_source && client.ip() != dst.ip()).then_some(client.ip());
        self.sockets
            .connect(dst, src, self.cfg.connect_timeout)
            .await
            .map_err(|source| ProxyError::Connect { dst, source })
    }

    /// The server TLS config for `cert`, cached until the certificate changes.
    pub fn server_config(
        &self,
        cert: &Arc<WorkloadCertificate>,
    ) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
        if let Ok(cached) = self.server_config.lock()
            && let Some((c, cfg)) = cached.as_ref()
            && Arc::ptr_eq(c, cert)
        {
            return Ok(cfg.clone());
        }
        let cfg = tls::server_config(cert)?;
        if let Ok(mut cached) = self.server_config.lock() {
            *cached = Some((cert.clone(), cfg.clone()));
        }
        Ok(cfg)
    }
}

/// Dials pooled HBONE connections: TCP (marked) → mTLS with the source identity's
/// certificate, verifying the peer against the expected identities → HTTP/2.
struct TlsHboneConnector {
    certs: Arc<CertManager>,
    sockets: ProxySockets,
    h2: H2Settings,
    connect_timeout: Duration,
}

impl Connector for TlsHboneConnector {
    fn connect<'a>(&'a self, key: &'a WorkloadKey) -> BoxFuture<'a, Result<H2Client, HboneError>> {
        Box::pin(async move {
            let setup = |stage, detail: String| HboneError::Setup {
                stage,
                dst: key.dst,
                detail,
            };
            let cert = self
                .certs
                .fetch_certificate(&key.src_id)
                .await
                .map_err(|e| setup(SetupStage::Certificate, format!("{}: {e}", key.src_id)))?;
            let config = tls::client_config(&cert, key.dst_id.clone())
                .map_err(|e| setup(SetupStage::TlsConfig, e.to_string()))?;
            let tcp = self
                .sockets
                .connect(key.dst, None, self.connect_timeout)
                .await
                .map_err(|e| {
                    let stage = if e.kind() == std::io::ErrorKind::TimedOut {
                        SetupStage::TcpTimeout
                    } else {
                        SetupStage::TcpConnect
                    };
                    setup(stage, e.to_string())
                })?;
            let tls = TlsConnector::from(config)
                .connect(tls::server_name(), tls_transport(tcp))
                .await
                .map_err(|e| setup(SetupStage::TlsHandshake, e.to_string()))?;
            hbone::handshake(tls, &self.h2).await
        })
    }
}

/// Read buffer under TLS on HBONE connections. rustls reads the socket at most 4 KiB at a
/// time; with this buffer one `recv` takes up to 64 KiB (several TLS records), which cuts
/// the read syscalls on a busy tunnel by about four. One per HBONE connection (pooled and
/// shared by many streams), not per proxied connection.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// The transport under TLS for an HBONE connection: the socket with [`TLS_READ_BUFFER`].
pub(crate) fn tls_transport(
    tcp: tokio::net::TcpStream,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}

/// Whether source-IP spoofing is on, given the config and what the process may do.
pub fn decide_spoofing(cfg: &Config, sockets: &SocketFactory) -> Result<bool, String> {
    match cfg.orig_src {
        OrigSrc::Disabled => Ok(false),
        OrigSrc::BestEffort => Ok(sockets.can_spoof_source()),
        OrigSrc::Required if sockets.can_spoof_source() => Ok(true),
        OrigSrc::Required => Err(
            "ENABLE_ORIG_SRC=true but IP_TRANSPARENT is not permitted (needs CAP_NET_ADMIN)".into(),
        ),
    }
}
