//! Fallback (`REDIRECT_MODE=nftables`): Istio's in-pod rules (reference §3.4) as one nftables
//! table inside the pod netns. Nothing is written in the host netns.

use std::fmt::Write;
use std::net::IpAddr;

use super::{PodNet, RedirectError, Redirection, routing};
use crate::netns::{self, NetnsError};

/// The table (family `inet`) inside each enrolled pod netns.
pub const TABLE: &str = "mesh_redirect";

/// nftables inside each pod netns.
#[derive(Debug, Default)]
pub struct NftRedirection {
    node_addrs: Vec<IpAddr>,
}

impl NftRedirection {
    /// A backend with no node addresses yet.
    pub fn new() -> Self {
        Self::default()
    }
}

fn set(name: &str, ty: &str, addrs: impl Iterator<Item = String>) -> String {
    let elems: Vec<String> = addrs.collect();
    if elems.is_empty() {
        format!("  set {name} {{ type {ty}; }}\n")
    } else {
        format!(
            "  set {name} {{ type {ty}; elements = {{ {} }} }}\n",
            elems.join(", ")
        )
    }
}

/// The complete script: (re)creates the table atomically in one transaction.
pub fn ruleset(node_addrs: &[IpAddr]) -> String {
    let mut s = String::new();
    // Create-then-delete makes the delete valid whether or not the table exists.
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    s += &set(
        "node_v4",
        "ipv4_addr",
        node_addrs
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| a.to_string()),
    );
    s += &set(
        "node_v6",
        "ipv6_addr",
        node_addrs
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| a.to_string()),
    );
    s += r#"  chain prerouting_mangle {
    type filter hook prerouting priority mangle; policy accept;
    # The proxy's own packets (mark 0x539) looping into the pod: remember on the connection.
    meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111
  }
  chain output_mangle {
    type route hook output priority mangle; policy accept;
    # Replies of such connections get the mark back, so rule "fwmark 0x111" routes them to lo.
    ct mark & 0xfff == 0x111 meta mark set ct mark
  }
  chain prerouting_nat {
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto != tcp accept
    ip saddr @node_v4 accept
    ip6 saddr @node_v6 accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    tcp dport 15008 accept
    meta mark & 0xfff == 0x539 accept
    meta l4proto tcp redirect to :15006
  }
  chain output_nat {
    type nat hook output priority -100; policy accept;
    meta l4proto != tcp accept
    ct mark & 0xfff == 0x111 accept
    meta mark & 0xfff == 0x539 accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    oifname "lo" accept
    meta l4proto tcp redirect to :15001
  }
}
"#;
    s
}

fn wrap(pod: &PodNet<'_>) -> impl Fn(NetnsError) -> RedirectError + use<> {
    let uid = pod.uid.to_string();
    move |source| RedirectError::Netns {
        uid: uid.clone(),
        source,
    }
}

impl Redirection for NftRedirection {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), RedirectError> {
        self.node_addrs = addrs.to_vec();
        Ok(())
    }

    fn enroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError> {
        if pod.netns.is_none() {
            return Err(RedirectError::NetnsGone {
                uid: pod.uid.to_string(),
            });
        }
        routing::install(pod, routing::NFT_FWMARK, false)?;
        netns::run(
            Some(pod.netns_path),
            "nft",
            &["-f", "-"],
            Some(&ruleset(&self.node_addrs)),
        )
        .map_err(wrap(pod))?;
        Ok(())
    }

    fn set_inbound_listener(&mut self, _pod: &PodNet<'_>, _pid: i32) -> Result<(), RedirectError> {
        // REDIRECT reaches whichever proxy listens on 15006 in the pod netns.
        Ok(())
    }

    fn unenroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError> {
        if pod.netns.is_none() || !pod.netns_path.exists() {
            // The netns is gone, and its rules with it.
            return Ok(());
        }
        let script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
        netns::run(Some(pod.netns_path), "nft", &["-f", "-"], Some(&script)).map_err(wrap(pod))?;
        routing::remove(pod, false)
    }

    fn retain(&mut self, _keep: &[PodNet<'_>]) -> Result<(), RedirectError> {
        // State lives in the pod netns only: the agent unenrolls every known pod that is no
        // longer wanted, and a deleted pod's rules went with its netns.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_lists_node_addresses_per_family() {
        let s = ruleset(&["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()]);
        assert!(
            s.contains("set node_v4 { type ipv4_addr; elements = { 10.0.0.1 } }"),
            "{s}"
        );
        assert!(
            s.contains("set node_v6 { type ipv6_addr; elements = { fd00::1 } }"),
            "{s}"
        );
        let empty = ruleset(&[]);
        assert!(empty.contains("set node_v4 { type ipv4_addr; }"), "{empty}");
        assert!(empty.starts_with("table inet mesh_redirect\ndelete table inet mesh_redirect\n"));
    }
}
