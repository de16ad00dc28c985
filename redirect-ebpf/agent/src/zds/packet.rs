//! SOCK_SEQPACKET unix sockets for ZDS: one protobuf message per datagram, a netns fd passed
//! with SCM_RIGHTS. The only unsafe code of the agent: adopting descriptors the kernel just
//! created (accept4, received SCM_RIGHTS) as `OwnedFd`.
#![allow(
    unsafe_code,
    reason = "adopting kernel-created fds from accept4 and SCM_RIGHTS"
)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// ztunnel reads into a 1 KiB buffer; so does the agent (messages are small).
pub const MAX_DATAGRAM: usize = 1024;

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_err)
}

/// Removes a stale socket file at `path` (a leftover of a previous run); anything else at
/// that path is an error rather than something to delete.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A listening SOCK_SEQPACKET socket.
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl SeqpacketListener {
    /// Binds `path` (removing a stale socket first, creating the parent directory), mode
    /// 0600. Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        remove_stale_socket(path)?;
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(nix_err)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(nix_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, Backlog::new(128).map_err(nix_err)?).map_err(nix_err)?;
        // SAFETY: `fd` is an open socket owned by the OwnedFd that the AsyncFd takes over;
        // it stays open (and the same descriptor) until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(SeqpacketListener { fd })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<SeqpacketConn> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(nix_err)
            });
            match res {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                Ok(Ok(raw)) => return SeqpacketConn::new(unsafe { OwnedFd::from_raw_fd(raw) }),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The bytes.
    pub data: Vec<u8>,
    /// Descriptors that came with it (already closed: the agent never expects any).
    pub fds: usize,
}

/// A connected SOCK_SEQPACKET socket.
#[derive(Debug)]
pub struct SeqpacketConn {
    fd: AsyncFd<OwnedFd>,
}

impl SeqpacketConn {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: as in `SeqpacketListener::bind`: an owned, open socket handed over.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(SeqpacketConn { fd })
    }

    /// Connects to a listening socket (the ztunnel side; used by tests).
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(nix_err)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(nix_err)?;
        SeqpacketConn::new(fd)
    }

    /// The peer's pid (SO_PEERCRED).
    pub fn peer_pid(&self) -> io::Result<i32> {
        let cred =
            socket::getsockopt(self.fd.get_ref(), sockopt::PeerCredentials).map_err(nix_err)?;
        Ok(cred.pid())
    }

    /// Sends one datagram, with `fds` in SCM_RIGHTS when not empty.
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| {
                let iov = [IoSlice::new(data)];
                let cmsgs = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
                socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(nix_err)
            });
            match res {
                Ok(Ok(n)) if n == data.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::other(format!(
                        "short datagram write: {n} of {} bytes",
                        data.len()
                    )));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram; `Ok(None)` when the peer closed the connection. Truncated
    /// datagrams or control data are errors.
    pub async fn recv(&self) -> io::Result<Option<Datagram>> {
        self.recv_with_fds().await.map(|o| {
            o.map(|(data, fds)| Datagram {
                data,
                fds: fds.len(),
            })
        })
    }

    /// Like [`recv`](Self::recv), keeping the received descriptors (the ztunnel side).
    pub async fn recv_with_fds(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| recv_once(fd.as_fd()));
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Whether the peer has closed the connection (or it failed), without waiting and
    /// without consuming a pending datagram.
    pub fn is_closed(&self) -> bool {
        let mut buf = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            self.fd.get_ref().as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => r.bytes == 0 && !r.flags.contains(MsgFlags::MSG_TRUNC),
            Err(nix::Error::EAGAIN) => false,
            Err(_) => true,
        }
    }
}

fn recv_once(fd: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(nix_err)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(nix_err)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
            // else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let (bytes, flags) = (msg.bytes, msg.flags);
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("truncated datagram ({flags:?})"),
        ));
    }
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some((buf, fds)))
}
