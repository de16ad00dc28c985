//! Map keys and values shared by the redirect eBPF programs and their loader.
//!
//! Every type here is `#[repr(C)]` and mirrors a struct in `redirect-ebpf/bpf/maps.h`
//! (the tests compile that header with the host C compiler and compare sizes and offsets).
//! Addresses are [`IpKey`]s: 16 bytes in network order, IPv4 as IPv4-mapped IPv6.
//! With the `user` feature the types implement `aya::Pod`.
#![no_std]
#![deny(missing_docs)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many addresses of each family one pod may have (`REDIRECT_MAX_POD_IPS`).
pub const MAX_POD_IPS: usize = 4;

/// Names of the maps in the BPF object, as pinned under `<pin_dir>/maps/`.
pub mod map_names {
    /// `ARRAY[1]` of [`super::RedirectConfig`].
    pub const CONFIG: &str = "config";
    /// `HASH` netns cookie (`u64`) → [`super::PodIps`].
    pub const ENROLLED: &str = "enrolled";
    /// `HASH` [`super::IpKey`] → netns cookie (`u64`).
    pub const POD_IPS: &str = "pod_ips";
    /// `LRU_HASH` socket cookie (`u64`) → [`super::OrigDst`].
    pub const ORIG_COOKIE: &str = "orig_cookie";
    /// `LRU_HASH` [`super::ClientKey`] → [`super::OrigDst`].
    pub const ORIG_DST: &str = "orig_dst";
    /// `LRU_HASH` [`super::TupleKey`] → `u8`.
    pub const BYPASS: &str = "bypass";
    /// `HASH` [`super::IpKey`] → `u8`.
    pub const NODE_ADDRS: &str = "node_addrs";
    /// `SOCKHASH` [`super::IpKey`] → socket.
    pub const LISTENERS: &str = "listeners";
    /// Every map name, in a fixed order.
    pub const ALL: [&str; 8] = [
        CONFIG,
        ENROLLED,
        POD_IPS,
        ORIG_COOKIE,
        ORIG_DST,
        BYPASS,
        NODE_ADDRS,
        LISTENERS,
    ];
}

/// The single entry of the `config` map (`struct redirect_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// SO_MARK of the proxy's own sockets (0x539): never redirected.
    pub mark: u32,
    /// Outbound capture port on loopback (15001).
    pub outbound_port: u16,
    /// Inbound plaintext capture port (15006).
    pub inbound_port: u16,
    /// Inbound HBONE port (15008): never redirected.
    pub hbone_port: u16,
    /// DNS proxy port (15053): never redirected.
    pub dns_port: u16,
    /// Outbound destination port left alone (53).
    pub skip_port: u16,
    /// Padding, always 0.
    pub _pad: u16,
    /// Mark sockops puts on the proxy's connects to the app (0x1539); the pod routes sockets
    /// with it (the app's accepted socket inherits it) to `lo`. 0 = leave the mark alone.
    pub delivery_mark: u32,
}

/// An address in network order; IPv4 as IPv4-mapped IPv6 (`struct ip_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    /// The 16 address bytes, read as four native-endian `u32`s (as the kernel stores them).
    pub addr: [u32; 4],
}

impl IpKey {
    /// The key for `ip` (IPv4 is mapped into IPv6).
    pub fn from_ip(ip: IpAddr) -> Self {
        let octets = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut addr = [0u32; 4];
        for (word, chunk) in addr.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Self { addr }
    }

    /// The address back; IPv4-mapped addresses come back as IPv4.
    pub fn to_ip(&self) -> IpAddr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(self.addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(octets);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        Self::from_ip(ip)
    }
}

impl From<Ipv4Addr> for IpKey {
    fn from(ip: Ipv4Addr) -> Self {
        Self::from_ip(IpAddr::V4(ip))
    }
}

impl From<Ipv6Addr> for IpKey {
    fn from(ip: Ipv6Addr) -> Self {
        Self::from_ip(IpAddr::V6(ip))
    }
}

/// Value of `enrolled`: the pod's addresses (`struct pod_ips`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIps {
    /// IPv4 addresses (mapped), the first `n_v4` are valid.
    pub v4: [IpKey; MAX_POD_IPS],
    /// IPv6 addresses, the first `n_v6` are valid.
    pub v6: [IpKey; MAX_POD_IPS],
    /// Number of valid entries in `v4`.
    pub n_v4: u32,
    /// Number of valid entries in `v6`.
    pub n_v6: u32,
}

/// An original destination (`struct orig_dst`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Destination address.
    pub addr: IpKey,
    /// Destination port, network order.
    pub port_be: u16,
    /// Padding, always 0.
    pub _pad: u16,
}

/// Key of `orig_dst`: the redirected client socket (`struct client_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientKey {
    /// Cookie of the client's network namespace.
    pub netns_cookie: u64,
    /// The client socket's local address.
    pub addr: IpKey,
    /// The client socket's local port, host order.
    pub port: u16,
    /// Padding, always 0.
    pub _pad: [u16; 3],
}

/// Key of `bypass`: a proxy → pod connection (`struct tuple_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleKey {
    /// Source (proxy side) address.
    pub src: IpKey,
    /// Destination (pod) address.
    pub dst: IpKey,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
}

#[cfg(feature = "user")]
#[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
mod pod {
    use super::{ClientKey, IpKey, OrigDst, PodIps, RedirectConfig, TupleKey};

    // SAFETY: each type is #[repr(C)], Copy, made only of integers and arrays of integers,
    // with explicit padding fields, so every bit pattern is valid and there are no
    // uninitialised bytes.
    unsafe impl aya::Pod for RedirectConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodIps {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TupleKey {}
}
