//! A pool [`Connector`] that hands out real HBONE connections over in-memory transports
//! (`tokio::io::duplex`): the client side is ztunnel's `handshake`, the server side its
//! `serve` with a handler that accepts every CONNECT and echoes. No TLS, no sockets, so a
//! bench measures the pool and HTTP/2, not the kernel.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use ztunnel::identity::BoxFuture;
use ztunnel::proxy::hbone::{H2Client, H2Settings, HboneError, IncomingConnect, handshake, serve};
use ztunnel::proxy::pool::{Connector, WorkloadKey};

/// In-memory transport buffer per direction.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// Dials in-memory HBONE echo servers and counts the dials. Dropping it cancels every
/// server it started (they send GOAWAY and end once their streams do).
#[derive(Debug, Default)]
pub struct DuplexConnector {
    settings: H2Settings,
    dials: AtomicUsize,
    shutdown: CancellationToken,
}

impl DuplexConnector {
    /// A connector whose client and server use `settings`.
    pub fn new(settings: H2Settings) -> DuplexConnector {
        DuplexConnector {
            settings,
            dials: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
        }
    }

    /// Connections dialed so far.
    pub fn dials(&self) -> usize {
        self.dials.load(Ordering::Relaxed)
    }
}

impl Drop for DuplexConnector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Connector for DuplexConnector {
    fn connect<'a>(&'a self, _key: &'a WorkloadKey) -> BoxFuture<'a, Result<H2Client, HboneError>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::Relaxed);
            let (client_io, server_io) = tokio::io::duplex(DUPLEX_BUFFER);
            let settings = self.settings.clone();
            let shutdown = self.shutdown.child_token();
            tokio::spawn(async move {
                // The bench only looks at the client side; a server error ends the stream.
                let _ = serve(server_io, &settings, shutdown, echo).await;
            });
            handshake(client_io, &self.settings).await
        })
    }
}

/// Accepts the tunnel and echoes until the client half-closes.
async fn echo(incoming: IncomingConnect) {
    let Ok(stream) = incoming.accept(HeaderMap::new()) else {
        return;
    };
    let (mut read, mut write) = tokio::io::split(stream);
    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
        let _ = write.shutdown().await;
    }
}
