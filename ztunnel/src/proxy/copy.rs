//! Bidirectional byte copy between the two legs of a proxied connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::error::ProxyError;
use crate::metrics::ByteCounters;

/// Copy buffer per direction. Large enough to fill a TLS record and an H2 DATA frame batch.
const BUFFER: usize = 64 * 1024;

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
    let copy = tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER);
    let res = match revoked {
        Some(token) => tokio::select! {
            res = copy => res,
            _ = token.cancelled() => return Err(ProxyError::Revoked),
        },
        None => copy.await,
    };
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
