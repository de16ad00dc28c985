//! Demo (root; Linux): the ambient capture path on two nodes. `istiod-compat` runs on local
//! files in node1's network namespace; each node runs a node agent (`redirect-agent`, eBPF
//! redirection unless `REDIRECT_MODE=nftables`) and ONE shared-mode `ztunnel` for all its
//! pods; pods are enrolled by the `mesh-cni` plugin, invoked the way a container runtime
//! invokes it, and their processes run in their own cgroup. The apps know nothing about the
//! mesh: a `perl` echo server and `bash` clients using `/dev/tcp`.
//!
//! It sends plain requests between pods, then prints which connections the node proxies
//! captured and with which identities (from their access logs), what crossed the node link,
//! and that no netfilter rule exists in the host or node namespaces.
//!
//! Usage: `demo <ztunnel binary>`; `istiod-compat`, `redirect-agent` and `mesh-cni` are taken
//! from the same directory (or `ZTUNNEL_BIN=...`). `scripts/demo.sh` builds everything and
//! runs it. Exits non-zero if any step fails.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ztunnel::test_helpers::netns::{
    Ambient, AmbientBins, AmbientPod, PodEchoServer, RedirectMode, netfilter_rules,
};

const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
const NODE1: usize = 0;
const NODE2: usize = 1;

fn binaries() -> Result<AmbientBins, String> {
    let Some(ztunnel) = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("ZTUNNEL_BIN"))
        .map(PathBuf::from)
    else {
        return Err(
            "usage: demo <ztunnel binary>   (or set ZTUNNEL_BIN); the other binaries \
                    are taken from the same directory"
                .to_owned(),
        );
    };
    let sibling = |name: &str| -> Result<PathBuf, String> {
        let path = ztunnel.with_file_name(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{} is not a file; build it with `cargo build -p ztunnel -p istiod-compat -p \
                 redirect-agent -p mesh-cni --bins`",
                path.display()
            ))
        }
    };
    Ok(AmbientBins {
        istiod_compat: sibling("istiod-compat")?,
        agent: sibling("redirect-agent")?,
        cni: sibling("mesh-cni")?,
        ztunnel: sibling("ztunnel")?,
    })
}

fn main() -> ExitCode {
    let bins = match binaries() {
        Ok(bins) => bins,
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(2);
        }
    };
    let mode = match std::env::var("REDIRECT_MODE").as_deref() {
        Ok("nftables") => RedirectMode::Nftables,
        Ok("ebpf") | Err(_) => RedirectMode::Ebpf,
        Ok(other) => {
            eprintln!("demo: REDIRECT_MODE must be ebpf or nftables, not {other}");
            return ExitCode::from(2);
        }
    };
    // The harness reports failures by panicking (with the logs of the processes involved).
    match catch_unwind(AssertUnwindSafe(|| run(bins, mode))) {
        Ok(Ok(())) => {
            println!("\nDemo finished: every step behaved as expected.");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("\nDemo FAILED: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\nDemo FAILED (see the message above)");
            ExitCode::FAILURE
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn describe(pod: &AmbientPod, enrolled: bool) -> String {
    format!(
        "{}/{} (service account {}) on {}, IP {}, cgroup {}{}",
        pod.pod.namespace,
        pod.pod.name,
        pod.pod.service_account,
        pod.pod.node,
        pod.pod.ip,
        pod.cgroup.display(),
        if enrolled { "" } else { " (NOT enrolled)" }
    )
}

/// One request and what the node link and the proxies saw of it.
struct Observed {
    clear_on_link: bool,
    tls_on_link: usize,
    peer: SocketAddr,
}

fn send(
    mesh: &Ambient,
    from: &AmbientPod,
    to: &PodEchoServer,
    what: &str,
) -> Result<Observed, String> {
    let payload = format!("DEMO-{what}-{}-", std::process::id()).repeat(8);
    let mark = to.mark();
    let capture = mesh.topology().start_capture(&mesh.node(NODE1).node);
    let reply = from.request(to.addr(), &payload);
    let pcap = capture.stop();
    match reply {
        Ok(reply) if reply == payload => {}
        Ok(_) => return Err(format!("{what}: the echo came back altered")),
        Err(err) => return Err(format!("{what}: {err}")),
    }
    Ok(Observed {
        clear_on_link: pcap.occurrences(payload.as_bytes()) > 0,
        tls_on_link: pcap.tls_app_data_segments(HBONE_PORT),
        peer: to.peer_since(mark),
    })
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next()?
    } else {
        rest.split_whitespace().next()?
    };
    Some(value)
}

/// Prints every connection the node proxies logged (access logs), with identities.
fn print_captured(mesh: &Ambient, marks: [usize; 2]) -> usize {
    let mut count = 0;
    for (node, mark) in [NODE1, NODE2].into_iter().zip(marks) {
        for line in mesh.ztunnel(node).lines_since(mark) {
            if !line.contains("connection complete") {
                continue;
            }
            count += 1;
            let get = |name| field(&line, name).unwrap_or("-");
            println!(
                "  node{} ztunnel, {:8} {} -> {}  src.identity={}  dst.identity={}  \
                 (src.workload={}, dst.workload={})",
                node + 1,
                get("direction"),
                get("src.addr"),
                get("dst.addr"),
                get("src.identity"),
                get("dst.identity"),
                get("src.workload"),
                get("dst.workload"),
            );
        }
    }
    count
}

fn run(bins: AmbientBins, mode: RedirectMode) -> Result<(), String> {
    step("1. Two nodes: istiod-compat on local files, a node agent and a shared ztunnel each");
    let host_rules_before = netfilter_rules(None);
    let mut mesh = Ambient::new("demo", bins, mode);
    println!(
        "istiod-compat (pid {}) serves xDS and the CA at https://{}:15012 from {}.",
        mesh.istiod().pid(),
        mesh.node(NODE1).node.gateway,
        mesh.control_plane().registry_dir().display()
    );
    for node in [NODE1, NODE2] {
        let n = mesh.node(node);
        println!(
            "{}: redirect-agent pid {} (REDIRECT_MODE={}, cgroup {}, pins {}), shared-mode \
             ztunnel pid {} (ZDS {}); both ready.",
            n.node.name,
            mesh.agent(node).pid(),
            mode.as_env(),
            n.cgroup.display(),
            n.pin_dir.display(),
            mesh.ztunnel(node).pid(),
            n.zds_socket.display()
        );
    }

    step("2. Pods, enrolled by the CNI plugin (namespaces frontend and backend are ambient)");
    mesh.set_namespace_mode("frontend", Some("ambient"));
    mesh.set_namespace_mode("backend", Some("ambient"));
    mesh.set_namespace_mode("legacy", None);
    let server = mesh.add_pod(NODE2, "server", "backend", None);
    let client = mesh.add_pod(NODE1, "client", "frontend", None);
    let legacy = mesh.add_pod(NODE1, "legacy", "legacy", None);
    for (pod, enrolled) in [(&client, true), (&server, true), (&legacy, false)] {
        println!("  {}", describe(pod, enrolled));
    }
    println!(
        "Each got `mesh-cni` ADD (CNI_COMMAND=ADD, CNI_NETNS, CNI_ARGS with the pod name, \
         chained config on stdin); the agent enrolled the ambient ones and handed their \
         network namespaces to the node's ztunnel over ZDS."
    );
    for line in mesh.agent(NODE1).lines_containing("client") {
        println!("  node1 agent: {line}");
    }
    let echo = server.start_echo_server(APP_PORT);
    println!("Pod server runs a plain TCP echo server (perl) on port {APP_PORT}.");

    step("3. Plain requests");
    let marks = [
        mesh.ztunnel(NODE1).log_mark(),
        mesh.ztunnel(NODE2).log_mark(),
    ];
    let meshed = send(&mesh, &client, &echo, "meshed")?;
    println!(
        "client -> server:{APP_PORT}: echoed; the server app saw {} (the client's pod IP); \
         on the node link: {} TLS records on 15008, payload in clear: {}",
        meshed.peer, meshed.tls_on_link, meshed.clear_on_link
    );
    if meshed.clear_on_link || meshed.tls_on_link == 0 {
        return Err("the enrolled pods' request was not carried over HBONE/mTLS".to_owned());
    }
    if meshed.peer.ip() != std::net::IpAddr::from(client.pod.ip) {
        return Err(format!(
            "the server saw {}, not the client's pod IP",
            meshed.peer
        ));
    }
    let plain = send(&mesh, &legacy, &echo, "legacy")?;
    println!(
        "legacy -> server:{APP_PORT} (legacy is not enrolled): echoed; the server saw {}; \
         payload in clear on the node link: {} (plaintext into the server's proxy)",
        plain.peer, plain.clear_on_link
    );

    step("4. What the node proxies captured, and with which identities (access logs)");
    println!(
        "(each line is one connection a node proxy handled; src.identity is the mTLS peer, `-` \
         for plaintext from an un-enrolled pod)"
    );
    let captured = print_captured(&mesh, marks);
    if captured == 0 {
        return Err("the node proxies logged no connection".to_owned());
    }
    let identity = format!("spiffe://{}", client.pod.principal());
    if !mesh
        .ztunnel(NODE2)
        .lines_containing("connection complete")
        .iter()
        .any(|l| l.contains(&identity))
    {
        return Err(format!("node2's ztunnel did not authenticate {identity}"));
    }

    step("5. STRICT mTLS for backend: plaintext from the un-enrolled pod is refused");
    let mark = mesh.ztunnel(NODE2).log_mark();
    mesh.control_plane().write_registry_file(
        "50-strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  \
         namespace: backend\nspec:\n  mtls:\n    mode: STRICT\n",
    );
    mesh.ztunnel(NODE2)
        .try_wait_for_line_since(mark, ztunnel::test_helpers::netns::PATIENCE, |l| {
            l.contains("xDS response applied") && l.contains("istio.security.Authorization")
        })
        .ok_or("node2's ztunnel did not receive the STRICT policy")?;
    match legacy.request(echo.addr(), "may-I") {
        Ok(_) => return Err("plaintext from legacy still got through under STRICT".to_owned()),
        Err(err) => println!("legacy -> server refused: {err}"),
    }
    send(&mesh, &client, &echo, "strict-mtls")?;
    println!("client -> server still works (mTLS).");

    step("6. No netfilter rules in the host or node namespaces");
    let host_now = netfilter_rules(None);
    println!(
        "host netns: {}",
        if host_now == host_rules_before {
            "unchanged"
        } else {
            "CHANGED"
        }
    );
    if host_now != host_rules_before {
        return Err(format!("the host's netfilter rules changed:\n{host_now}"));
    }
    for node in [NODE1, NODE2] {
        let n = &mesh.node(node).node;
        let rules = netfilter_rules(Some(&n.netns_path()));
        println!(
            "{} netns: {}",
            n.name,
            if rules.trim().is_empty() {
                "empty"
            } else {
                "NOT empty"
            }
        );
        if !rules.trim().is_empty() {
            return Err(format!("{} has netfilter rules:\n{rules}", n.name));
        }
    }
    cleanup_note(Path::new(&mesh.node(NODE1).pin_dir));
    Ok(())
}

fn cleanup_note(pins: &Path) {
    println!(
        "\nEverything (namespaces, cgroups, pins such as {}) is removed when the demo exits.",
        pins.display()
    );
}
