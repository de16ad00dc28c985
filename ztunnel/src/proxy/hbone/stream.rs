//! [`H2Stream`]: one HBONE CONNECT stream as a byte pipe.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ActiveStreamGuard;

/// One CONNECT stream carrying raw TCP bytes, usable as `AsyncRead + AsyncWrite`.
///
/// The read and write sides are independent: `tokio::io::split` and
/// `tokio::io::copy_bidirectional` work on it. Semantics (reference §4.5):
/// - `poll_write` sends DATA within the peer's flow-control window; `poll_shutdown` sends
///   END_STREAM (a TCP half-close). Writing after shutdown is `BrokenPipe`.
/// - Reading returns DATA bytes and releases flow-control capacity as they are consumed.
///   Empty DATA frames are skipped. END_STREAM, and RST_STREAM with NO_ERROR or CANCEL,
///   read as EOF. Any other reset is `BrokenPipe`; transport failures keep their kind.
///
/// Dropping the stream before both sides ended resets it (RST_STREAM CANCEL).
#[derive(Debug)]
pub struct H2Stream {
    recv: RecvStream,
    /// Unread tail of the last DATA frame.
    pending: Bytes,
    read_eof: bool,
    send: SendStream<Bytes>,
    write_closed: bool,
    /// Client side: keeps the stream counted in [`super::H2Client::active_streams`].
    _active: Option<ActiveStreamGuard>,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        active: Option<ActiveStreamGuard>,
    ) -> Self {
        H2Stream {
            recv,
            pending: Bytes::new(),
            read_eof: false,
            send,
            write_closed: false,
            _active: active,
        }
    }

    /// The HTTP/2 stream id (for logs).
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Fills `self.pending` with the next non-empty DATA frame. `Ready(Ok(false))` is EOF.
    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    self.pending = data;
                    return Poll::Ready(Ok(true));
                }
                None => return Poll::Ready(Ok(false)),
                Some(Err(error)) if is_graceful_reset(&error) => return Poll::Ready(Ok(false)),
                Some(Err(error)) => return Poll::Ready(Err(to_io_error(error))),
            }
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pending.is_empty() {
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            if !ready!(this.poll_next_frame(cx))? {
                this.read_eof = true;
                return Poll::Ready(Ok(()));
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // Returning window as bytes leave the stream lets the peer send more; h2 batches
        // the WINDOW_UPDATE frames. It only fails when releasing more than was received.
        if let Err(error) = this.recv.flow_control().release_capacity(n) {
            tracing::debug!(%error, "failed to release flow-control capacity");
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after HBONE stream shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 owns the buffer; the connection driver flushes it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        this.write_closed = true;
        this.send.reserve_capacity(0);
        this.send
            .send_data(Bytes::new(), true)
            .map_err(to_io_error)?;
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Waits for send capacity (flow-control window) for up to `wanted` bytes and returns
    /// how many bytes may be sent now (at least 1). `wanted` must be non-zero.
    fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after HBONE stream shutdown",
            )));
        }
        // Total requested capacity, on top of what is already buffered.
        self.send.reserve_capacity(wanted);
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(wanted)));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Poll::Ready(Err(to_io_error(error))),
                // The send side is closed: the peer reset the stream.
                None => return Poll::Ready(Err(self.send_closed_error(cx))),
            }
        }
    }

    /// Sends the front of `data` as DATA, as much as the window allows, without copying
    /// (the frame shares `data`'s buffer); `data` keeps the unsent rest. Returns the
    /// number of bytes sent (0 only when `data` is empty).
    pub(crate) fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, data.len()))?;
        let chunk = data.split_to(n);
        self.send.send_data(chunk, false).map_err(to_io_error)?;
        Poll::Ready(Ok(n))
    }

    /// The unread bytes of the current DATA frame, waiting for the next frame when none
    /// are left; empty at EOF. Call [`Self::consume`] with what was used.
    pub(crate) fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.pending.is_empty() && !self.read_eof && !ready!(self.poll_next_frame(cx))? {
            self.read_eof = true;
        }
        Poll::Ready(Ok(&self.pending[..]))
    }

    /// Marks `n` bytes of [`Self::poll_peek`]'s slice as used and returns their
    /// flow-control window to the peer.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.pending.len());
        self.pending.advance(n);
        // h2 batches the WINDOW_UPDATE frames. It only fails when releasing more than was
        // received.
        if let Err(error) = self.recv.flow_control().release_capacity(n) {
            tracing::debug!(%error, "failed to release flow-control capacity");
        }
    }

    fn send_closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("HBONE stream reset by peer: {reason}"),
            ),
            Poll::Ready(Err(error)) => to_io_error(error),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed"),
        }
    }
}

/// RST_STREAM NO_ERROR or CANCEL from the peer: the stream ended, read as EOF.
fn is_graceful_reset(error: &h2::Error) -> bool {
    error.is_reset() && matches!(error.reason(), Some(Reason::NO_ERROR | Reason::CANCEL))
}

/// Transport errors keep their kind; resets and protocol errors are `BrokenPipe`.
fn to_io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        match error.into_io() {
            Some(io) => io,
            None => io::Error::new(io::ErrorKind::BrokenPipe, "HTTP/2 transport error"),
        }
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, error)
    }
}
