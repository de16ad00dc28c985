//! Shared (in-pod) mode settings (reference §3.1-3.3, §16.1 "In-pod").

use std::path::PathBuf;

use serde::Serialize;

use super::{Config, Error, env};

/// Default path of the node agent's ZDS socket.
pub const DEFAULT_UDS: &str = "/var/run/ztunnel/ztunnel.sock";

/// The mark shared mode needs on every socket (so the in-pod redirect lets the proxy's own
/// traffic through); `PACKET_MARK` defaults to it.
pub const DEFAULT_MARK: u32 = 1337;

/// Shared (in-pod) mode settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InpodConfig {
    /// The node agent's ZDS socket (`INPOD_UDS`).
    pub uds: PathBuf,
    /// SO_REUSEPORT on per-pod listeners (`INPOD_PORT_REUSE`), so a new proxy can bind beside
    /// a draining one during an upgrade.
    pub port_reuse: bool,
    /// Whether pods get IPv6 listeners too (`IPV6_ENABLED`).
    pub ipv6: bool,
}

/// Shared-mode cross-field checks.
pub(super) fn validate(cfg: &Config) -> Result<(), Error> {
    if cfg.proxy_workload_info.is_some() {
        return Err(Error::Invalid(format!(
            "{} is only valid with {}=dedicated (in shared mode the node agent names the pods)",
            env::PROXY_WORKLOAD_INFO,
            env::PROXY_MODE
        )));
    }
    match cfg.packet_mark {
        Some(mark) if mark != 0 => Ok(()),
        _ => Err(Error::InvalidVar {
            var: env::PACKET_MARK,
            value: cfg.packet_mark.unwrap_or_default().to_string(),
            reason: format!(
                "{}=shared needs a non-zero mark (default {DEFAULT_MARK:#x}): the in-pod \
                 redirect rules let marked traffic through",
                env::PROXY_MODE
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::ProxyMode;

    fn shared() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (env::PROXY_MODE, "shared"),
            (env::LOCAL_XDS_PATH, "/tmp/x.yaml"),
        ])
    }

    #[test]
    fn defaults() {
        let cfg = Config::from_source(&shared()).unwrap();
        assert_eq!(cfg.proxy_mode, ProxyMode::Shared);
        assert_eq!(cfg.packet_mark, Some(0x539));
        assert_eq!(cfg.inpod.uds, PathBuf::from(DEFAULT_UDS));
        assert!(cfg.inpod.port_reuse);
    }

    #[test]
    fn overrides_and_errors() {
        let mut src = shared();
        src.insert(env::INPOD_UDS, "/run/x.sock");
        src.insert(env::INPOD_PORT_REUSE, "false");
        let cfg = Config::from_source(&src).unwrap();
        assert_eq!(cfg.inpod.uds, PathBuf::from("/run/x.sock"));
        assert!(!cfg.inpod.port_reuse);

        let mut src = shared();
        src.insert(env::PACKET_MARK, "0");
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains(env::PACKET_MARK), "{err}");

        let mut src = shared();
        src.insert(env::PROXY_WORKLOAD_INFO, "a/b/c");
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains(env::PROXY_WORKLOAD_INFO), "{err}");

        let mut src = shared();
        src.insert(env::INPOD_PORT_REUSE, "sometimes");
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains(env::INPOD_PORT_REUSE), "{err}");
    }
}
