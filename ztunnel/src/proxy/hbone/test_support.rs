//! Test helpers shared by the HBONE and pool tests: an echo server over in-memory
//! transports, and a bounded wait for conditions with no signal to await.

use http::HeaderMap;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{H2Client, H2Settings, HboneError, IncomingConnect, handshake, serve};

/// Transport buffer of the in-memory connections.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// Accepts the tunnel and echoes bytes until the client half-closes, then half-closes.
pub(crate) async fn echo(incoming: IncomingConnect) {
    let Ok(stream) = incoming.accept(HeaderMap::new()) else {
        return;
    };
    let (mut read, mut write) = tokio::io::split(stream);
    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
        let _ = write.shutdown().await;
    }
}

/// A real [`serve`] running [`echo`] on one end of an in-memory connection.
pub(crate) struct DuplexServer {
    /// Cancel to make the server send GOAWAY and drain.
    pub shutdown: CancellationToken,
    /// Completes when the server connection ends.
    pub served: JoinHandle<Result<(), HboneError>>,
}

/// Starts an echo server on an in-memory connection and returns the client transport.
pub(crate) fn duplex_echo_server(settings: &H2Settings) -> (DuplexStream, DuplexServer) {
    let (client_io, server_io) = tokio::io::duplex(DUPLEX_BUFFER);
    let shutdown = CancellationToken::new();
    let settings = settings.clone();
    let token = shutdown.clone();
    let served = tokio::spawn(async move { serve(server_io, &settings, token, echo).await });
    (client_io, DuplexServer { shutdown, served })
}

/// A client connected to a fresh in-memory echo server.
pub(crate) async fn duplex_echo_client(settings: &H2Settings) -> (H2Client, DuplexServer) {
    let (io, server) = duplex_echo_server(settings);
    let client = handshake(io, settings).await.expect("client handshake");
    (client, server)
}

/// Waits until `check` holds, letting other tasks run in between. For conditions with no
/// signal to await (e.g. a GOAWAY processed by another task). Panics after a bounded
/// number of turns.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if check() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never became true: {what}");
}

/// Deterministic test payload.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
