//! Demo (root; Linux): two nodes, a meshed client pod and a meshed server pod, one ztunnel per
//! pod, Istio's in-pod redirect rules. It shows a plain TCP request travelling through HBONE,
//! the identity the server's proxy saw, what crossed the node-to-node link, and a DENY policy
//! taking effect.
//!
//! Usage: `demo <path to the ztunnel binary>` (or `ZTUNNEL_BIN=...`); `scripts/demo.sh`
//! builds both and runs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use ztunnel::test_helpers::netns::{
    LocalConfig, PATIENCE, Pod, Protocol, Topology, ZtunnelProc, policy,
};

const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;

fn main() -> ExitCode {
    let bin = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("ZTUNNEL_BIN"))
        .map(PathBuf::from);
    let Some(bin) = bin else {
        eprintln!("usage: demo <path to the ztunnel binary>   (or set ZTUNNEL_BIN)");
        return ExitCode::from(2);
    };
    if !bin.is_file() {
        eprintln!(
            "demo: {} is not a file; build it with `cargo build -p ztunnel --bins`",
            bin.display()
        );
        return ExitCode::from(2);
    }
    match run(&bin) {
        Ok(()) => {
            println!("\nDemo finished: every step behaved as expected.");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("\nDemo FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn describe(pod: &Pod) -> String {
    format!(
        "pod {}/{} (service account {}) on {}, IP {}",
        pod.namespace, pod.name, pod.service_account, pod.node, pod.ip
    )
}

/// The value of `src.identity=` in a tracing line (quotes removed).
fn identity_in(line: &str) -> Option<String> {
    let rest = line.split("src.identity=").nth(1)?;
    let value = rest.split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

fn run(bin: &Path) -> Result<(), String> {
    step("1. Topology");
    let mut topo = Topology::new("demo").with_ztunnel_bin(bin);
    let node1 = topo.add_node("node1");
    let node2 = topo.add_node("node2");
    let client = topo.add_pod_as(&node1, "client", "frontend", "client");
    let server = topo.add_pod_as(&node2, "server", "backend", "server");
    println!(
        "Two nodes in their own network namespaces, joined by one link ({} <-> {}):",
        node1.link_ip, node2.link_ip
    );
    println!("  pod A: {}", describe(&client));
    println!("  pod B: {}", describe(&server));
    let echo = server.start_echo_server(APP_PORT);
    println!("Pod B runs a TCP echo server on port {APP_PORT} that knows nothing about the mesh.");
    topo.apply_inpod_redirect(&client);
    topo.apply_inpod_redirect(&server);
    println!(
        "Both pods got Istio's in-pod rules (scripts/ztunnel-redirect-inpod.sh): outbound TCP \
         -> 15001, inbound TCP -> 15006, port 15008 and the proxy's own (marked) traffic untouched."
    );
    let config = LocalConfig::new()
        .workload(&client, Protocol::Hbone)
        .workload(&server, Protocol::Hbone);
    topo.write_local_config(&config);
    let server_proxy = topo.start_ztunnel(&server, &[]);
    let client_proxy = topo.start_ztunnel(&client, &[]);
    println!(
        "Started one ztunnel per pod, inside the pod's namespace (pid {} in A, pid {} in B); both \
         said `proxy ready`.",
        client_proxy.pid(),
        server_proxy.pid()
    );

    step("2. A plain request from pod A to pod B");
    let capture = topo.start_capture(&node1);
    let marker = format!("DEMO-SECRET-{}-", std::process::id());
    let payload = marker.repeat(32);
    let mark = server_proxy.log_mark();
    client
        .echo(server.addr(APP_PORT), payload.as_bytes(), PATIENCE)
        .map_err(|e| {
            format!(
                "the echo from pod A to {} failed: {e}",
                server.addr(APP_PORT)
            )
        })?;
    let peer = echo
        .next_peer(PATIENCE)
        .ok_or("the echo server in pod B saw no connection")?;
    println!(
        "Pod A connected plainly to {}:{APP_PORT} and sent {} bytes; they came back unchanged.",
        server.ip,
        payload.len()
    );
    println!("The app in pod B saw the connection coming from {peer} (pod A's own IP).");
    if peer.ip() != std::net::IpAddr::from(client.ip) {
        return Err(format!(
            "pod B's app saw {peer}, not pod A's IP {}",
            client.ip
        ));
    }

    let line = server_proxy
        .try_wait_for_log_since(mark, "src.identity=", PATIENCE)
        .ok_or("pod B's proxy logged no `src.identity=` line for the connection")?;
    let identity = identity_in(&line).ok_or("could not read src.identity= from the log line")?;
    println!("Pod B's proxy authenticated the caller over mTLS as: {identity}");
    println!("  (log line: {line})");
    if !identity.contains(&client.principal()) {
        return Err(format!("expected an identity for {}", client.principal()));
    }

    let pcap = capture.stop();
    let hits = pcap.occurrences(marker.as_bytes());
    let tls_bytes = pcap.payload_bytes_on_port(HBONE_PORT);
    let tls_records = pcap.tls_app_data_segments(HBONE_PORT);
    let ports = pcap.payload_ports();
    println!(
        "The capture on the node-to-node link saw {tls_bytes} bytes of TLS on port {HBONE_PORT} \
         ({tls_records} segments with application-data records) and {hits} plaintext marker hits."
    );
    if hits > 0 {
        return Err("the payload crossed the node link in clear text".to_owned());
    }
    if tls_records == 0 {
        return Err("no TLS application data on port 15008: the request did not use HBONE".into());
    }
    if let Some(other) = ports
        .iter()
        .find(|&&(s, d)| s != HBONE_PORT && d != HBONE_PORT)
    {
        return Err(format!(
            "payload on the node link outside port 15008: {other:?}"
        ));
    }
    println!(
        "So the request went pod A -> ztunnel A (15001) -> HBONE/mTLS -> ztunnel B (15008) -> app."
    );

    step("3. A DENY policy for pod A's identity");
    let deny = policy(
        "deny-frontend-client",
        "backend",
        "Namespace",
        "Deny",
        json!([[[{ "principals": [{ "Exact": client.principal() }] }]]]),
    );
    let config = config.policy(deny);
    println!("New local config:\n{}", indent(&config.to_yaml()));
    topo.apply_local_config(&config, &[&server_proxy, &client_proxy]);
    println!("Both proxies logged `local config applied`.");
    report_refusal(&client, &server, &server_proxy)
}

fn report_refusal(client: &Pod, server: &Pod, server_proxy: &ZtunnelProc) -> Result<(), String> {
    let mark = server_proxy.log_mark();
    match client.echo(server.addr(APP_PORT), b"may I?", Duration::from_secs(5)) {
        Ok(()) => Err("the request still succeeded after the DENY policy".to_owned()),
        Err(err) => {
            println!("The same request from pod A is now refused (the client saw: {err}).");
            let lines = server_proxy.lines_since(mark);
            let denial = lines
                .iter()
                .find(|l| l.to_ascii_lowercase().contains("den"));
            if let Some(line) = denial {
                println!("  (pod B's proxy: {line})");
            }
            Ok(())
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
