//! Routing inside the pod netns for the proxy's spoofed-source connections to the app: the
//! app's replies carry a mark (the SYN's mark via `tcp_fwmark_accept` in eBPF mode; the
//! connmark 0x111 restored by nftables in fallback mode) and route to `lo` through table 100.

use super::{PodNet, RedirectError};
use crate::netns::{self, NetnsError};

/// Routing table for the marked replies.
pub const ROUTE_TABLE: &str = "100";
/// Priority of the fwmark rule (Istio's).
pub const RULE_PREF: &str = "32764";
/// eBPF mode: the mark sockops puts on the proxy's connections to the app
/// (`redirect_ebpf::DEFAULT_DELIVERY_MARK`), inherited by the app's accepted socket. Not the
/// proxy's own 0x539: that would send every proxy socket in the pod (HBONE out, listeners'
/// SYN-ACKs) to `lo`.
pub const EBPF_FWMARK: &str = "0x1539";
/// nftables mode: the connmark restored on the app's replies.
pub const NFT_FWMARK: &str = "0x111/0xfff";

fn ip(pod: &PodNet<'_>, v6: bool, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = Vec::with_capacity(args.len() + 1);
    if v6 {
        full.push("-6");
    }
    full.extend_from_slice(args);
    netns::run(Some(pod.netns_path), "ip", &full, None)
}

fn wrap(pod: &PodNet<'_>) -> impl Fn(NetnsError) -> RedirectError + use<> {
    let uid = pod.uid.to_string();
    move |source| RedirectError::Netns {
        uid: uid.clone(),
        source,
    }
}

/// Installs the fwmark rule and the local route (replacing earlier ones), v6 too when the
/// pod has v6; `fwmark_accept` also sets `net.ipv4.tcp_fwmark_accept=1`.
pub fn install(pod: &PodNet<'_>, fwmark: &str, fwmark_accept: bool) -> Result<(), RedirectError> {
    let families: &[bool] = if pod.has_v6() {
        &[false, true]
    } else {
        &[false]
    };
    for &v6 in families {
        // Re-enrolling (restart) must not stack rules: drop ours first (absent is fine).
        let _ = ip(pod, v6, &["rule", "del", "pref", RULE_PREF]);
        ip(
            pod,
            v6,
            &[
                "rule",
                "add",
                "fwmark",
                fwmark,
                "pref",
                RULE_PREF,
                "lookup",
                ROUTE_TABLE,
            ],
        )
        .map_err(wrap(pod))?;
        let all = if v6 { "::/0" } else { "0.0.0.0/0" };
        ip(
            pod,
            v6,
            &[
                "route",
                "replace",
                "local",
                all,
                "dev",
                "lo",
                "table",
                ROUTE_TABLE,
            ],
        )
        .map_err(wrap(pod))?;
    }
    if fwmark_accept {
        netns::run(
            Some(pod.netns_path),
            "sysctl",
            &["-q", "-w", "net.ipv4.tcp_fwmark_accept=1"],
            None,
        )
        .map_err(wrap(pod))?;
    }
    Ok(())
}

/// Removes what [`install`] added (best effort per item; the first failure is returned).
pub fn remove(pod: &PodNet<'_>, fwmark_accept: bool) -> Result<(), RedirectError> {
    for v6 in [false, true] {
        // Absent rule/table: nothing to do.
        let _ = ip(pod, v6, &["rule", "del", "pref", RULE_PREF]);
        let _ = ip(pod, v6, &["route", "flush", "table", ROUTE_TABLE]);
    }
    if fwmark_accept {
        netns::run(
            Some(pod.netns_path),
            "sysctl",
            &["-q", "-w", "net.ipv4.tcp_fwmark_accept=0"],
            None,
        )
        .map_err(wrap(pod))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ebpf_fwmark_is_the_loaders_delivery_mark() {
        assert_eq!(
            super::EBPF_FWMARK,
            format!("{:#x}", redirect_ebpf::DEFAULT_DELIVERY_MARK)
        );
    }
}
