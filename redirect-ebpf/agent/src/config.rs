//! Typed configuration from environment variables.
//!
//! Parsing goes through [`Source`] so tests inject a map instead of mutating the process
//! environment. Every bad value is an [`Error`] naming the variable, the value and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use mesh_core::env::{absolute_path, socket_addr, string, var_trimmed};
use serde::Serialize;

// The parsing layer shared with the other binaries.
pub use mesh_core::env::{EnvSource, Error, Source};

/// Environment variable names.
pub mod env {
    /// This node's name (required).
    pub const NODE_NAME: &str = "NODE_NAME";
    /// `ebpf` (default) or `nftables`.
    pub const REDIRECT_MODE: &str = "REDIRECT_MODE";
    /// Where the agent listens for the node proxy (ZDS server, SOCK_SEQPACKET).
    pub const ZDS_SOCKET: &str = "ZDS_SOCKET";
    /// Where the agent listens for the CNI plugin (unix stream).
    pub const CNI_EVENT_SOCKET: &str = "CNI_EVENT_SOCKET";
    /// Directory (on a mounted bpffs) of the pinned programs, links and maps.
    pub const BPF_PIN_DIR: &str = "BPF_PIN_DIR";
    /// The cgroup the cgroup programs attach to.
    pub const CGROUP_PATH: &str = "CGROUP_PATH";
    /// Enrollment source: `files` or `kubernetes`.
    pub const REGISTRY: &str = "REGISTRY";
    /// Set inside a Kubernetes pod; selects the `kubernetes` registry by default.
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    /// Directory of Kubernetes YAML (the `files` registry).
    pub const LOCAL_DIR: &str = "LOCAL_DIR";
    /// Where pods reported by the CNI plugin are remembered across restarts.
    pub const STATE_DIR: &str = "STATE_DIR";
    /// HTTP readiness (`GET /readyz`).
    pub const READINESS_ADDR: &str = "READINESS_ADDR";
    /// Log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// `text` (default) or `json`.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
}

/// Every environment variable the agent reads.
pub const ENV_NAMES: &[&str] = &[
    env::NODE_NAME,
    env::REDIRECT_MODE,
    env::ZDS_SOCKET,
    env::CNI_EVENT_SOCKET,
    env::BPF_PIN_DIR,
    env::CGROUP_PATH,
    env::REGISTRY,
    env::KUBERNETES_SERVICE_HOST,
    env::LOCAL_DIR,
    env::STATE_DIR,
    env::READINESS_ADDR,
    env::RUST_LOG,
    env::LOG_FORMAT,
];

/// Default of [`env::ZDS_SOCKET`] (ztunnel's `INPOD_UDS` default).
pub const DEFAULT_ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Default of [`env::CNI_EVENT_SOCKET`].
pub const DEFAULT_CNI_EVENT_SOCKET: &str = mesh_cni::event::DEFAULT_AGENT_SOCKET;
/// Default of [`env::BPF_PIN_DIR`].
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/mesh-redirect";
/// Default of [`env::STATE_DIR`].
pub const DEFAULT_STATE_DIR: &str = "/var/run/mesh-agent";
/// Default of [`env::READINESS_ADDR`].
pub const DEFAULT_READINESS_ADDR: &str = "0.0.0.0:8000";

/// How pod traffic is redirected to the node proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// cgroup + sk_lookup eBPF programs (the default).
    Ebpf,
    /// nftables rules inside each pod's netns (fallback).
    Nftables,
}

impl FromStr for RedirectMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ebpf" => Ok(RedirectMode::Ebpf),
            "nftables" => Ok(RedirectMode::Nftables),
            _ => Err("expected ebpf or nftables".into()),
        }
    }
}

/// Where pod enrollment is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Registry {
    /// istiod-compat's local-files registry (a directory of Kubernetes YAML).
    Files {
        /// The directory.
        dir: PathBuf,
    },
    /// The Kubernetes API (in-cluster config).
    Kubernetes,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

/// The agent's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Only pods scheduled on this node are handled.
    pub node_name: String,
    /// eBPF or nftables.
    pub redirect_mode: RedirectMode,
    /// ZDS server socket.
    pub zds_socket: PathBuf,
    /// CNI event server socket.
    pub cni_event_socket: PathBuf,
    /// Pinned BPF objects (eBPF mode).
    pub bpf_pin_dir: PathBuf,
    /// Cgroup for the cgroup programs (eBPF mode).
    pub cgroup_path: PathBuf,
    /// Enrollment source.
    pub registry: Registry,
    /// Pods reported by CNI.
    pub state_dir: PathBuf,
    /// Readiness endpoint.
    pub readiness_addr: SocketAddr,
    /// `RUST_LOG` (default `info`).
    pub rust_log: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
}

/// The cgroup2 mount point: `/sys/fs/cgroup` when it is cgroup2 (unified layout), else
/// `/sys/fs/cgroup/unified` (hybrid layout).
pub fn detect_cgroup2() -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    let unified = nix::sys::statfs::statfs(root)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if unified {
        root.to_path_buf()
    } else {
        root.join("unified")
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, Error> {
        Config::parse(&EnvSource, detect_cgroup2)
    }

    /// Parses `src`; `detect_cgroup` is called only when [`env::CGROUP_PATH`] is unset.
    pub fn parse(
        src: &dyn Source,
        detect_cgroup: impl FnOnce() -> PathBuf,
    ) -> Result<Config, Error> {
        let node_name =
            var_trimmed(src, env::NODE_NAME, |s| Ok(s.to_string()))?.ok_or(Error::Missing {
                var: env::NODE_NAME,
                why: "",
            })?;
        let in_cluster = string(src, env::KUBERNETES_SERVICE_HOST).is_some();
        let local_dir = var_trimmed(src, env::LOCAL_DIR, absolute_path)?;
        let registry_kind = var_trimmed(src, env::REGISTRY, |s| match s {
            "files" | "kubernetes" => Ok(s.to_string()),
            _ => Err("expected files or kubernetes".to_string()),
        })?
        .unwrap_or_else(|| if in_cluster { "kubernetes" } else { "files" }.to_string());
        let registry = if registry_kind == "kubernetes" {
            Registry::Kubernetes
        } else {
            Registry::Files {
                dir: local_dir.ok_or(Error::Missing {
                    var: env::LOCAL_DIR,
                    why: "with REGISTRY=files",
                })?,
            }
        };
        let readiness_addr = var_trimmed(src, env::READINESS_ADDR, socket_addr)?;
        let readiness_addr = match readiness_addr {
            Some(a) => a,
            None => DEFAULT_READINESS_ADDR
                .parse()
                .map_err(|e: std::net::AddrParseError| Error::InvalidVar {
                    var: env::READINESS_ADDR,
                    value: DEFAULT_READINESS_ADDR.into(),
                    reason: e.to_string(),
                })?,
        };
        let cgroup_path = match var_trimmed(src, env::CGROUP_PATH, absolute_path)? {
            Some(p) => p,
            None => detect_cgroup(),
        };
        Ok(Config {
            node_name,
            redirect_mode: var_trimmed(src, env::REDIRECT_MODE, RedirectMode::from_str)?
                .unwrap_or(RedirectMode::Ebpf),
            zds_socket: var_trimmed(src, env::ZDS_SOCKET, absolute_path)?
                .unwrap_or_else(|| DEFAULT_ZDS_SOCKET.into()),
            cni_event_socket: var_trimmed(src, env::CNI_EVENT_SOCKET, absolute_path)?
                .unwrap_or_else(|| DEFAULT_CNI_EVENT_SOCKET.into()),
            bpf_pin_dir: var_trimmed(src, env::BPF_PIN_DIR, absolute_path)?
                .unwrap_or_else(|| DEFAULT_BPF_PIN_DIR.into()),
            cgroup_path,
            registry,
            state_dir: var_trimmed(src, env::STATE_DIR, absolute_path)?
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            readiness_addr,
            rust_log: string(src, env::RUST_LOG),
            log_format: var_trimmed(src, env::LOG_FORMAT, LogFormat::from_str)?.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Config, Error> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Config::parse(&map, || PathBuf::from("/detected"))
    }

    #[test]
    fn defaults() {
        let c = parse(&[(env::NODE_NAME, "n1"), (env::LOCAL_DIR, "/etc/mesh")]).unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.redirect_mode, RedirectMode::Ebpf);
        assert_eq!(c.zds_socket, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
        assert_eq!(
            c.cni_event_socket,
            PathBuf::from("/var/run/mesh-cni/agent.sock")
        );
        assert_eq!(c.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/mesh-redirect"));
        assert_eq!(c.cgroup_path, PathBuf::from("/detected"));
        assert_eq!(
            c.registry,
            Registry::Files {
                dir: "/etc/mesh".into()
            }
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/run/mesh-agent"));
        assert_eq!(c.readiness_addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.rust_log, None);
    }

    #[test]
    fn overrides() {
        let c = parse(&[
            (env::NODE_NAME, "n2"),
            (env::REDIRECT_MODE, "nftables"),
            (env::ZDS_SOCKET, "/tmp/z.sock"),
            (env::CNI_EVENT_SOCKET, "/tmp/c.sock"),
            (env::BPF_PIN_DIR, "/sys/fs/bpf/x"),
            (env::CGROUP_PATH, "/sys/fs/cgroup/unified/node1"),
            (env::KUBERNETES_SERVICE_HOST, "10.96.0.1"),
            (env::STATE_DIR, "/tmp/state"),
            (env::READINESS_ADDR, "127.0.0.1:0"),
            (env::RUST_LOG, "debug"),
            (env::LOG_FORMAT, "json"),
        ])
        .unwrap();
        assert_eq!(c.redirect_mode, RedirectMode::Nftables);
        assert_eq!(c.registry, Registry::Kubernetes);
        assert_eq!(c.cgroup_path, PathBuf::from("/sys/fs/cgroup/unified/node1"));
        assert_eq!(c.readiness_addr.port(), 0);
        assert_eq!(c.rust_log.as_deref(), Some("debug"));
        assert_eq!(c.log_format, LogFormat::Json);
        // An explicit REGISTRY wins over the in-cluster default.
        let c = parse(&[
            (env::NODE_NAME, "n"),
            (env::KUBERNETES_SERVICE_HOST, "10.96.0.1"),
            (env::REGISTRY, "files"),
            (env::LOCAL_DIR, "/d"),
        ])
        .unwrap();
        assert_eq!(c.registry, Registry::Files { dir: "/d".into() });
    }

    #[test]
    fn errors_name_var_value_and_reason() {
        let base = [(env::NODE_NAME, "n"), (env::LOCAL_DIR, "/d")];
        // (extra vars, the var the error must name, text it must contain)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
        );
        let cases: &[Case] = &[
            (&[], env::NODE_NAME, "is required"),
            (&[(env::NODE_NAME, "n")], env::LOCAL_DIR, "REGISTRY=files"),
            (
                &[(env::REDIRECT_MODE, "iptables")],
                env::REDIRECT_MODE,
                "\"iptables\"",
            ),
            (
                &[(env::REGISTRY, "etcd")],
                env::REGISTRY,
                "expected files or kubernetes",
            ),
            (
                &[(env::ZDS_SOCKET, "rel.sock")],
                env::ZDS_SOCKET,
                "absolute path",
            ),
            (&[(env::STATE_DIR, "state")], env::STATE_DIR, "\"state\""),
            (
                &[(env::READINESS_ADDR, "8000")],
                env::READINESS_ADDR,
                "ip:port",
            ),
            (&[(env::LOG_FORMAT, "xml")], env::LOG_FORMAT, "text or json"),
            (&[(env::CGROUP_PATH, "x")], env::CGROUP_PATH, "absolute"),
        ];
        for (extra, var, want) in cases {
            let mut map: HashMap<&str, &str> = HashMap::new();
            if !extra.iter().any(|(k, _)| *k == env::NODE_NAME) && *var != env::NODE_NAME {
                map.extend(base.iter().copied());
            }
            map.extend(extra.iter().copied());
            let err = Config::parse(&map, || PathBuf::from("/x")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(var), "{var}: {text}");
            assert!(text.contains(want), "{var}: {text} lacks {want}");
        }
    }

    #[test]
    fn env_names_cover_every_const() {
        for name in [
            env::NODE_NAME,
            env::REDIRECT_MODE,
            env::ZDS_SOCKET,
            env::CNI_EVENT_SOCKET,
            env::BPF_PIN_DIR,
            env::CGROUP_PATH,
            env::REGISTRY,
            env::KUBERNETES_SERVICE_HOST,
            env::LOCAL_DIR,
            env::STATE_DIR,
            env::READINESS_ADDR,
            env::RUST_LOG,
            env::LOG_FORMAT,
        ] {
            assert!(ENV_NAMES.contains(&name), "{name}");
        }
        assert_eq!(ENV_NAMES.len(), 13);
    }
}
