//! Demo (root; Linux): two nodes, a meshed client pod and a meshed server pod, one ztunnel per
//! pod, Istio's in-pod redirect rules, and the `istiod-compat` control plane on local files in
//! node1's network namespace. It shows the proxies getting their configuration over delta xDS
//! and their certificates from istiod-compat's CA, a plain TCP request travelling through
//! HBONE, the identity the server's proxy saw, what crossed the node-to-node link, and a DENY
//! AuthorizationPolicy file taking effect.
//!
//! Usage: `demo <ztunnel binary> <istiod-compat binary>` (or `ZTUNNEL_BIN=...`,
//! `ISTIOD_COMPAT_BIN=...`); `scripts/demo.sh` builds everything and runs it. Exits non-zero
//! if any step fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ztunnel::test_helpers::netns::{
    LoggedProc, PATIENCE, Pod, RegistryObjects, Topology, XDS_TLS_PORT, ZtunnelProc,
};

const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
/// The xDS client logs each applied response at debug; the demo shows them.
const PROXY_LOG: &str = "info,ztunnel::xds=debug";

fn binary(arg: Option<OsString>, var: &str, build: &str) -> Result<PathBuf, String> {
    let Some(path) = arg.or_else(|| std::env::var_os(var)).map(PathBuf::from) else {
        return Err(format!(
            "usage: demo <ztunnel binary> <istiod-compat binary>   (or set ZTUNNEL_BIN and \
             ISTIOD_COMPAT_BIN); {var} is missing"
        ));
    };
    if !path.is_file() {
        return Err(format!(
            "{} is not a file; build it with `{build}`",
            path.display()
        ));
    }
    Ok(path)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let bins =
        binary(args.next(), "ZTUNNEL_BIN", "cargo build -p ztunnel --bins").and_then(|ztunnel| {
            let istiod = binary(
                args.next(),
                "ISTIOD_COMPAT_BIN",
                "cargo build -p istiod-compat",
            )?;
            Ok((ztunnel, istiod))
        });
    let (ztunnel, istiod) = match bins {
        Ok(bins) => bins,
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(2);
        }
    };
    match run(&ztunnel, &istiod) {
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

fn run(ztunnel: &Path, istiod_bin: &Path) -> Result<(), String> {
    step("1. Topology");
    let mut topo = Topology::new("demo").with_ztunnel_bin(ztunnel);
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

    step("2. The control plane: istiod-compat on local files");
    let cp = topo.control_plane(istiod_bin, &node1);
    let objects = RegistryObjects::new().ambient_pods(&[&client, &server]);
    cp.write_registry_file("10-topology.yaml", &objects.to_yaml());
    println!(
        "Registry directory {} (Kubernetes YAML, re-read when it changes):\n{}",
        cp.registry_dir().display(),
        indent(&objects.to_yaml())
    );
    let istiod = cp.start();
    println!(
        "istiod-compat runs in node1's namespace (pid {}), serving delta xDS and the Istio CA \
         at {}; its CA directory is {}.",
        istiod.pid(),
        cp.address(),
        cp.ca_dir().display()
    );
    for pod in [&client, &server] {
        let token = cp.token_file(pod);
        println!(
            "  token for {}/{} (service account {}, node {}): {}",
            pod.namespace,
            pod.name,
            pod.service_account,
            pod.node,
            token.display()
        );
    }

    step("3. One ztunnel per pod, configured by the control plane");
    let env = [("RUST_LOG", PROXY_LOG)];
    let server_proxy = topo.start_ztunnel_with_control_plane(&server, &cp, &env);
    let client_proxy = topo.start_ztunnel_with_control_plane(&client, &cp, &env);
    println!(
        "Started one ztunnel per pod, inside the pod's namespace (pid {} in A, pid {} in B), with \
         no local config file and no local CA; both said `proxy ready`.",
        client_proxy.pid(),
        server_proxy.pid()
    );
    for (name, proxy) in [("A", &client_proxy), ("B", &server_proxy)] {
        report_xds(name, proxy)?;
    }
    report_certificates(&istiod, &[&client, &server])?;

    step("4. A plain request from pod A to pod B");
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
    // Pod B's proxy reaches the control plane on node1 over the same link (TLS on 15012).
    let allowed = [HBONE_PORT, XDS_TLS_PORT];
    if let Some(other) = ports
        .iter()
        .find(|&&(s, d)| !allowed.contains(&s) && !allowed.contains(&d))
    {
        return Err(format!(
            "payload on the node link outside ports 15008 (HBONE) and 15012 (control plane): {other:?}"
        ));
    }
    println!(
        "So the request went pod A -> ztunnel A (15001) -> HBONE/mTLS -> ztunnel B (15008) -> app."
    );

    step("5. A DENY AuthorizationPolicy for pod A's identity, as a registry file");
    let deny = RegistryObjects::new().authorization_policy(
        "deny-frontend-client",
        &server.namespace,
        "DENY",
        &[client.principal()],
    );
    println!(
        "New file {}/40-deny-client.yaml:\n{}",
        cp.registry_dir().display(),
        indent(&deny.to_yaml())
    );
    let mark = server_proxy.log_mark();
    let written = Instant::now();
    cp.write_registry_file("40-deny-client.yaml", &deny.to_yaml());
    let applied = server_proxy
        .try_wait_for_line_since(mark, PATIENCE, |line| {
            line.contains("xDS response applied")
                && line.contains("istio.security.Authorization")
                && !line.contains("updated=0 removed=0")
        })
        .ok_or("pod B's proxy did not receive the policy over xDS")?;
    println!(
        "istiod-compat noticed the file and pushed it; pod B's proxy applied it {:?} after the \
         file was written:\n  {applied}",
        written.elapsed(),
        applied = without_timestamp(&applied)
    );
    report_refusal(&client, &server, &server_proxy)
}

/// Prints the proxy's xDS connection and the resources it applied.
fn report_xds(name: &str, proxy: &ZtunnelProc) -> Result<(), String> {
    let established = proxy
        .try_wait_for_log_since(0, "xDS stream established", PATIENCE)
        .ok_or(format!("ztunnel {name} logged no xDS stream"))?;
    let synced = proxy
        .try_wait_for_log_since(0, "xDS initial sync complete", PATIENCE)
        .ok_or(format!("ztunnel {name} logged no initial xDS sync"))?;
    println!("ztunnel {name} got its configuration over delta xDS:");
    println!("  {}", without_timestamp(&established));
    for line in proxy.lines_containing("xDS response applied") {
        println!("  {}", without_timestamp(&line));
    }
    println!("  {}", without_timestamp(&synced));
    Ok(())
}

/// Prints the certificates istiod-compat's CA issued to the pods' proxies.
fn report_certificates(istiod: &LoggedProc, pods: &[&Pod]) -> Result<(), String> {
    println!("Each proxy got its workload certificate from istiod-compat's CA (identities):");
    for pod in pods {
        let identity = format!("spiffe://{}", pod.principal());
        let line = istiod
            .try_wait_for_line_since(0, PATIENCE, |line| {
                line.contains("certificate issued") && line.contains(&identity)
            })
            .ok_or(format!(
                "istiod-compat issued no certificate for {identity}"
            ))?;
        println!("  {}", without_timestamp(&line));
    }
    Ok(())
}

/// A log line without its timestamp.
fn without_timestamp(line: &str) -> &str {
    line.split_once(' ')
        .map_or(line, |(_, rest)| rest.trim_start())
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
