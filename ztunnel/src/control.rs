//! gRPC channels to the control plane (the xDS server and the Istio CA), and the headers
//! every control-plane request carries (reference §8).
//!
//! The channel is tonic's, but the connection is dialled here: TCP through the
//! [`SocketFactory`] (so it carries the proxy's SO_MARK and is not captured by the pod's own
//! redirect rules), then rustls with the proxy's crypto provider, ALPN `h2` and the server
//! name of the address. Roots are loaded on every new connection, so a rotated root file
//! takes effect on the next reconnect. `http://` addresses skip TLS (h2c, local tests).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::config::{AuthToken, RootCerts, is_plaintext, parse_pem_certs};
use crate::socket::SocketFactory;
use crate::tls::{ALPN_H2, provider};

/// Time allowed for TCP connect plus the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval on idle and busy control-plane connections.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long closes the connection.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors reaching the control plane (connecting, TLS, credentials).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The address is not a usable URI (validated in config; kept for direct callers).
    #[error("control plane address {address:?}: {reason}")]
    BadAddress {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver error.
        #[source]
        source: io::Error,
    },
    /// No address of the host accepted a TCP connection.
    #[error("connecting to {host} ({addrs:?}): {source}")]
    Connect {
        /// Host as configured.
        host: String,
        /// Addresses tried.
        addrs: Vec<SocketAddr>,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// The trust roots could not be loaded.
    #[error("loading control plane roots ({what}): {reason}")]
    Roots {
        /// The file, `SYSTEM` or `inline PEM`.
        what: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (untrusted certificate, name mismatch, ...).
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        /// Host as configured.
        host: String,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// The bearer token file exists but could not be read, or the token is not a valid
    /// header value.
    #[error("auth token {path}: {reason}")]
    Token {
        /// The file (or `AUTH_TOKEN` for a static token).
        path: String,
        /// Why.
        reason: String,
    },
}

/// A gRPC status for logs and errors: the code name, the message, and the transport error
/// chain behind it (e.g. `Unavailable: tcp connect error: Connection refused`).
pub fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// One control-plane server: where it is and which roots verify it.
#[derive(Debug, Clone)]
pub struct ControlTarget {
    /// `https://host:port` or `http://host:port`.
    pub address: String,
    /// Roots for `https`.
    pub roots: RootCerts,
    /// Socket options (the mark).
    pub sockets: SocketFactory,
}

impl ControlTarget {
    /// A lazily connecting channel: nothing is dialled until the first request, and a
    /// broken connection is re-dialled on the next one. h2 only, connect timeout 5 s,
    /// HTTP/2 keepalive 30 s (10 s timeout), TCP keepalive 300 s / 75 s / 9. Must be called
    /// within a tokio runtime (the channel spawns its worker).
    pub fn channel(&self) -> Result<Channel, ControlError> {
        let bad = |reason: String| ControlError::BadAddress {
            address: self.address.clone(),
            reason,
        };
        let origin: Uri = self
            .address
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let tls = !is_plaintext(&self.address);
        if !tls {
            warn!(address = %self.address, "control plane connection is plaintext (http://): \
                tokens and configuration travel unencrypted; use only for local tests");
        }
        // tonic is handed an `http://` URI to dial (TLS is ours, in the connector: should
        // anything in the build enable tonic's own TLS, it must not wrap the stream twice)
        // and the real address as the origin (`:scheme` and `:authority` of requests).
        let authority = origin
            .authority()
            .ok_or_else(|| bad("no host".into()))?
            .clone();
        let dial = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let endpoint = Endpoint::from(dial)
            .origin(origin)
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(Connector {
            tls,
            roots: self.roots.clone(),
            sockets: self.sockets,
        }))
    }
}

/// A connection to the control plane: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Dials control-plane connections for tonic.
#[derive(Clone)]
struct Connector {
    /// TLS (https) or h2c (http), from the configured address.
    tls: bool,
    roots: RootCerts,
    sockets: SocketFactory,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<Box<dyn Io>>, ControlError>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = ControlError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<Box<dyn Io>, ControlError> {
        let tls = self.tls;
        let host = uri
            .host()
            .ok_or_else(|| ControlError::BadAddress {
                address: uri.to_string(),
                reason: "no host".into(),
            })?
            .to_string();
        // `[::1]` in a URI; the resolver and the TLS name want `::1`.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = self.dial(&bare, port).await?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        let config = client_config(&self.roots)?;
        let name = ServerName::try_from(bare.clone()).map_err(|e| ControlError::BadAddress {
            address: uri.to_string(),
            reason: format!("{bare:?} is not a valid TLS server name: {e}"),
        })?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ControlError::Tls { host, source })?;
        Ok(Box::new(stream))
    }

    async fn dial(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, ControlError> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ControlError::Resolve {
                    host: host.to_string(),
                    source,
                })?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for addr in &addrs {
            match self.sockets.connect(*addr, None, CONNECT_TIMEOUT).await {
                Ok(stream) => {
                    let keepalive = TcpKeepalive::new()
                        .with_time(Duration::from_secs(300))
                        .with_interval(Duration::from_secs(75))
                        .with_retries(9);
                    if let Err(e) = SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                        debug!(%addr, error = %e, "setting control plane TCP keepalive");
                    }
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(ControlError::Connect {
            host: host.to_string(),
            addrs,
            source: last,
        })
    }
}

/// TLS 1.3 client config trusting `roots`, ALPN `h2`, no client certificate.
fn client_config(roots: &RootCerts) -> Result<Arc<ClientConfig>, ControlError> {
    let certs = load_roots(roots)?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ControlError::Roots {
            what: describe(roots),
            reason: "no usable root certificate".into(),
        });
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ControlError::Roots {
            what: describe(roots),
            reason: format!("TLS configuration: {e}"),
        })?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn describe(roots: &RootCerts) -> String {
    match roots {
        RootCerts::File(path) => path.display().to_string(),
        RootCerts::System => "SYSTEM".into(),
        RootCerts::Pem(_) => "inline PEM".into(),
    }
}

/// The certificates of a root source, read now.
pub fn load_roots(roots: &RootCerts) -> Result<Vec<CertificateDer<'static>>, ControlError> {
    let fail = |reason: String| ControlError::Roots {
        what: describe(roots),
        reason,
    };
    let certs = match roots {
        RootCerts::File(path) => {
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            parse_pem_certs(&pem).map_err(fail)?
        }
        RootCerts::Pem(pem) => parse_pem_certs(pem.as_bytes()).map_err(fail)?,
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(fail(format!(
                    "no system roots found ({} errors)",
                    found.errors.len()
                )));
            }
            found.certs
        }
    };
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The `authorization` and `clusterid` headers of every xDS and CA request.
#[derive(Debug, Clone)]
pub struct AuthHeaders {
    /// Where the bearer token comes from.
    pub token: AuthToken,
    /// `clusterid` header value.
    pub cluster_id: String,
}

impl AuthHeaders {
    /// Reads the token now (files are re-read on every request) and sets the headers.
    pub async fn apply(&self, metadata: &mut MetadataMap) -> Result<(), ControlError> {
        if let Some(token) = self.token().await? {
            let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                ControlError::Token {
                    path: self.token_origin(),
                    reason: "the token is not a valid header value (non-ASCII?)".into(),
                }
            })?;
            metadata.insert("authorization", value);
        }
        let cluster = AsciiMetadataValue::try_from(self.cluster_id.as_str()).map_err(|_| {
            ControlError::Token {
                path: "CLUSTER_ID".into(),
                reason: format!("{:?} is not a valid header value", self.cluster_id),
            }
        })?;
        metadata.insert("clusterid", cluster);
        Ok(())
    }

    fn token_origin(&self) -> String {
        match &self.token {
            AuthToken::DefaultFile(path) => path.display().to_string(),
            AuthToken::Configured(v) if std::path::Path::new(v).is_file() => v.clone(),
            AuthToken::Configured(_) => "AUTH_TOKEN (static)".into(),
        }
    }

    async fn token(&self) -> Result<Option<String>, ControlError> {
        let (path, must_exist) = match &self.token {
            AuthToken::DefaultFile(path) => (path.clone(), false),
            AuthToken::Configured(value) => {
                let path = PathBuf::from(value);
                if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
                    return Ok(Some(value.clone()));
                }
                (path, true)
            }
        };
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                let token = text.trim();
                Ok((!token.is_empty()).then(|| token.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => {
                debug!(path = %path.display(), "no auth token file; sending no authorization header");
                Ok(None)
            }
            Err(e) => Err(ControlError::Token {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: AuthToken) -> AuthHeaders {
        AuthHeaders {
            token,
            cluster_id: "c1".into(),
        }
    }

    #[tokio::test]
    async fn token_file_is_reread_and_static_tokens_are_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let auth = headers(AuthToken::Configured(path.display().to_string()));
        // Not a file (yet): the value itself is the token.
        let mut md = MetadataMap::new();
        auth.apply(&mut md).await.unwrap();
        assert_eq!(
            md.get("authorization").unwrap(),
            &format!("Bearer {}", path.display())
        );
        assert_eq!(md.get("clusterid").unwrap(), "c1");
        std::fs::write(&path, "first\n").unwrap();
        auth.apply(&mut md).await.unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer first");
        std::fs::write(&path, "second").unwrap();
        auth.apply(&mut md).await.unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer second");
    }

    #[tokio::test]
    async fn missing_default_token_sends_no_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let auth = headers(AuthToken::DefaultFile(dir.path().join("absent")));
        let mut md = MetadataMap::new();
        auth.apply(&mut md).await.unwrap();
        assert!(md.get("authorization").is_none());
        assert_eq!(md.get("clusterid").unwrap(), "c1");
    }

    #[test]
    fn roots_errors_name_the_source() {
        let err = load_roots(&RootCerts::File("/nonexistent/root.pem".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/root.pem"), "{err}");
        // The host decides whether it has a trust store; either way the answer is clear.
        match load_roots(&RootCerts::System) {
            Ok(certs) => assert!(!certs.is_empty()),
            Err(e) => assert!(e.to_string().contains("SYSTEM"), "{e}"),
        }
    }
}
