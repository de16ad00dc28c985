//! The netns cookie of a network namespace fd.

use std::{io, os::fd::BorrowedFd};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

use crate::{EnrollError, NetnsCookie, sys};

/// The cookie of the network namespace `netns` refers to.
///
/// A short-lived thread enters the netns (`setns` changes only the calling thread), creates
/// a socket there and reads `SO_NETNS_COOKIE`; the thread then exits, so no thread of the
/// caller is left in another netns.
pub fn netns_cookie(netns: BorrowedFd<'_>) -> Result<NetnsCookie, EnrollError> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> io::Result<NetnsCookie> {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                let sock = socket(
                    AddressFamily::Unix,
                    SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(io::Error::from)?;
                sys::socket_netns_cookie(std::os::fd::AsFd::as_fd(&sock)).map(NetnsCookie)
            })
            .join()
            .map_err(|_| io::Error::other("netns cookie thread panicked"))?
    })
    .map_err(EnrollError::Netns)
}
