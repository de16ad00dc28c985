//! Taking the proxy's listening socket out of its process (pidfd_open + pidfd_getfd), so
//! the proxy itself needs no BPF access.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};

use crate::{ListenerError, NetnsCookie, sys};

/// A duplicate of the TCP socket of process `pid` that listens (`SO_ACCEPTCONN`) on `port`
/// in the network namespace `netns_cookie`.
///
/// Walks `/proc/<pid>/fd`, duplicates every socket with `pidfd_getfd` (needs
/// PTRACE_MODE_ATTACH over the target, e.g. root or CAP_SYS_PTRACE; Linux ≥ 5.6) and keeps
/// the first match. The other duplicates are closed right away.
pub fn find_listener_in_process(
    pid: u32,
    netns_cookie: NetnsCookie,
    port: u16,
) -> Result<OwnedFd, ListenerError> {
    let io_err =
        |what: &'static str| move |source: io::Error| ListenerError::Io { what, pid, source };
    let pidfd = sys::pidfd_open(pid).map_err(io_err("pidfd_open"))?;
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(io_err("reading /proc/<pid>/fd"))?;
    for entry in entries {
        let entry = entry.map_err(io_err("reading /proc/<pid>/fd"))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        // The fd may be closed between readdir and readlink/getfd: skip it then.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let dup = match sys::pidfd_getfd(pidfd.as_fd(), fd) {
            Ok(dup) => dup,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(io_err("pidfd_getfd")(e)),
        };
        if is_listener(&dup, netns_cookie, port) {
            return Ok(dup);
        }
    }
    Err(ListenerError::NotFound {
        pid,
        cookie: netns_cookie,
        port,
    })
}

fn is_listener(sock: &OwnedFd, netns_cookie: NetnsCookie, port: u16) -> bool {
    let listening = getsockopt(sock, sockopt::AcceptConn).unwrap_or(false);
    let stream = matches!(
        getsockopt(sock, sockopt::SockType),
        Ok(nix::sys::socket::SockType::Stream)
    );
    if !listening || !stream {
        return false;
    }
    let local_port = getsockname::<SockaddrStorage>(sock.as_raw_fd())
        .ok()
        .and_then(|addr| sockaddr_port(&addr));
    if local_port != Some(port) {
        return false;
    }
    sys::socket_netns_cookie(sock.as_fd()).ok() == Some(netns_cookie.0)
}

/// The port of an inet socket address.
pub(crate) fn sockaddr_port(addr: &SockaddrStorage) -> Option<u16> {
    match addr.family() {
        Some(nix::sys::socket::AddressFamily::Inet) => addr.as_sockaddr_in().map(|a| a.port()),
        Some(nix::sys::socket::AddressFamily::Inet6) => addr.as_sockaddr_in6().map(|a| a.port()),
        _ => None,
    }
}
