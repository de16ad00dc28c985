//! How an enrolled pod's traffic reaches the node proxy: [`Redirection`], implemented by
//! [`NftRedirection`] (nftables inside the pod netns) and, in eBPF mode, by the loader
//! wrapper `EbpfRedirection`. Both also program the in-pod routing ([`routing`]) so the
//! app's replies to the proxy's spoofed-source connections route back to the proxy.

pub mod ebpf;
pub mod nft;
pub mod routing;

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;

pub use ebpf::{EbpfRedirection, uninstall};
pub use nft::NftRedirection;

/// Loads the eBPF backend (`REDIRECT_MODE=ebpf`).
pub fn load_ebpf(cfg: &crate::config::Config) -> anyhow::Result<Box<dyn Redirection>> {
    Ok(Box::new(EbpfRedirection::load(cfg)?))
}

use crate::netns::NetnsError;

/// One pod's network namespace as the redirection needs it.
#[derive(Debug, Clone, Copy)]
pub struct PodNet<'a> {
    /// Pod uid (for logs).
    pub uid: &'a str,
    /// Path of the netns (for `nsenter`).
    pub netns_path: &'a Path,
    /// An open fd of the netns; `None` when it is gone (pod deleted).
    pub netns: Option<BorrowedFd<'a>>,
    /// The pod's addresses.
    pub ips: &'a [IpAddr],
}

impl PodNet<'_> {
    /// Whether the pod has an IPv6 address.
    pub fn has_v6(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv6)
    }
}

/// Errors of a redirection backend.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// A command inside the pod netns failed.
    #[error("pod {uid}: {source}")]
    Netns {
        /// The pod.
        uid: String,
        /// Cause.
        #[source]
        source: NetnsError,
    },
    /// The eBPF loader failed.
    #[error("pod {uid}: eBPF: {reason}")]
    Ebpf {
        /// The pod (empty for node-wide operations).
        uid: String,
        /// The loader's error text.
        reason: String,
    },
    /// The operation needs an open netns.
    #[error("pod {uid}: its network namespace is gone")]
    NetnsGone {
        /// The pod.
        uid: String,
    },
}

/// A redirection backend. Every method is idempotent; calls are blocking (commands and
/// syscalls) and come from the agent's reconcile thread.
pub trait Redirection: Send {
    /// `ebpf` or `nftables` (for logs).
    fn name(&self) -> &'static str;
    /// The node's own addresses (kubelet probes from them are not captured).
    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), RedirectError>;
    /// Captures the pod's traffic (routing included).
    fn enroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError>;
    /// The proxy (`ztunnel_pid`) has acked the pod: send inbound traffic to its listener.
    fn set_inbound_listener(
        &mut self,
        pod: &PodNet<'_>,
        ztunnel_pid: i32,
    ) -> Result<(), RedirectError>;
    /// Stops capturing the pod's traffic and removes its routing.
    fn unenroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError>;
    /// After a restart: removes every enrollment whose netns is not one of `keep`.
    fn retain(&mut self, keep: &[PodNet<'_>]) -> Result<(), RedirectError>;
}
