//! HBONE: HTTP/2 CONNECT tunnels (client, server, headers).
//!
//! One CONNECT stream carries one proxied TCP connection. DATA frames are raw bytes and
//! END_STREAM is a TCP half-close (reference §4.5). Everything here is generic over the
//! transport (`AsyncRead + AsyncWrite`), so it runs over TLS in production and over plain
//! TCP or `tokio::io::duplex` in tests.
//!
//! - [`handshake`] starts a client connection and returns a cheap-to-clone [`H2Client`].
//! - [`serve`] runs the server side of one connection, one task per CONNECT stream.
//! - [`H2Stream`] is the byte pipe of one stream (`AsyncRead + AsyncWrite`).
//! - [`headers`] holds the pure parsers and builders for the HBONE request headers.

mod client;
pub mod headers;
mod server;
mod stream;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use h2::{Ping, PingPong};

pub(crate) use client::ActiveStreamGuard;
pub use client::{H2Client, connect_request, handshake};
pub use server::{IncomingConnect, serve};
pub use stream::H2Stream;

/// Largest header list the client accepts in a response (reference §4.2).
const CLIENT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Largest header list the server accepts in a request; larger requests are refused by h2
/// with a 431 and a stream reset, and the connection keeps serving (reference §4.2).
const SERVER_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Concurrent streams the server advertises in SETTINGS_MAX_CONCURRENT_STREAMS.
const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Per-stream send buffer on the server: bounds memory per inbound stream.
const SERVER_MAX_SEND_BUFFER: usize = 400 * 1024;

/// Smallest and largest SETTINGS_MAX_FRAME_SIZE allowed by RFC 9113 §6.5.2.
const FRAME_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16_384..=16_777_215;
/// Largest flow-control window allowed by RFC 9113 §6.9.1.
const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// HTTP/2 tuning shared by the HBONE client and server (reference §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Settings {
    /// Initial per-stream receive window (`HTTP2_STREAM_WINDOW_SIZE`). Also the client's
    /// per-stream send buffer limit.
    pub stream_window: u32,
    /// Initial connection receive window (`HTTP2_CONNECTION_WINDOW_SIZE`): 4x the stream
    /// window so one stalled stream cannot starve the others on the connection.
    pub connection_window: u32,
    /// Largest DATA frame we accept (`HTTP2_FRAME_SIZE`).
    pub frame_size: u32,
    /// Client only: streams we open at most on one connection before the peer's SETTINGS
    /// arrive, and the cap kept afterwards (`POOL_MAX_STREAMS_PER_CONNECTION`).
    pub max_streams_per_connection: u32,
    /// Time between PING frames. `Duration::ZERO` disables keepalive.
    pub keepalive_interval: Duration,
    /// How long to wait for a PONG before dropping the connection.
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            max_streams_per_connection: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl H2Settings {
    /// Checks the values h2 would otherwise reject with a panic.
    pub fn validate(&self) -> Result<(), HboneError> {
        if !FRAME_SIZE_RANGE.contains(&self.frame_size) {
            return Err(HboneError::InvalidSettings(
                "frame_size must be between 16384 and 16777215",
            ));
        }
        if self.stream_window == 0 || self.stream_window > MAX_WINDOW_SIZE {
            return Err(HboneError::InvalidSettings(
                "stream_window must be between 1 and 2^31-1",
            ));
        }
        if self.connection_window == 0 || self.connection_window > MAX_WINDOW_SIZE {
            return Err(HboneError::InvalidSettings(
                "connection_window must be between 1 and 2^31-1",
            ));
        }
        if !self.keepalive_interval.is_zero() && self.keepalive_timeout.is_zero() {
            return Err(HboneError::InvalidSettings(
                "keepalive_timeout must be non-zero when keepalive is enabled",
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err(HboneError::InvalidSettings(
                "max_streams_per_connection must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Errors of the HBONE client, server, header parsers and connection pool.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The transport failed.
    #[error("HBONE transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 connection preface or SETTINGS exchange failed.
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    /// An HTTP/2 connection or stream error (GOAWAY, RST_STREAM, protocol error, ...).
    #[error("HTTP/2 error: {0}")]
    H2(#[from] h2::Error),
    /// The peer answered the CONNECT with a status other than 200.
    #[error("CONNECT rejected with HTTP status {0}")]
    Status(http::StatusCode),
    /// An authority that is not `ip:port`, `[ipv6]:port` or `hostname:port`.
    #[error("invalid authority {authority:?}: {reason}")]
    BadAuthority {
        /// The rejected authority, as received.
        authority: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A malformed or unencodable HBONE header (baggage, forwarded, traceparent).
    #[error("invalid {header} header: {reason}")]
    BadHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CONNECT request could not be built.
    #[error("invalid CONNECT request: {0}")]
    Request(#[source] http::Error),
    /// [`H2Settings`] holds a value HTTP/2 does not allow.
    #[error("invalid HTTP/2 settings: {0}")]
    InvalidSettings(&'static str),
    /// The connection is gone (driver ended, GOAWAY or keepalive failure).
    #[error("HTTP/2 connection closed")]
    ConnectionClosed,
    /// The peer did not answer a PING within the keepalive timeout.
    #[error("no PING response within {timeout:?}, connection dropped")]
    KeepaliveTimeout {
        /// The keepalive timeout that expired.
        timeout: Duration,
    },
    /// Setting up the connection to `dst` failed before HTTP/2 started.
    #[error("{stage} to {dst} failed: {detail}")]
    Setup {
        /// Which step failed.
        stage: SetupStage,
        /// The TCP destination.
        dst: SocketAddr,
        /// The underlying error, rendered.
        detail: String,
    },
    /// The pool's dial to `dst` failed. Every request that waited for this dial gets the
    /// same (shared) cause.
    #[error("HBONE connection to {dst} failed: {source}")]
    Dial {
        /// The TCP destination of the pooled connection.
        dst: SocketAddr,
        /// Why the dial failed.
        #[source]
        source: Arc<HboneError>,
    },
}

/// The steps of dialing an HBONE connection, for error classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupStage {
    /// Getting our certificate.
    Certificate,
    /// Building the TLS configuration.
    TlsConfig,
    /// TCP connect.
    TcpConnect,
    /// TCP connect timed out (often a NetworkPolicy blocking 15008).
    TcpTimeout,
    /// The TLS handshake (including peer identity verification).
    TlsHandshake,
}

impl std::fmt::Display for SetupStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SetupStage::Certificate => "fetching the workload certificate",
            SetupStage::TlsConfig => "building the TLS configuration",
            SetupStage::TcpConnect => "TCP connect",
            SetupStage::TcpTimeout => {
                "TCP connect (timed out; maybe a NetworkPolicy is blocking HBONE port 15008)"
            }
            SetupStage::TlsHandshake => "TLS handshake",
        })
    }
}

impl HboneError {
    /// The setup stage that failed, looking through pool dial errors.
    pub fn setup_stage(&self) -> Option<SetupStage> {
        match self {
            HboneError::Setup { stage, .. } => Some(*stage),
            HboneError::Dial { source, .. } => source.setup_stage(),
            _ => None,
        }
    }
}

/// Sends a PING every `interval` and resolves only when the peer did not answer within
/// `timeout`. If the connection closes (the ping errors), it never resolves: the
/// connection driver reports the close itself.
async fn keepalive_expired(ping_pong: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping_pong) = ping_pong else {
        return pending().await;
    };
    if interval.is_zero() {
        return pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                tracing::trace!(%error, "keepalive stopped: connection closing");
                return pending().await;
            }
            Err(_elapsed) => return,
        }
    }
}
