//! HBONE server: serves CONNECT streams of one HTTP/2 connection.

use std::future::Future;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{
    H2Settings, H2Stream, HboneError, SERVER_MAX_CONCURRENT_STREAMS, SERVER_MAX_HEADER_LIST_SIZE,
    SERVER_MAX_SEND_BUFFER, keepalive_expired,
};

/// One CONNECT request received by [`serve`], waiting for an answer.
///
/// Answer it with [`Self::accept`] or [`Self::respond_error`]. Dropping it unanswered
/// resets the stream.
#[derive(Debug)]
pub struct IncomingConnect {
    parts: http::request::Parts,
    body: RecvStream,
    respond: SendResponse<Bytes>,
}

impl IncomingConnect {
    /// The request method. Always CONNECT: [`serve`] answers other methods with 400 itself.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The raw `:authority` (the tunnel target), or `""` when absent.
    /// Parse it with [`super::headers::Authority::parse`].
    pub fn authority(&self) -> &str {
        self.parts.uri.authority().map_or("", |a| a.as_str())
    }

    /// The request headers (baggage, forwarded, traceparent, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// Refuses the tunnel: sends a headers-only response with END_STREAM.
    ///
    /// Failures (the client already reset the stream) are only logged: there is nobody
    /// left to tell.
    pub fn respond_error(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if let Err(error) = self.respond.send_response(response, true) {
            tracing::debug!(%error, %status, "failed to send HBONE error response");
        }
    }

    /// Opens the tunnel: sends `200` with `extra_headers` (e.g. response baggage) and
    /// returns the stream.
    pub fn accept(mut self, extra_headers: HeaderMap) -> Result<H2Stream, HboneError> {
        let mut response = Response::new(());
        *response.headers_mut() = extra_headers;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body, None))
    }
}

/// Serves one HBONE (HTTP/2) server connection over `io` until it closes.
///
/// Settings (reference §4.2): windows and frame size from `settings`, advertises 200
/// concurrent streams, max header list 64 KiB (larger requests are refused by h2 with 431
/// and a stream reset; the connection keeps serving), max send buffer 400 KiB, PING
/// keepalive.
///
/// Every CONNECT stream is handed to `handler` in its own task. Requests with any other
/// method are answered `400` here and never reach `handler` (reference §5.3).
///
/// When `shutdown` is cancelled, a GOAWAY is sent and open streams keep being served until
/// they end; then this returns `Ok(())` (also if the client hangs up meanwhile). It also
/// returns `Ok(())` when the client closes the connection, or when `shutdown` is cancelled
/// before the handshake completes, and an error on protocol, transport or keepalive
/// failure. Bound the handshake time (and TLS) in the caller.
pub async fn serve<IO, F, Fut>(
    io: IO,
    settings: &H2Settings,
    shutdown: CancellationToken,
    handler: F,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(IncomingConnect) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    settings.validate()?;
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.frame_size)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(SERVER_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::select! {
        result = handshake => result.map_err(HboneError::Handshake)?,
        () = shutdown.cancelled() => return Ok(()),
    };

    let keepalive = keepalive_expired(
        connection.ping_pong(),
        settings.keepalive_interval,
        settings.keepalive_timeout,
    );
    tokio::pin!(keepalive);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !draining => {
                tracing::debug!("HBONE server draining: sending GOAWAY");
                connection.graceful_shutdown();
                draining = true;
            }
            () = &mut keepalive => {
                // The peer is unresponsive: flushing a GOAWAY could block forever, so the
                // transport is simply dropped.
                return Err(HboneError::KeepaliveTimeout { timeout: settings.keepalive_timeout });
            }
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => dispatch(request, respond, &handler),
                // After our GOAWAY the client may close the transport before the final
                // GOAWAY is written: that is the end of the drain, not a failure.
                Some(Err(error)) if draining && error.is_io() => {
                    tracing::debug!(%error, "HBONE client closed the connection while draining");
                    return Ok(());
                }
                Some(Err(error)) => return Err(HboneError::H2(error)),
                None => return Ok(()),
            },
        }
    }
}

/// Answers non-CONNECT requests with 400; spawns `handler` for CONNECT requests.
fn dispatch<F, Fut>(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, handler: &F)
where
    F: Fn(IncomingConnect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (parts, body) = request.into_parts();
    if parts.method != Method::CONNECT {
        tracing::warn!(target: "access", method = %parts.method, response_code = 400, "HBONE request is not CONNECT");
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        if let Err(error) = respond.send_response(response, true) {
            tracing::debug!(%error, "failed to send 400 for non-CONNECT request");
        }
        return;
    }
    tokio::spawn(handler(IncomingConnect {
        parts,
        body,
        respond,
    }));
}
