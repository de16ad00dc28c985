//! aya loader for the redirect eBPF programs (`redirect-ebpf/bpf/redirect.c`).
//!
//! The programs capture the TCP traffic of enrolled pods without iptables:
//! `cgroup/connect4|6` + `sockops` + `cgroup/getsockopt` send outbound connects to the
//! proxy's 127.0.0.1:15001 and answer `SO_ORIGINAL_DST`; `sk_lookup` (one pinned link per
//! pod netns) hands inbound plaintext connections to the proxy's 15006 listener.
//!
//! The API is narrow: [`Redirector::load`] (load, pin, attach to a cgroup),
//! [`Redirector::enroll`] / [`Redirector::unenroll`] (one pod netns),
//! [`Redirector::set_inbound_listener`], [`Redirector::set_node_addrs`],
//! [`Redirector::enrolled`] (read back after a restart), [`Redirector::uninstall`], and
//! [`find_listener_in_process`] to take the proxy's listener from its process.
//!
//! Everything lives under the pin dir: `maps/<name>` and `links/<program>`,
//! `links/sk_lookup-<netns cookie>`, so attachments and enrollment survive the loader.
#![deny(missing_docs)]

mod error;
mod listener;
mod netns;
mod pins;
mod redirector;
mod sys;

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::BorrowedFd,
    path::PathBuf,
};

pub use error::{CAPS_HINT, EnrollError, ListenerError, LoadError};
pub use listener::find_listener_in_process;
pub use netns::netns_cookie;
pub use redirector::Redirector;

/// The proxy's socket mark (Istio's 0x539): sockets with it are never redirected.
pub const DEFAULT_MARK: u32 = 0x539;
/// Mark put on the proxy's connections to the app it serves (sockops, at connect): low 12
/// bits 0x539 like the proxy's own, plus 0x1000 so the pod's routing can send only the app's
/// replies to those connections (its accepted socket inherits the mark through
/// `tcp_fwmark_accept`) back to the proxy over `lo` — never the proxy's other traffic.
pub const DEFAULT_DELIVERY_MARK: u32 = 0x1539;
/// Outbound capture port (on loopback in the pod netns).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Inbound HBONE port (never redirected).
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// DNS proxy port (never redirected).
pub const DEFAULT_DNS_PORT: u16 = 15053;

/// Where and how to load the programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// cgroup2 directory the cgroup programs attach to (the node's cgroup, or the cgroup2 root).
    pub cgroup_path: PathBuf,
    /// Directory on a mounted bpffs for the pinned maps and links (created if missing; its
    /// bpffs must already be mounted).
    pub pin_dir: PathBuf,
    /// SO_MARK of the proxy's own sockets.
    pub mark: u32,
    /// Mark for the proxy's connections to the app ([`DEFAULT_DELIVERY_MARK`]); 0 = none.
    pub delivery_mark: u32,
    /// Outbound capture port (127.0.0.1 / ::1 in the pod netns).
    pub outbound_port: u16,
    /// Inbound plaintext port (the listener set with [`Redirector::set_inbound_listener`]).
    pub inbound_port: u16,
    /// Inbound HBONE port, never redirected.
    pub hbone_port: u16,
    /// DNS proxy port, never redirected.
    pub dns_port: u16,
}

impl LoaderConfig {
    /// A config with the Istio defaults (mark 0x539, ports 15001/15006/15008/15053).
    pub fn new(cgroup_path: impl Into<PathBuf>, pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            cgroup_path: cgroup_path.into(),
            pin_dir: pin_dir.into(),
            mark: DEFAULT_MARK,
            delivery_mark: DEFAULT_DELIVERY_MARK,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            hbone_port: DEFAULT_HBONE_PORT,
            dns_port: DEFAULT_DNS_PORT,
        }
    }
}

/// A network namespace cookie (`SO_NETNS_COOKIE`): unique for the life of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsCookie(pub u64);

impl fmt::Display for NetnsCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A pod network namespace to enroll.
#[derive(Debug)]
pub struct PodNetns<'a> {
    /// An fd of the netns (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, ...).
    pub netns: BorrowedFd<'a>,
    /// The pod's IPv4 addresses (at most 4).
    pub ipv4: Vec<Ipv4Addr>,
    /// The pod's IPv6 addresses (at most 4).
    pub ipv6: Vec<Ipv6Addr>,
}

/// The pod's addresses as stored in the `enrolled` map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAddrs {
    /// IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub ipv6: Vec<Ipv6Addr>,
}

/// The result of [`Redirector::enroll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The pod netns cookie: the key for [`Redirector::unenroll`] and
    /// [`Redirector::set_inbound_listener`].
    pub cookie: NetnsCookie,
}

/// The agent keeps the redirector in its own task or behind a mutex: it must be `Send`.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Redirector>();
};
