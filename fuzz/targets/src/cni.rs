//! The node agent's trust boundaries on the node: the CNI plugin's input from the container
//! runtime (stdin network configuration and `CNI_ARGS`), the agent's CNI event socket, and
//! the datagrams ztunnel sends back over ZDS.

use mesh_cni::conf::{CniEnv, Command, PodArgs, parse_cni_args, parse_conf, prev_result_ips};
use mesh_cni::event::{CniReply, MAX_LINE};
use redirect_agent::cni_server::parse_request;
use redirect_agent::zds::{decode_ack, decode_hello, encode_ack};

/// `mesh-cni`'s parse of what the runtime hands it. Input: the first line is `CNI_ARGS`
/// (UTF-8 only: the plugin reads it with `std::env::var`, which drops anything else), the
/// rest is the network configuration on stdin.
///
/// Runs `parse_cni_args`, `parse_conf`, `prev_result_ips`, and `plugin::run` for CHECK and
/// for an ADD of a non-Kubernetes container (which passes `prevResult` through without
/// contacting the agent: a fuzzer-chosen `agent_socket` is never connected to).
///
/// Invariants: parsed pod facts are non-empty and free of `;`, and re-render to `CNI_ARGS`
/// that parses to the same facts; a parsed configuration has a `cniVersion`; a successful
/// ADD prints exactly `prevResult` with `cniVersion` set; every error renders as CNI JSON.
pub fn cni_conf(data: &[u8]) {
    let (args, stdin) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(args) = std::str::from_utf8(args) {
        check_cni_args(args);
    }
    let conf = match parse_conf(stdin) {
        Ok(conf) => conf,
        Err(e) => {
            let _ = e.to_json("1.0.0").to_string();
            return;
        }
    };
    assert!(!conf.cni_version.is_empty());
    if let Some(prev) = &conf.prev_result
        && let Err(e) = prev_result_ips(prev)
    {
        let _ = e.to_json(&conf.cni_version).to_string();
    }
    let env = |command| CniEnv {
        command,
        container_id: "c1".into(),
        netns: "/var/run/netns/fuzz".into(),
        ifname: "eth0".into(),
        pod: PodArgs::default(),
    };
    match mesh_cni::plugin::run(&env(Command::Check), stdin) {
        Ok(out) => assert!(out.is_none(), "CHECK prints nothing"),
        Err(e) => {
            let _ = e.to_json(&conf.cni_version).to_string();
        }
    }
    match mesh_cni::plugin::run(&env(Command::Add), stdin) {
        Ok(Some(out)) => {
            let Some(prev) = conf.prev_result.as_ref() else {
                panic!("ADD succeeded without prevResult: {out}");
            };
            let mut want = prev.clone();
            if let Some(obj) = want.as_object_mut() {
                obj.insert("cniVersion".into(), conf.cni_version.clone().into());
            }
            assert_eq!(out, want, "ADD must pass prevResult through");
        }
        Ok(None) => panic!("ADD printed nothing"),
        Err(e) => {
            let _ = e.to_json(&conf.cni_version).to_string();
        }
    }
}

fn check_cni_args(args: &str) {
    let Ok(pod) = parse_cni_args(args) else {
        return;
    };
    let fields = [
        ("K8S_POD_NAME", &pod.name),
        ("K8S_POD_NAMESPACE", &pod.namespace),
        ("K8S_POD_UID", &pod.uid),
        ("K8S_POD_INFRA_CONTAINER_ID", &pod.infra_container_id),
    ];
    let mut rendered = Vec::new();
    for (key, value) in fields {
        if let Some(v) = value {
            assert!(!v.is_empty() && !v.contains(';'), "{key}={v:?}");
            rendered.push(format!("{key}={v}"));
        }
    }
    let rendered = rendered.join(";");
    match parse_cni_args(&rendered) {
        Ok(again) => assert_eq!(again, pod, "{args:?} re-rendered as {rendered:?}"),
        Err(error) => panic!("{args:?} re-rendered as {rendered:?} does not parse: {error}"),
    }
}

/// The agent's parse of one request from its CNI event socket (`cni_server::parse_request`),
/// on what the server reads: up to and including the first newline, at most
/// `MAX_LINE + 1` bytes.
///
/// Invariants: a refusal is `{"ok":false}` with a reason; an accepted event serializes (as
/// the plugin sends it) to a line that parses back to the same event.
pub fn cni_event(data: &[u8]) {
    let mut read = &data[..data.len().min(MAX_LINE + 1)];
    if let Some(i) = read.iter().position(|b| *b == b'\n') {
        read = &read[..=i];
    }
    match parse_request(read) {
        Err(reply) => {
            assert!(!reply.ok && reply.error.as_deref().is_some_and(|e| !e.is_empty()));
            let line = match serde_json::to_vec(&reply) {
                Ok(line) => line,
                Err(error) => panic!("{reply:?} does not serialize: {error}"),
            };
            match serde_json::from_slice::<CniReply>(&line) {
                Ok(back) => assert_eq!(back, reply),
                Err(error) => panic!("{reply:?} does not parse back: {error}"),
            }
        }
        Ok(event) => {
            let mut line = match serde_json::to_vec(&event) {
                Ok(line) => line,
                Err(error) => panic!("{event:?} does not serialize: {error}"),
            };
            assert!(!line.contains(&b'\n'), "one line");
            line.push(b'\n');
            match parse_request(&line) {
                Ok(back) => assert_eq!(back, event),
                Err(reply) => panic!("{event:?} serialized does not parse back: {reply:?}"),
            }
        }
    }
}

/// The agent's decode of a datagram from ztunnel (`zds::decode_hello` for the first one,
/// `zds::decode_ack` for every answer after).
///
/// Invariants: a nack carries its (non-empty) reason, and re-encoding an ack or a nack with
/// `encode_ack` decodes to the same answer.
pub fn zds_agent_response(data: &[u8]) {
    let _ = decode_hello(data);
    match decode_ack(data) {
        Ok(Ok(())) => assert_eq!(decode_ack(&encode_ack("")), Ok(Ok(()))),
        Ok(Err(nack)) => {
            assert!(!nack.is_empty(), "a nack has a reason");
            assert_eq!(decode_ack(&encode_ack(&nack)), Ok(Err(nack)));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}
