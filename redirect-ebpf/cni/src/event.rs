//! The plugin ⇄ agent exchange over the agent's unix stream socket: the plugin writes ONE
//! JSON line ([`CniEvent`]) and reads ONE JSON line ([`CniReply`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default agent socket (agent env `CNI_EVENT_SOCKET`, plugin conf `agent_socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/mesh-cni/agent.sock";

/// Longest accepted line in either direction (a pod event is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Which CNI operation the event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CniCommand {
    /// The pod sandbox's network was set up.
    #[serde(rename = "ADD")]
    Add,
    /// The pod sandbox is being torn down.
    #[serde(rename = "DEL")]
    Del,
}

/// One pod event, as the plugin sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniEvent {
    /// ADD or DEL.
    pub command: CniCommand,
    /// `CNI_CONTAINERID` (the sandbox).
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace (may be empty on DEL).
    #[serde(default)]
    pub netns: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_UID` (may be empty with old runtimes).
    #[serde(default)]
    pub pod_uid: String,
    /// The pod's addresses from prevResult, CIDR notation (`10.0.1.2/24`).
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReply {
    /// Whether the agent accepted (and, for ADD, applied) the event.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CniReply {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        CniReply {
            ok: true,
            error: None,
        }
    }

    /// `{"ok":false,"error":…}`.
    pub fn error(msg: impl Into<String>) -> Self {
        CniReply {
            ok: false,
            error: Some(msg.into()),
        }
    }
}

/// Failure talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Connecting to the socket failed (agent not running?).
    #[error("connecting to the node agent at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the event or reading the reply failed (including the timeout).
    #[error("talking to the node agent at {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply is not a [`CniReply`] line.
    #[error("invalid reply from the node agent at {path}: {reason}")]
    BadReply {
        /// The socket.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Sends `event` to the agent at `socket` and waits (at most `timeout` per read/write) for
/// its reply.
pub fn exchange(
    socket: &Path,
    event: &CniEvent,
    timeout: Duration,
) -> Result<CniReply, ExchangeError> {
    let path = socket.display().to_string();
    let io = |source| ExchangeError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ExchangeError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(event).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let reply = read_line(&mut BufReader::new(&stream)).map_err(io)?;
    serde_json::from_slice(&reply).map_err(|e| ExchangeError::BadReply {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes (without the newline).
pub fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a line",
        ));
    }
    if buf.last() != Some(&b'\n') {
        let why = if buf.len() > MAX_LINE {
            "line too long"
        } else {
            "connection closed mid-line"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    buf.pop();
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_format() {
        let e = CniEvent {
            command: CniCommand::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/p".into(),
            pod_name: "p".into(),
            pod_namespace: "ns".into(),
            pod_uid: "u1".into(),
            ips: vec!["10.0.1.2/24".into()],
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command":"ADD","container_id":"c1","netns":"/var/run/netns/p",
                "pod_name":"p","pod_namespace":"ns","pod_uid":"u1","ips":["10.0.1.2/24"]})
        );
        let back: CniEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            serde_json::to_string(&CniReply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::from_str::<CniReply>(r#"{"ok":false,"error":"no"}"#).unwrap(),
            CniReply::error("no")
        );
    }

    #[test]
    fn read_line_limits() {
        let mut ok = std::io::Cursor::new(b"{}\nrest".to_vec());
        assert_eq!(read_line(&mut ok).unwrap(), b"{}");
        let mut eof = std::io::Cursor::new(Vec::new());
        assert!(read_line(&mut eof).is_err());
        let mut partial = std::io::Cursor::new(b"{\"ok\"".to_vec());
        assert!(read_line(&mut partial).is_err());
        let mut long = std::io::Cursor::new(vec![b'a'; MAX_LINE + 10]);
        let err = read_line(&mut long).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
