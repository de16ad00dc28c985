//! HBONE client: HTTP/2 handshake, connection driver with PING keepalive, CONNECT streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::headers::Authority;
use super::{CLIENT_MAX_HEADER_LIST_SIZE, H2Settings, H2Stream, HboneError, keepalive_expired};

/// State shared by all clones of one [`H2Client`] and its driver task.
#[derive(Debug)]
struct Shared {
    /// Streams reserved or open (see [`ActiveStreamGuard`]).
    active: AtomicUsize,
    /// Our cap on concurrent streams (`max_streams_per_connection`).
    cap: usize,
    /// Set when the driver task ended (connection closed or keepalive failed).
    closed: AtomicBool,
}

/// Counts one stream in [`H2Client::active_streams`] until dropped.
#[derive(Debug)]
pub(crate) struct ActiveStreamGuard {
    shared: Arc<Shared>,
}

impl Drop for ActiveStreamGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The client side of one HBONE (HTTP/2) connection.
///
/// Cheap to clone: clones share the connection. A background task drives the connection
/// and its PING keepalive; it ends once every clone and every stream is dropped (or the
/// connection fails), which closes the transport.
#[derive(Clone, Debug)]
pub struct H2Client {
    sender: h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
}

/// Performs the HTTP/2 client handshake over `io` and spawns the connection driver on the
/// current tokio runtime.
///
/// Settings (reference §4.2): windows and frame size from `settings`, initial max send
/// streams = `max_streams_per_connection`, max header list 16 KiB, max send buffer = the
/// stream window, server push disabled, PING keepalive.
pub async fn handshake<IO>(io: IO, settings: &H2Settings) -> Result<H2Client, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    settings.validate()?;
    let cap = settings.max_streams_per_connection as usize;
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.frame_size)
        .initial_max_send_streams(cap)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(settings.stream_window as usize)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(HboneError::Handshake)?;

    let shared = Arc::new(Shared {
        active: AtomicUsize::new(0),
        cap,
        closed: AtomicBool::new(false),
    });
    let ping_pong = connection.ping_pong();
    let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
    let driver_shared = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            result = connection => match result {
                Ok(()) => tracing::debug!("HBONE client connection closed"),
                Err(error) => tracing::debug!(%error, "HBONE client connection failed"),
            },
            () = keepalive_expired(ping_pong, interval, timeout) => {
                tracing::warn!(?timeout, "HBONE peer did not answer PING, dropping connection");
            }
        }
        // Reached after the connection future was dropped: the transport is closed and
        // in-flight streams have failed.
        driver_shared.closed.store(true, Ordering::Release);
    });
    Ok(H2Client { sender, shared })
}

impl H2Client {
    /// Opens one CONNECT stream (`end_stream=false`) and waits for the response headers.
    ///
    /// If the connection is at its concurrent-stream limit, h2 queues the stream until one
    /// ends. Any status other than 200 is [`HboneError::Status`].
    pub async fn connect(
        &self,
        req: Request<()>,
    ) -> Result<(http::response::Parts, H2Stream), HboneError> {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveStreamGuard {
            shared: self.shared.clone(),
        };
        self.connect_reserved(guard, req).await
    }

    /// [`Self::connect`] with a stream slot already taken by [`Self::try_reserve`].
    pub(crate) async fn connect_reserved(
        &self,
        guard: ActiveStreamGuard,
        req: Request<()>,
    ) -> Result<(http::response::Parts, H2Stream), HboneError> {
        let mut sender = self.sender.clone().ready().await?;
        let (response, send) = sender.send_request(req, false)?;
        let (parts, recv) = response.await?.into_parts();
        if parts.status != StatusCode::OK {
            // Dropping `send` resets our side of the stream.
            return Err(HboneError::Status(parts.status));
        }
        Ok((parts, H2Stream::new(send, recv, Some(guard))))
    }

    /// Takes one stream slot if fewer than `limit` are in use. Returns the slot and the
    /// number in use including it.
    pub(crate) fn try_reserve(&self, limit: usize) -> Option<(ActiveStreamGuard, usize)> {
        let previous = self
            .shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        let guard = ActiveStreamGuard {
            shared: self.shared.clone(),
        };
        Some((guard, previous + 1))
    }

    /// Whether new streams can be opened: false after the peer's GOAWAY, a connection
    /// error, the end of the driver, or a keepalive failure.
    pub fn is_ready(&self) -> bool {
        self.clone().poll_ready_now()
    }

    /// [`Self::is_ready`] without cloning the sender (for owners such as the pool).
    pub(crate) fn poll_ready_now(&mut self) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        // Our sender has no pending stream, so this never parks: it only reports a
        // connection error (GOAWAY included) or exhausted stream ids.
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Streams currently open or being opened through this connection.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Concurrent streams allowed: our `max_streams_per_connection`, lowered to the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS once that is known.
    pub fn max_streams(&self) -> usize {
        self.shared.cap.min(self.sender.current_max_send_streams())
    }
}

/// Builds an HTTP/2 CONNECT request for `authority` (`ip:port`, `[ipv6]:port` or
/// `hostname:port`): `:method CONNECT` and `:authority` only, no `:scheme` or `:path`.
///
/// `authority` is validated with [`Authority::parse`]; `headers` are sent as they are.
pub fn connect_request(authority: &str, headers: HeaderMap) -> Result<Request<()>, HboneError> {
    Authority::parse(authority)?;
    let authority =
        http::uri::Authority::try_from(authority).map_err(|_| HboneError::BadAuthority {
            authority: authority.to_owned(),
            reason: "not a valid URI authority",
        })?;
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(authority);
    let uri = Uri::from_parts(parts).map_err(|e| HboneError::Request(e.into()))?;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    Ok(req)
}
