//! What the container runtime hands the plugin: `CNI_*` environment variables and the
//! network configuration on stdin (CNI spec 1.0.0).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::event::DEFAULT_AGENT_SOCKET;
use crate::plugin::CniError;

/// Environment variable names (CNI spec).
pub mod env {
    /// ADD, DEL, CHECK or VERSION.
    pub const CNI_COMMAND: &str = "CNI_COMMAND";
    /// The container (sandbox) id.
    pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
    /// Path of the container's network namespace.
    pub const CNI_NETNS: &str = "CNI_NETNS";
    /// Interface name inside the container.
    pub const CNI_IFNAME: &str = "CNI_IFNAME";
    /// `;`-separated `KEY=VALUE` extra arguments (Kubernetes pod facts).
    pub const CNI_ARGS: &str = "CNI_ARGS";
    /// Where the runtime looks for plugins.
    pub const CNI_PATH: &str = "CNI_PATH";
}

/// `CNI_ARGS` keys set by the kubelet's runtime.
pub mod args {
    /// Pod name.
    pub const K8S_POD_NAME: &str = "K8S_POD_NAME";
    /// Pod namespace.
    pub const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
    /// Pod uid.
    pub const K8S_POD_UID: &str = "K8S_POD_UID";
    /// The pod's sandbox container id.
    pub const K8S_POD_INFRA_CONTAINER_ID: &str = "K8S_POD_INFRA_CONTAINER_ID";
}

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Set up (chained: report to the agent, pass prevResult through).
    Add,
    /// Tear down (report, always succeed).
    Del,
    /// Verify.
    Check,
    /// Print the supported versions.
    Version,
}

impl std::str::FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            other => Err(CniError::invalid_env(format!(
                "{}={other:?}: expected ADD, DEL, CHECK or VERSION",
                env::CNI_COMMAND
            ))),
        }
    }
}

/// The Kubernetes pod facts in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
}

/// Parses `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAME=x;…`). Unknown keys are ignored; a
/// part without `=` is an error.
pub fn parse_cni_args(s: &str) -> Result<PodArgs, CniError> {
    let mut out = PodArgs::default();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(CniError::invalid_env(format!(
                "{}: {part:?} is not KEY=VALUE",
                env::CNI_ARGS
            )));
        };
        let v = (!v.is_empty()).then(|| v.to_string());
        match k {
            args::K8S_POD_NAME => out.name = v,
            args::K8S_POD_NAMESPACE => out.namespace = v,
            args::K8S_POD_UID => out.uid = v,
            args::K8S_POD_INFRA_CONTAINER_ID => out.infra_container_id = v,
            _ => {}
        }
    }
    Ok(out)
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required except for VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub pod: PodArgs,
}

/// Reads the environment through `get` (the process env in production, a map in tests).
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let command: Command = get(env::CNI_COMMAND)
        .ok_or_else(|| CniError::invalid_env(format!("{} is not set", env::CNI_COMMAND)))?
        .parse()?;
    let required = |name: &str| -> Result<String, CniError> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::invalid_env(format!(
                "{name} is required for {command:?}"
            ))),
        }
    };
    let (container_id, netns) = match command {
        Command::Version => (String::new(), String::new()),
        Command::Del => (
            required(env::CNI_CONTAINERID)?,
            get(env::CNI_NETNS).unwrap_or_default(),
        ),
        Command::Add | Command::Check => {
            (required(env::CNI_CONTAINERID)?, required(env::CNI_NETNS)?)
        }
    };
    let pod = parse_cni_args(&get(env::CNI_ARGS).unwrap_or_default())?;
    Ok(CniEnv {
        command,
        container_id,
        netns,
        ifname: get(env::CNI_IFNAME).unwrap_or_default(),
        pod,
    })
}

/// The network configuration on stdin (only the fields this plugin reads).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (`mesh-cni`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The agent's CNI event socket.
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// The previous plugin's result (chained ADD and CHECK).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

fn default_agent_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

/// Parses the stdin configuration.
pub fn parse_conf(bytes: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(bytes)
        .map_err(|e| CniError::decode(format!("network configuration on stdin: {e}")))?;
    if conf.cni_version.is_empty() {
        return Err(CniError::invalid_conf("cniVersion is empty"));
    }
    Ok(conf)
}

/// The pod addresses of a prevResult (`ips[].address`, CIDR notation).
pub fn prev_result_ips(prev: &Value) -> Result<Vec<String>, CniError> {
    let Some(ips) = prev.get("ips") else {
        return Ok(Vec::new());
    };
    let ips = ips
        .as_array()
        .ok_or_else(|| CniError::invalid_conf("prevResult.ips is not an array"))?;
    ips.iter()
        .map(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CniError::invalid_conf("prevResult.ips[].address is not a string"))
        })
        .collect()
}

/// A map-backed environment for tests and callers that build one.
pub fn env_from_map(map: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::codes;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cni_args_table() {
        let cases: &[(&str, Option<PodArgs>)] = &[
            ("", Some(PodArgs::default())),
            (
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c;K8S_POD_UID=u",
                Some(PodArgs {
                    name: Some("p".into()),
                    namespace: Some("ns".into()),
                    uid: Some("u".into()),
                    infra_container_id: Some("c".into()),
                }),
            ),
            ("K8S_POD_NAME=;X=y;", Some(PodArgs::default())),
            ("K8S_POD_NAME", None),
        ];
        for (input, want) in cases {
            match (parse_cni_args(input), want) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "{input}"),
                (Err(e), None) => assert_eq!(e.code, codes::INVALID_ENV, "{input}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn env_table() {
        let full = [
            (env::CNI_COMMAND, "ADD"),
            (env::CNI_CONTAINERID, "c1"),
            (env::CNI_NETNS, "/var/run/netns/x"),
            (env::CNI_IFNAME, "eth0"),
            (env::CNI_ARGS, "K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns"),
        ];
        let got = parse_env(env_from_map(&env(&full))).unwrap();
        assert_eq!(got.command, Command::Add);
        assert_eq!(got.netns, "/var/run/netns/x");
        assert_eq!(got.pod.name.as_deref(), Some("p"));

        // VERSION needs nothing else; DEL tolerates an empty netns; ADD does not.
        assert!(parse_env(env_from_map(&env(&[(env::CNI_COMMAND, "VERSION")]))).is_ok());
        let del = parse_env(env_from_map(&env(&[
            (env::CNI_COMMAND, "DEL"),
            (env::CNI_CONTAINERID, "c1"),
        ])))
        .unwrap();
        assert_eq!(del.netns, "");
        for bad in [
            vec![],
            vec![(env::CNI_COMMAND, "GET")],
            vec![(env::CNI_COMMAND, "ADD"), (env::CNI_CONTAINERID, "c1")],
            vec![(env::CNI_COMMAND, "DEL")],
        ] {
            let err = parse_env(env_from_map(&env(&bad))).unwrap_err();
            assert_eq!(err.code, codes::INVALID_ENV, "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn conf_and_prev_result() {
        let conf = parse_conf(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"mesh-cni",
                 "agent_socket":"/tmp/a.sock",
                 "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.1.2/24"},{"address":"fd00::2/64"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"));
        let ips = prev_result_ips(conf.prev_result.as_ref().unwrap()).unwrap();
        assert_eq!(ips, vec!["10.0.1.2/24", "fd00::2/64"]);

        let default = parse_conf(br#"{"cniVersion":"1.0.0","name":"k8s"}"#).unwrap();
        assert_eq!(default.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert!(default.prev_result.is_none());

        assert_eq!(parse_conf(b"not json").unwrap_err().code, codes::DECODE);
        assert_eq!(
            parse_conf(br#"{"cniVersion":""}"#).unwrap_err().code,
            codes::INVALID_CONF
        );
        let bad = serde_json::json!({"ips":[{"address":5}]});
        assert_eq!(prev_result_ips(&bad).unwrap_err().code, codes::INVALID_CONF);
        assert_eq!(
            prev_result_ips(&serde_json::json!({})).unwrap(),
            Vec::<String>::new()
        );
    }
}
