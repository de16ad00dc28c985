//! The CNI operations. Chained: ADD reports the pod to the node agent and then prints the
//! previous result unchanged; DEL reports and always succeeds; CHECK verifies the input.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::conf::{CniEnv, Command, NetConf, parse_conf, prev_result_ips};
use crate::event::{CniCommand, CniEvent, exchange};

/// The spec version this plugin implements.
pub const CNI_VERSION: &str = "1.0.0";
/// Versions accepted in `cniVersion`.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// How long the plugin waits for the agent (per write and per read).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// CNI error codes (spec 1.0.0, "Error").
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (talking to the agent).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONF: u32 = 7;
    /// Try again later (the agent refused, e.g. not ready).
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// A CNI error result: printed as JSON on stdout, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// One of [`codes`].
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: &str, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.to_string(),
            details: details.into(),
        }
    }
    /// Code 4.
    pub fn invalid_env(details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, "invalid environment variables", details)
    }
    /// Code 6.
    pub fn decode(details: impl Into<String>) -> Self {
        Self::new(codes::DECODE, "failed to decode content", details)
    }
    /// Code 7.
    pub fn invalid_conf(details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_CONF, "invalid network config", details)
    }

    /// The error as the spec's JSON object.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v =
            serde_json::json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

/// Runs one invocation: `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(serde_json::json!({
            "cniVersion": CNI_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = parse_conf(stdin)?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {:?} is not one of {SUPPORTED_VERSIONS:?}",
                conf.cni_version
            ),
        ));
    }
    match env.command {
        Command::Add => add(env, &conf),
        Command::Del => {
            del(env, &conf);
            Ok(None)
        }
        Command::Check => {
            prev_result(&conf)?;
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}

fn prev_result(conf: &NetConf) -> Result<&Value, CniError> {
    conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_conf(
            "no prevResult: mesh-cni is a chained plugin and must follow an interface plugin",
        )
    })
}

/// The pod event of this invocation, or `None` when it is not a Kubernetes pod.
fn pod_event(env: &CniEnv, command: CniCommand, ips: Vec<String>) -> Option<CniEvent> {
    let (Some(name), Some(namespace)) = (&env.pod.name, &env.pod.namespace) else {
        return None;
    };
    Some(CniEvent {
        command,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        pod_name: name.clone(),
        pod_namespace: namespace.clone(),
        pod_uid: env.pod.uid.clone().unwrap_or_default(),
        ips,
    })
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let prev = prev_result(conf)?;
    let ips = prev_result_ips(prev)?;
    if let Some(event) = pod_event(env, CniCommand::Add, ips) {
        report(&conf.agent_socket, &event)?;
    } else {
        eprintln!(
            "mesh-cni: container {} has no K8S_POD_NAME/K8S_POD_NAMESPACE: not a Kubernetes pod, passing through",
            env.container_id
        );
    }
    let mut out = prev.clone();
    if let Some(obj) = out.as_object_mut() {
        obj.insert(
            "cniVersion".to_string(),
            Value::String(conf.cni_version.clone()),
        );
    }
    Ok(Some(out))
}

fn del(env: &CniEnv, conf: &NetConf) {
    let Some(event) = pod_event(env, CniCommand::Del, Vec::new()) else {
        return;
    };
    // DEL must succeed (it is retried until it does, and the pod may be long gone): the
    // agent also forgets pods whose netns disappeared.
    if let Err(e) = report(&conf.agent_socket, &event) {
        eprintln!(
            "mesh-cni: DEL of {}/{}: {e}",
            event.pod_namespace, event.pod_name
        );
    }
}

fn report(socket: &Path, event: &CniEvent) -> Result<(), CniError> {
    let reply = exchange(socket, event, AGENT_TIMEOUT)
        .map_err(|e| CniError::new(codes::IO, "node agent unreachable", e.to_string()))?;
    if reply.ok {
        Ok(())
    } else {
        Err(CniError::new(
            codes::TRY_AGAIN_LATER,
            "node agent refused the pod",
            reply.error.unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::PodArgs;

    fn env(command: Command) -> CniEnv {
        CniEnv {
            command,
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            pod: PodArgs::default(),
        }
    }

    #[test]
    fn version_and_errors() {
        let v = run(&env(Command::Version), b"").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["supportedVersions"].as_array().unwrap().len() == 4);

        let err = run(&env(Command::Add), br#"{"cniVersion":"9.9.9"}"#).unwrap_err();
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
        let json = err.to_json("1.0.0");
        assert_eq!(json["code"], 1);
        assert!(json["details"].as_str().unwrap().contains("9.9.9"));

        let err = run(&env(Command::Add), br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(err.code, codes::INVALID_CONF);
        assert_eq!(
            run(&env(Command::Check), br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code,
            codes::INVALID_CONF
        );
    }

    #[test]
    fn add_without_pod_passes_through() {
        let out = run(
            &env(Command::Add),
            br#"{"cniVersion":"0.4.0","agent_socket":"/nonexistent","prevResult":{"cniVersion":"0.4.0","ips":[]}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(out, serde_json::json!({"cniVersion":"0.4.0","ips":[]}));
    }
}
