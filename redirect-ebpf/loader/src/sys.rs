//! The three syscalls nix does not wrap: `getsockopt(SO_NETNS_COOKIE)`, `pidfd_open` and
//! `pidfd_getfd`. The only unsafe code of the loader.
#![allow(
    unsafe_code,
    reason = "raw syscalls without a safe wrapper in nix 0.30"
)]

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

/// `getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE)`: the cookie of the socket's netns (Linux ≥ 5.14).
pub(crate) fn socket_netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is a valid open fd for the duration of the call; the kernel writes at
    // most `len` (8) bytes into `cookie`, which lives on this stack frame.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<u64>() {
        return Err(io::Error::other(format!(
            "SO_NETNS_COOKIE returned {len} bytes"
        )));
    }
    Ok(cookie)
}

/// `pidfd_open(pid, 0)` (Linux ≥ 5.3).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    owned_from_rc(rc)
}

/// `pidfd_getfd(pidfd, target, 0)`: a duplicate of another process' fd (Linux ≥ 5.6).
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments (`pidfd` is open for the call); on
    // success it returns a new fd we own.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0u32) };
    owned_from_rc(rc)
}

fn owned_from_rc(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `enum bpf_attach_type` values (linux/bpf.h) of the cgroup programs.
pub(crate) const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub(crate) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub(crate) const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub(crate) const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// `union bpf_attr`, as much of it as the two commands below use (the kernel accepts a
/// shorter attr as long as the tail it knows about is zero).
#[repr(C, align(8))]
struct BpfAttr([u32; 16]);

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised, 8-aligned buffer of the size passed; the
    // kernel reads (and for these commands does not write beyond) that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_LINK_CREATE` of `prog` on the cgroup (or netns) `target` (Linux ≥ 5.7).
///
/// aya 0.14 cannot turn a `cgroup/getsockopt` attachment into a pinnable link, so all
/// cgroup links are created here and pinned with [`bpf_obj_pin`].
pub(crate) fn bpf_link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = BpfAttr([0; 16]);
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; ... } link_create
    attr.0[0] = prog.as_raw_fd() as u32;
    attr.0[1] = target.as_raw_fd() as u32;
    attr.0[2] = attach_type;
    owned_from_rc(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// `BPF_OBJ_PIN` of `fd` at `path` (on a bpffs).
pub(crate) fn bpf_obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = BpfAttr([0; 16]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... } obj_pin
    let ptr = path.as_ptr() as u64;
    attr.0[0] = ptr as u32;
    attr.0[1] = (ptr >> 32) as u32;
    attr.0[2] = fd.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}
