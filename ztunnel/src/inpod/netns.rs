//! Pod network namespaces (reference §3.3): a handle on the netns fd the node agent sent,
//! identified by the (device, inode) of that fd, and a way to run a closure with the current
//! thread switched into it. Sockets created inside the closure live in the pod's netns for
//! good, whichever thread uses them later.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::{CloneFlags, setns};
use serde::Serialize;
use tracing::error;

/// Identity of a network namespace: the (device, inode) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct NetnsId {
    /// Device of the nsfs file.
    pub dev: u64,
    /// Inode of the nsfs file (the namespace's unique id on this host).
    pub inode: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.inode)
    }
}

/// A pod's network namespace.
#[derive(Debug)]
pub struct InpodNetns {
    file: File,
    id: NetnsId,
}

thread_local! {
    /// This thread's own network namespace, opened once per thread (from
    /// `/proc/self/task/<tid>/ns/net`) before the thread first leaves it.
    static OWN_NETNS: RefCell<Option<File>> = const { RefCell::new(None) };
}

fn own_netns_path() -> String {
    format!("/proc/self/task/{}/ns/net", nix::unistd::gettid())
}

fn open_own_netns() -> io::Result<File> {
    let path = own_netns_path();
    File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))
}

impl InpodNetns {
    /// Wraps a netns fd (as received over ZDS).
    pub fn new(fd: OwnedFd) -> io::Result<InpodNetns> {
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| io::Error::new(e.kind(), format!("fstat of the netns fd: {e}")))?;
        Ok(InpodNetns {
            file,
            id: NetnsId {
                dev: meta.dev(),
                inode: meta.ino(),
            },
        })
    }

    /// Opens a netns by path (e.g. `/run/netns/<name>`).
    pub fn open(path: &std::path::Path) -> io::Result<InpodNetns> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        InpodNetns::new(file.into())
    }

    /// The (device, inode) identity.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Runs `f` with the current thread in this netns, then switches back. `f` must not
    /// block on anything async: it runs synchronously on the calling thread.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        OWN_NETNS.with(|own| {
            let mut own = own.borrow_mut();
            if own.is_none() {
                *own = Some(open_own_netns()?);
            }
            let Some(home) = own.as_ref() else {
                return Err(io::Error::other("own netns handle missing"));
            };
            setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::other(format!(
                    "setns into pod netns {}: {e} (needs CAP_SYS_ADMIN)",
                    self.id
                ))
            })?;
            let result = f();
            if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
                // The thread would silently create every later socket in the pod's netns:
                // nothing sane can continue.
                error!(error = %e, netns = %self.id, "cannot switch back to the proxy's own netns");
                std::process::abort();
            }
            Ok(result)
        })
    }
}

/// Start-up check for shared mode (reference §3.2): `setns` into our own netns and set
/// SO_MARK `mark` on a test socket, failing with the capabilities needed.
pub fn startup_check(mark: u32) -> io::Result<()> {
    let own = open_own_netns()?;
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::other(format!(
            "setns into our own netns failed: {e}; shared mode switches into pod network \
             namespaces and needs CAP_SYS_ADMIN"
        ))
    })?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| io::Error::new(e.kind(), format!("creating a test socket: {e}")))?;
    sock.set_mark(mark).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "setting SO_MARK {mark:#x} on a test socket failed: {e}; shared mode needs \
                 CAP_NET_ADMIN (and CAP_NET_RAW for source-IP preservation)"
            ),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_identity_is_stable() {
        let a = InpodNetns::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let b = InpodNetns::open(std::path::Path::new(&own_netns_path())).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
