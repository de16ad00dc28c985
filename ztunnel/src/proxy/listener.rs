//! THE accept loop. Every listener (outbound, inbound HBONE, inbound plaintext, SOCKS5)
//! runs this one loop; they differ only in their [`Handler`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, warn};

use crate::drain::Drain;
use crate::identity::BoxFuture;

/// Handles one accepted connection.
pub trait Handler: Send + Sync + 'static {
    /// Serves `stream` from `peer` to completion. Connections still running when the drain
    /// deadline passes are dropped by the accept loop.
    fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()>;
}

/// Accepts until the drain says stop; each connection runs in its own tracked task.
pub async fn run(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    drain: Drain,
) {
    let local = listener.local_addr().ok();
    info!(listener = name, addr = ?local, "listener started");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.stop_accepting.cancelled() => break,
            res = listener.accept() => res,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let force = drain.force_close.clone();
        let span = tracing::debug_span!("conn", listener = name, %peer);
        drain.tasks.spawn(
            async move {
                tokio::select! {
                    _ = handler.handle(stream, peer) => {}
                    _ = force.cancelled() => {
                        info!(target: "access", "connection closed due to connection drain");
                    }
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = name, "listener stopped accepting");
}
