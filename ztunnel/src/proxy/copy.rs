//! Bidirectional byte copy between the two legs of a proxied connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::error::ProxyError;
use super::hbone::H2Stream;
use super::memory::LiveConnection;
use crate::metrics::ByteCounters;

/// Copy buffer per direction. Large enough to fill a TLS record and an H2 DATA frame batch.
const BUFFER: usize = 64 * 1024;

/// Largest read from the app socket on the tunnel path: one read becomes one DATA frame.
const TUNNEL_READ: usize = 64 * 1024;
/// A read buffer with less room than this is replaced by a fresh [`TUNNEL_READ`] one.
const TUNNEL_MIN_ROOM: usize = 4 * 1024;

/// Which way a byte crossed the proxy, for [`tunnel_counted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelSide {
    /// The app socket is the downstream (outbound proxy): app→tunnel bytes are `received`.
    Downstream,
    /// The app socket is the upstream (inbound proxy): tunnel→app bytes are `received`.
    Upstream,
}

/// Copies both ways between an app socket and an HBONE stream until both directions ended
/// (EOF on one side half-closes the other) or `revoked` fires, like [`bidirectional_counted`]
/// without its copy buffers:
/// - app → tunnel: each read from the socket lands in a shared buffer and goes to h2 as a
///   DATA frame that shares that buffer (no copy); no buffer is held while the socket is
///   idle, so an idle connection costs no copy memory;
/// - tunnel → app: DATA frames are written to the socket straight from h2's buffers, and
///   their flow-control window is returned once the socket took them.
///
/// Returns (bytes downstream→upstream, bytes upstream→downstream), as
/// [`bidirectional_counted`] would with the downstream side first.
pub async fn tunnel_counted(
    tcp: &mut TcpStream,
    tunnel: &mut H2Stream,
    side: TunnelSide,
    revoked: Option<&CancellationToken>,
    counters: &ByteCounters,
) -> Result<(u64, u64), ProxyError> {
    let _live = LiveConnection::new();
    let (from_tcp, from_tunnel) = match side {
        TunnelSide::Downstream => (&counters.received, &counters.sent),
        TunnelSide::Upstream => (&counters.sent, &counters.received),
    };
    let mut up = TcpToTunnel::default();
    let mut down = TunnelToTcp::default();
    let copy = std::future::poll_fn(|cx| {
        let a = up.poll(cx, tcp, tunnel, from_tcp)?;
        let b = down.poll(cx, tunnel, tcp, from_tunnel)?;
        if a.is_ready() && b.is_ready() {
            Poll::Ready(Ok::<_, io::Error>((up.total, down.total)))
        } else {
            Poll::Pending
        }
    });
    let res = match revoked {
        Some(token) => tokio::select! {
            res = copy => res,
            _ = token.cancelled() => return Err(ProxyError::Revoked),
        },
        None => copy.await,
    };
    let (tcp_bytes, tunnel_bytes) = end_of_copy(res)?;
    Ok(match side {
        TunnelSide::Downstream => (tcp_bytes, tunnel_bytes),
        TunnelSide::Upstream => (tunnel_bytes, tcp_bytes),
    })
}

/// Where one direction of a copy is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Half {
    #[default]
    Copying,
    /// EOF read: half-closing the other side.
    ShuttingDown,
    Done,
}

/// App socket → HBONE stream.
#[derive(Default)]
struct TcpToTunnel {
    /// Free room for the next read; its filled parts are split off into `unsent`.
    buf: BytesMut,
    /// Read but not yet accepted by h2 (flow control).
    unsent: Bytes,
    total: u64,
    state: Half,
}

impl TcpToTunnel {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &TcpStream,
        tunnel: &mut H2Stream,
        counter: &Counter,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                Half::Done => return Poll::Ready(Ok(())),
                Half::ShuttingDown => {
                    ready!(Pin::new(&mut *tunnel).poll_shutdown(cx))?;
                    self.state = Half::Done;
                    continue;
                }
                Half::Copying => {}
            }
            if !self.unsent.is_empty() {
                ready!(tunnel.poll_send_bytes(cx, &mut self.unsent))?;
                continue;
            }
            match tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    // Idle: hold no buffer (frames sent earlier keep theirs alive in h2).
                    self.buf = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(res) => res?,
            }
            if self.buf.capacity() < TUNNEL_MIN_ROOM {
                self.buf = BytesMut::with_capacity(TUNNEL_READ);
            }
            match tcp.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.buf = BytesMut::new();
                    self.state = Half::ShuttingDown;
                }
                Ok(n) => {
                    counter.inc_by(n as u64);
                    self.total += n as u64;
                    self.unsent = self.buf.split().freeze();
                }
                // Readiness was stale; `poll_read_ready` registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// HBONE stream → app socket.
#[derive(Default)]
struct TunnelToTcp {
    total: u64,
    state: Half,
}

impl TunnelToTcp {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut H2Stream,
        tcp: &mut TcpStream,
        counter: &Counter,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                Half::Done => return Poll::Ready(Ok(())),
                Half::ShuttingDown => {
                    ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
                    self.state = Half::Done;
                    continue;
                }
                Half::Copying => {}
            }
            let data = ready!(tunnel.poll_peek(cx))?;
            if data.is_empty() {
                self.state = Half::ShuttingDown;
                continue;
            }
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            tunnel.consume(n);
            counter.inc_by(n as u64);
            self.total += n as u64;
        }
    }
}

/// Like [`bidirectional`], and adds the bytes to `counters` as they flow (a→b is
/// `received`, b→a is `sent`), so metrics are right while a long-lived connection is open.
pub async fn bidirectional_counted<A, B>(
    a: &mut A,
    b: &mut B,
    revoked: Option<&CancellationToken>,
    counters: &ByteCounters,
) -> Result<(u64, u64), ProxyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a = Counted {
        inner: a,
        read: &counters.received,
    };
    let mut b = Counted {
        inner: b,
        read: &counters.sent,
    };
    bidirectional(&mut a, &mut b, revoked).await
}

/// Counts every byte read from `inner` (one relaxed atomic add per read); writes pass through.
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: &'a Counter,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.read.inc_by(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Copies both ways until both sides finished (EOF on one side half-closes the other), or
/// until `revoked` fires. Returns (bytes a→b, bytes b→a). Resets and broken pipes at the
/// end of a connection are normal TCP behaviour and are not errors.
pub async fn bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    revoked: Option<&CancellationToken>,
) -> Result<(u64, u64), ProxyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let _live = LiveConnection::new();
    let copy = tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER);
    let res = match revoked {
        Some(token) => tokio::select! {
            res = copy => res,
            _ = token.cancelled() => return Err(ProxyError::Revoked),
        },
        None => copy.await,
    };
    end_of_copy(res)
}

/// Resets and broken pipes at the end of a connection are normal TCP behaviour, not errors.
fn end_of_copy(res: io::Result<(u64, u64)>) -> Result<(u64, u64), ProxyError> {
    match res {
        Ok(counts) => Ok(counts),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ) =>
        {
            Ok((0, 0))
        }
        Err(e) => Err(ProxyError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// App socket ⇄ [`tunnel_counted`] ⇄ real HBONE stream to an echo server, with windows
    /// small enough that flow control stalls the copy many times.
    #[tokio::test]
    async fn tunnel_copy_echoes_both_ways_and_half_closes() {
        use crate::proxy::hbone::test_support::{duplex_echo_client, pattern};
        use crate::proxy::hbone::{H2Settings, connect_request};

        let settings = H2Settings {
            stream_window: 65_535,
            connection_window: 4 * 65_535,
            ..H2Settings::default()
        };
        let (client, _server) = duplex_echo_client(&settings).await;
        let req = connect_request("127.0.0.1:8080", http::HeaderMap::new()).unwrap();
        let (_parts, mut tunnel) = client.connect(req).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut proxied, _) = listener.accept().await.unwrap();
        let counters = ByteCounters::default();
        let c = counters.clone();
        let copy = tokio::spawn(async move {
            tunnel_counted(&mut proxied, &mut tunnel, TunnelSide::Downstream, None, &c).await
        });

        let payload = pattern(1024 * 1024 + 17);
        let (mut app_read, mut app_write) = app.split();
        let send = async {
            app_write.write_all(&payload).await.unwrap();
            app_write.shutdown().await.unwrap();
        };
        let mut echoed = Vec::new();
        let receive = app_read.read_to_end(&mut echoed);
        let ((), received) = tokio::join!(send, receive);
        assert_eq!(received.unwrap(), payload.len(), "EOF after the whole echo");
        assert!(echoed == payload, "the echo differs from what was sent");
        let len = payload.len() as u64;
        assert_eq!(copy.await.unwrap().unwrap(), (len, len));
        assert_eq!(counters.received.get(), len);
        assert_eq!(counters.sent.get(), len);
    }

    #[tokio::test]
    async fn counts_while_the_connection_is_open() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let counters = ByteCounters::default();
        let c = counters.clone();
        let copy =
            tokio::spawn(async move { bidirectional_counted(&mut a, &mut b, None, &c).await });
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            counters.received.get(),
            5,
            "counted before the connection closed"
        );
        server.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(counters.sent.get(), 3);
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(copy.await.unwrap().unwrap(), (5, 3));
    }
}
