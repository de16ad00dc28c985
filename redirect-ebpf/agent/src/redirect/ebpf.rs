//! eBPF mode: the loader's [`Redirector`] (cgroup programs + one sk_lookup link per pod
//! netns, keyed by the netns cookie) plus the in-pod routing for the proxy's spoofed-source
//! connections (fwmark 0x1539 → table 100, `tcp_fwmark_accept`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::AsFd;

use redirect_ebpf::{
    CAPS_HINT, DEFAULT_INBOUND_PORT, LoaderConfig, NetnsCookie, PodNetns, Redirector,
    find_listener_in_process, netns_cookie,
};

use super::{PodNet, RedirectError, Redirection, routing};
use crate::config::Config;

/// The loader's redirection.
#[derive(Debug)]
pub struct EbpfRedirection {
    redirector: Redirector,
    cookies: BTreeMap<String, NetnsCookie>,
}

fn ebpf_err(uid: &str, e: impl std::fmt::Display) -> RedirectError {
    RedirectError::Ebpf {
        uid: uid.to_string(),
        reason: e.to_string(),
    }
}

/// The loader configuration for `cfg`.
pub fn loader_config(cfg: &Config) -> LoaderConfig {
    LoaderConfig::new(&cfg.cgroup_path, &cfg.bpf_pin_dir)
}

impl EbpfRedirection {
    /// Loads (or reuses the pinned) programs and maps and attaches them to the node cgroup.
    /// The error names what is missing (capability, kernel feature, bpffs mount) and the
    /// fallback.
    pub fn load(cfg: &Config) -> anyhow::Result<Self> {
        let lc = loader_config(cfg);
        let redirector = Redirector::load(&lc).map_err(|e| {
            anyhow::anyhow!(
                "REDIRECT_MODE=ebpf: loading the eBPF programs (cgroup {}, pin dir {}) failed: {e}. \
                 The agent {CAPS_HINT}, a mounted bpffs (mount -t bpf bpf /sys/fs/bpf) and cgroup2; \
                 without them set REDIRECT_MODE=nftables (needs CAP_NET_ADMIN + CAP_SYS_ADMIN for nsenter)",
                lc.cgroup_path.display(),
                lc.pin_dir.display(),
            )
        })?;
        Ok(EbpfRedirection {
            redirector,
            cookies: BTreeMap::new(),
        })
    }

    fn cookie(&self, pod: &PodNet<'_>) -> Result<NetnsCookie, RedirectError> {
        if let Some(c) = self.cookies.get(pod.uid) {
            return Ok(*c);
        }
        let fd = pod.netns.ok_or_else(|| RedirectError::NetnsGone {
            uid: pod.uid.to_string(),
        })?;
        netns_cookie(fd).map_err(|e| ebpf_err(pod.uid, e))
    }
}

impl Redirection for EbpfRedirection {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), RedirectError> {
        self.redirector
            .set_node_addrs(addrs)
            .map_err(|e| ebpf_err("", e))
    }

    fn enroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError> {
        let fd = pod.netns.ok_or_else(|| RedirectError::NetnsGone {
            uid: pod.uid.to_string(),
        })?;
        routing::install(pod, routing::EBPF_FWMARK, true)?;
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for ip in pod.ips {
            match ip {
                IpAddr::V4(v4) => ipv4.push(*v4),
                IpAddr::V6(v6) => ipv6.push(*v6),
            }
        }
        let enrolled = self
            .redirector
            .enroll(&PodNetns {
                netns: fd,
                ipv4,
                ipv6,
            })
            .map_err(|e| ebpf_err(pod.uid, e))?;
        self.cookies.insert(pod.uid.to_string(), enrolled.cookie);
        Ok(())
    }

    fn set_inbound_listener(&mut self, pod: &PodNet<'_>, pid: i32) -> Result<(), RedirectError> {
        let cookie = self.cookie(pod)?;
        let pid =
            u32::try_from(pid).map_err(|_| ebpf_err(pod.uid, format!("bad ztunnel pid {pid}")))?;
        let listener = find_listener_in_process(pid, cookie, DEFAULT_INBOUND_PORT)
            .map_err(|e| ebpf_err(pod.uid, e))?;
        self.redirector
            .set_inbound_listener(cookie, listener.as_fd())
            .map_err(|e| ebpf_err(pod.uid, e))
    }

    fn unenroll(&mut self, pod: &PodNet<'_>) -> Result<(), RedirectError> {
        let cookie = self.cookie(pod);
        self.cookies.remove(pod.uid);
        if let Ok(cookie) = cookie {
            self.redirector
                .unenroll(cookie)
                .map_err(|e| ebpf_err(pod.uid, e))?;
        }
        if pod.netns.is_some() && pod.netns_path.exists() {
            routing::remove(pod, true)?;
        }
        cookie.map(|_| ())
    }

    fn retain(&mut self, keep: &[PodNet<'_>]) -> Result<(), RedirectError> {
        let mut wanted = BTreeSet::new();
        for pod in keep {
            wanted.insert(self.cookie(pod)?);
        }
        let enrolled = self.redirector.enrolled().map_err(|e| ebpf_err("", e))?;
        for (cookie, _) in enrolled {
            if !wanted.contains(&cookie) {
                tracing::info!(%cookie, "removing a stale enrollment (pod gone or unenrolled while the agent was away)");
                self.redirector
                    .unenroll(cookie)
                    .map_err(|e| ebpf_err("", e))?;
            }
        }
        Ok(())
    }
}

/// `redirect-agent uninstall`: detaches and unpins everything under `BPF_PIN_DIR`.
pub fn uninstall(cfg: &Config) -> anyhow::Result<()> {
    Redirector::uninstall(&loader_config(cfg))
        .map_err(|e| anyhow::anyhow!("uninstalling {}: {e}", cfg.bpf_pin_dir.display()))
}
