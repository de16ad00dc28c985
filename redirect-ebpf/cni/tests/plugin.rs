//! Runs the real `mesh-cni` binary as a container runtime would (CNI env + stdin) against a
//! test listener standing in for the node agent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

use std::io::{BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use mesh_cni::event::{CniCommand, CniEvent, CniReply, read_line};

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.0.1.2/24","interface":0}]}"#;

fn conf(socket: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-cni","agent_socket":"{}","prevResult":{PREV}}}"#,
        socket.display()
    )
}

/// Runs the plugin; returns (exit success, stdout).
fn run_plugin(command: &str, netns: &str, stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "sandbox-1")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=client;K8S_POD_INFRA_CONTAINER_ID=sandbox-1;K8S_POD_UID=uid-1",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

/// Accepts one connection, returns the event it read, answers `reply`.
fn agent_once(listener: UnixListener, reply: CniReply) -> JoinHandle<CniEvent> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let line = read_line(&mut BufReader::new(&stream)).unwrap();
        let event: CniEvent = serde_json::from_slice(&line).unwrap();
        let mut out = serde_json::to_vec(&reply).unwrap();
        out.push(b'\n');
        (&stream).write_all(&out).unwrap();
        event
    })
}

#[test]
fn add_reports_and_passes_prev_result_through() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = agent_once(UnixListener::bind(&socket).unwrap(), CniReply::ok());
    let (ok, stdout) = run_plugin("ADD", "/var/run/netns/x", &conf(&socket));
    assert!(ok, "stdout: {stdout}");
    let event = agent.join().unwrap();
    assert_eq!(
        event,
        CniEvent {
            command: CniCommand::Add,
            container_id: "sandbox-1".into(),
            netns: "/var/run/netns/x".into(),
            pod_name: "client".into(),
            pod_namespace: "demo".into(),
            pod_uid: "uid-1".into(),
            ips: vec!["10.0.1.2/24".into()],
        }
    );
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let prev: serde_json::Value = serde_json::from_str(PREV).unwrap();
    assert_eq!(printed, prev);
}

#[test]
fn add_fails_with_cni_error_when_agent_refuses_or_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = agent_once(
        UnixListener::bind(&socket).unwrap(),
        CniReply::error("not ready"),
    );
    let (ok, stdout) = run_plugin("ADD", "/var/run/netns/x", &conf(&socket));
    agent.join().unwrap();
    assert!(!ok);
    let err: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(err["code"], 11, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(
        err["details"].as_str().unwrap().contains("not ready"),
        "{err}"
    );

    // No agent listening at all: I/O error (code 5), naming the socket.
    let missing = dir.path().join("missing.sock");
    let (ok, stdout) = run_plugin("ADD", "/var/run/netns/x", &conf(&missing));
    assert!(!ok);
    let err: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(err["code"], 5, "{err}");
    assert!(
        err["details"].as_str().unwrap().contains("missing.sock"),
        "{err}"
    );
}

#[test]
fn del_reports_and_always_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = agent_once(
        UnixListener::bind(&socket).unwrap(),
        CniReply::error("whatever"),
    );
    let (ok, stdout) = run_plugin("DEL", "", &conf(&socket));
    assert!(ok);
    assert_eq!(stdout, "");
    let event = agent.join().unwrap();
    assert_eq!(event.command, CniCommand::Del);
    assert_eq!(event.pod_uid, "uid-1");

    // Agent gone: still success.
    let (ok, _) = run_plugin("DEL", "", &conf(&dir.path().join("gone.sock")));
    assert!(ok);
}

#[test]
fn version_and_check() {
    let (ok, stdout) = run_plugin("VERSION", "", r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.0.0".into())
    );

    let (ok, stdout) = run_plugin("CHECK", "/var/run/netns/x", &conf(Path::new("/unused")));
    assert!(ok, "{stdout}");
    let (ok, stdout) = run_plugin("CHECK", "/var/run/netns/x", "{garbage");
    assert!(!ok);
    let err: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(err["code"], 6);
}
