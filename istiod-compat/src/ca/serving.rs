//! The control plane's own TLS (port 15012): a serving certificate issued by the mesh CA,
//! re-issued at half-life, and the accept loop handing finished handshakes to tonic.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use mesh_ca::{Ca, CaError, Validity};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

/// Lifetime of a serving certificate (re-issued at half-life).
const SERVING_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the gRPC server.
const ACCEPT_BACKLOG: usize = 64;

/// What the serving certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServingNames {
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
}

/// Why TLS serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The CA refused to issue the certificate.
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] CaError),
    /// rustls refused the key or configuration.
    #[error("serving TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

struct Current {
    key: Arc<CertifiedKey>,
    refresh_at: SystemTime,
}

/// Resolves every handshake to the current serving certificate, re-issuing it from the CA
/// once half its lifetime has passed.
pub struct ServingCert {
    ca: Arc<Ca>,
    names: ServingNames,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn new(ca: Arc<Ca>, names: ServingNames) -> Result<ServingCert, ServingError> {
        let current = issue(&ca, &names)?;
        info!(dns = ?names.dns, ips = ?names.ips, "serving certificate issued");
        Ok(ServingCert {
            ca,
            names,
            current: Mutex::new(current),
        })
    }

    /// A rustls server configuration (TLS 1.3 and 1.2, ALPN h2) using this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, ServingError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn get(&self) -> Arc<CertifiedKey> {
        let mut current = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if SystemTime::now() >= current.refresh_at {
            match issue(&self.ca, &self.names) {
                Ok(fresh) => {
                    info!("serving certificate re-issued");
                    *current = fresh;
                }
                // The old one is still valid for half its lifetime; retried on the next
                // handshake.
                Err(e) => warn!(error = %e, "re-issuing the serving certificate failed"),
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn issue(ca: &Ca, names: &ServingNames) -> Result<Current, ServingError> {
    let validity = Validity::from_now(SERVING_TTL)?;
    let issued = ca.issue_server(&names.dns, &names.ips, validity)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(issued.chain, issued.key, &provider)?;
    let half = validity
        .not_after
        .duration_since(validity.not_before)
        .unwrap_or_default()
        / 2;
    Ok(Current {
        key: Arc::new(key),
        refresh_at: validity.not_before + half,
    })
}

/// A TLS connection as tonic serves it.
pub struct TlsConn(TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown` and yields the connections. Accept errors are
/// logged and never end the server (tonic would stop on e.g. EMFILE).
pub fn tcp_incoming(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TcpStream, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        while let Some((stream, _)) = accept(&listener, &shutdown).await {
            if tx.send(Ok(stream)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Like [`tcp_incoming`], handshaking TLS on each connection in its own task (a slow client
/// never blocks the others) and yielding the finished TLS connections.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        while let Some((stream, peer)) = accept(&listener, &shutdown).await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        // The server has stopped if the receiver is gone.
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The next connection, or `None` on shutdown.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Best effort: latency of small gRPC messages.
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
}
