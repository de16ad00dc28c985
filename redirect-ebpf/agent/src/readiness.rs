//! `GET /readyz` → 200 once the agent is ready (programs loaded, state reconciled, servers
//! listening), 503 before; `GET /metrics` → the agent's [`Metrics`] (OpenMetrics text) when
//! served with [`serve_with_metrics`]. A deliberately tiny HTTP/1 responder: one request per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};

/// The readiness flag.
#[derive(Debug, Clone, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    /// Marks the agent ready.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether it is.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds the readiness address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/readyz` until `shutdown`.
pub async fn serve(listener: TcpListener, ready: Ready, shutdown: CancellationToken) {
    serve_inner(listener, ready, None, shutdown).await;
}

/// Serves `/readyz` and `/metrics` until `shutdown`.
pub async fn serve_with_metrics(
    listener: TcpListener,
    ready: Ready,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    serve_inner(listener, ready, Some(metrics), shutdown).await;
}

async fn serve_inner(
    listener: TcpListener,
    ready: Ready,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((mut stream, _)) = conn else { continue };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut len = 0;
            // Read the request head (bounded in size and time).
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next(), parts.next());
            let text = |status, body: &str| (status, "text/plain", body.to_string());
            let (status, content_type, body) = match (method, path, &metrics) {
                (Some("GET"), Some("/readyz"), _) if ready.get() => text("200 OK", "ready\n"),
                (Some("GET"), Some("/readyz"), _) => text("503 Service Unavailable", "not ready\n"),
                (Some("GET"), Some("/metrics"), Some(m)) => match m.encode() {
                    Ok(body) => ("200 OK", metrics::CONTENT_TYPE, body),
                    Err(_) => text("500 Internal Server Error", "encoding metrics failed\n"),
                },
                _ => text("404 Not Found", "not found\n"),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
