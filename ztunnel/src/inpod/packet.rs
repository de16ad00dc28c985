//! The ZDS transport (reference §3.2): a SOCK_SEQPACKET unix socket, one protobuf message per
//! datagram, at most [`MAX_DATAGRAM`] bytes, netns fds passed with SCM_RIGHTS.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Receive buffer size: a datagram that does not fit is a protocol error (MSG_TRUNC).
pub const MAX_DATAGRAM: usize = 1024;
/// Descriptors one datagram may carry before the control data counts as truncated.
const MAX_FDS: usize = 8;

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The message bytes.
    pub bytes: Vec<u8>,
    /// Descriptors received with it (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The agent closed the connection.
    #[error("connection closed by the node agent")]
    Closed,
    /// The datagram was larger than [`MAX_DATAGRAM`].
    #[error("datagram larger than {MAX_DATAGRAM} bytes (MSG_TRUNC)")]
    Truncated,
    /// More ancillary data than expected (MSG_CTRUNC).
    #[error("ancillary data truncated (MSG_CTRUNC): too many descriptors")]
    ControlTruncated,
    /// Socket error.
    #[error("receiving from the node agent: {0}")]
    Io(#[from] io::Error),
}

/// A connected ZDS client socket.
pub struct ZdsSocket {
    fd: AsyncFd<Socket>,
}

impl ZdsSocket {
    /// Connects to the agent's socket at `path` (non-blocking: a full accept backlog is an
    /// error the caller retries).
    pub fn connect(path: &Path) -> io::Result<ZdsSocket> {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
            .map_err(|e| io::Error::new(e.kind(), format!("creating a SOCK_SEQPACKET: {e}")))?;
        sock.set_nonblocking(true)?;
        let addr = SockAddr::unix(path)?;
        sock.connect(&addr).map_err(|e| {
            io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display()))
        })?;
        Ok(ZdsSocket {
            fd: register(sock)?,
        })
    }

    /// Wraps an already connected SOCK_SEQPACKET socket (tests use socketpairs).
    pub fn from_socket(sock: Socket) -> io::Result<ZdsSocket> {
        sock.set_nonblocking(true)?;
        Ok(ZdsSocket {
            fd: register(sock)?,
        })
    }

    /// Sends one datagram (no descriptors).
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        send_datagram(&self.fd, bytes, &[]).await
    }

    /// Receives one datagram with its descriptors.
    pub async fn recv(&self) -> Result<Datagram, RecvError> {
        recv_datagram(&self.fd).await
    }
}

/// Registers a non-blocking socket with the tokio reactor.
pub fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor: it stays open, and `as_raw_fd` returns the same
    // descriptor, until the `AsyncFd` (which owns the `Socket`) is dropped.
    Ok(unsafe { AsyncFd::register(sock) }?)
}

/// Sends `bytes` with `fds` (SCM_RIGHTS) as one datagram on a non-blocking socket.
pub async fn send_datagram(fd: &AsyncFd<Socket>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs: Vec<nix::sys::socket::ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![nix::sys::socket::ControlMessage::ScmRights(fds)]
    };
    let sent = fd
        .async_io(Interest::WRITABLE, |sock| {
            sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        })
        .await?;
    if sent != bytes.len() {
        return Err(io::Error::other(format!(
            "short datagram write: {sent} of {} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

/// Receives one datagram (at most [`MAX_DATAGRAM`] bytes) and its descriptors.
pub async fn recv_datagram(fd: &AsyncFd<Socket>) -> Result<Datagram, RecvError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (len, flags, fds) = fd
        .async_io(Interest::READABLE, |sock| {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed `r` in our fd table for this
                            // SCM_RIGHTS message; nothing else owns it, so taking ownership
                            // here is the only way it gets closed.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
            }
            Ok((msg.bytes, msg.flags, fds))
        })
        .await?;
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(RecvError::Truncated);
    }
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(RecvError::ControlTruncated);
    }
    if len == 0 && fds.is_empty() {
        return Err(RecvError::Closed);
    }
    buf.truncate(len);
    Ok(Datagram { bytes: buf, fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (AsyncFd<Socket>, ZdsSocket) {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        a.set_nonblocking(true).unwrap();
        (register(a).unwrap(), ZdsSocket::from_socket(b).unwrap())
    }

    #[tokio::test]
    async fn datagrams_keep_boundaries_and_fds() {
        let (agent, z) = pair();
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        send_datagram(&agent, b"one", &[file.as_raw_fd()])
            .await
            .unwrap();
        send_datagram(&agent, b"two", &[]).await.unwrap();
        let d = z.recv().await.unwrap();
        assert_eq!(d.bytes, b"one");
        assert_eq!(d.fds.len(), 1);
        let d = z.recv().await.unwrap();
        assert_eq!(d.bytes, b"two");
        assert!(d.fds.is_empty());
        z.send(b"ack").await.unwrap();
        assert_eq!(recv_datagram(&agent).await.unwrap().bytes, b"ack");
    }

    #[tokio::test]
    async fn oversized_and_closed() {
        let (agent, z) = pair();
        send_datagram(&agent, &[7u8; MAX_DATAGRAM + 1], &[])
            .await
            .unwrap();
        assert!(matches!(z.recv().await, Err(RecvError::Truncated)));
        send_datagram(&agent, &[7u8; MAX_DATAGRAM], &[])
            .await
            .unwrap();
        assert_eq!(z.recv().await.unwrap().bytes.len(), MAX_DATAGRAM);
        drop(agent);
        assert!(matches!(z.recv().await, Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn too_many_fds_is_ctrunc() {
        let (agent, z) = pair();
        let files: Vec<std::fs::File> = (0..MAX_FDS + 4)
            .map(|_| std::fs::File::open("/proc/self/ns/net").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_datagram(&agent, b"x", &raw).await.unwrap();
        assert!(matches!(z.recv().await, Err(RecvError::ControlTruncated)));
    }
}
