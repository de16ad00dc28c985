//! The ambient capture path end to end (Linux, root): two nodes, each with a `redirect-agent`
//! (eBPF redirection by default, nftables as the fallback) and one shared-mode `ztunnel`;
//! `istiod-compat` on the local-files registry in node1's netns; pods whose processes run in
//! their own cgroup v2 group, enrolled by the `mesh-cni` plugin invoked the way a container
//! runtime invokes it (`CNI_*` variables, chained config with a `prevResult` on stdin).
//!
//! The apps are plain: a `perl` echo server printing the peer address it sees and `bash`
//! clients using `/dev/tcp`. Shown here: enrolled → enrolled across nodes and on one node
//! through the proxies with mTLS (no payload in clear on the node link); un-enrolled pods
//! untouched; enrolling and unenrolling a running pod switches its traffic without
//! restarting it; STRICT refuses plaintext from an un-enrolled pod; the server sees the
//! client's pod IP; no netfilter rule in the host or node netns; an agent restart keeps open
//! connections working. Both redirect modes run the basic cross-node case.
//!
//! Run: `cargo build -p istiod-compat -p redirect-agent -p mesh-cni --bins && cargo test -p
//! ztunnel --test ambient_netns` as root (`cargo test --workspace` builds them by itself).
//! Fails without root. `AMBIENT_TEST_REDIRECT_MODE=nftables` runs the tests that are not
//! about one mode under the nftables fallback instead of eBPF.
#![allow(
    clippy::expect_used,
    reason = "test helpers outside #[test] fns: a failed expectation is the test failure"
)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use ztunnel::test_helpers::netns::{
    Ambient, AmbientBins, AmbientPod, PATIENCE, PcapData, PodEchoServer, PodShell, RedirectMode,
    cgroup_of, eventually, netfilter_rules, require_root,
};

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");
const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
const XDS_TLS_PORT: u16 = 15012;
const NODE1: usize = 0;
const NODE2: usize = 1;
const AMBIENT: Option<&str> = Some("ambient");
/// How long an enrollment change (registry file → agent + control plane → proxies) may take.
const ENROLL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

static NEXT_MARKER: AtomicU32 = AtomicU32::new(0);

/// A payload line nobody else sends: found in a capture only if it crossed in clear.
fn marker(what: &str) -> String {
    let n = NEXT_MARKER.fetch_add(1, Ordering::Relaxed);
    format!("ZTT-CLEAR-{what}-{}-{n}-", std::process::id()).repeat(8)
}

/// The standard cast: `frontend` and `backend` enrolled by namespace label, `legacy` not.
/// client (frontend) and plain (legacy) on node1; server (backend) and plain-server (legacy)
/// on node2; each server runs the echo on 8080.
struct Cast {
    plain_echo: PodEchoServer,
    echo: PodEchoServer,
    client: AmbientPod,
    plain: AmbientPod,
    server: AmbientPod,
    plain_server: AmbientPod,
    mesh: Ambient,
}

/// The redirect mode of the tests that are not about one mode: eBPF, or the fallback with
/// `AMBIENT_TEST_REDIRECT_MODE=nftables` (to run the whole suite under it).
fn default_mode() -> RedirectMode {
    match std::env::var("AMBIENT_TEST_REDIRECT_MODE").as_deref() {
        Ok("nftables") => RedirectMode::Nftables,
        Ok("ebpf") | Err(_) => RedirectMode::Ebpf,
        Ok(other) => panic!("AMBIENT_TEST_REDIRECT_MODE must be ebpf or nftables, not {other}"),
    }
}

fn mesh(name: &str, mode: RedirectMode) -> Ambient {
    require_root();
    Ambient::new(name, AmbientBins::next_to(ZTUNNEL), mode)
}

impl Cast {
    fn new(name: &str, mode: RedirectMode) -> Cast {
        let mut mesh = mesh(name, mode);
        mesh.set_namespace_mode("frontend", AMBIENT);
        mesh.set_namespace_mode("backend", AMBIENT);
        mesh.set_namespace_mode("legacy", None);
        let server = mesh.add_pod(NODE2, "server", "backend", None);
        let plain_server = mesh.add_pod(NODE2, "plain-server", "legacy", None);
        let client = mesh.add_pod(NODE1, "client", "frontend", None);
        let plain = mesh.add_pod(NODE1, "plain", "legacy", None);
        Cast {
            echo: server.start_echo_server(APP_PORT),
            plain_echo: plain_server.start_echo_server(APP_PORT),
            client,
            plain,
            server,
            plain_server,
            mesh,
        }
    }
}

fn spiffe(pod: &AmbientPod) -> String {
    format!("spiffe://{}", pod.pod.principal())
}

/// Whether a ztunnel access-log line names `identity` as the source.
fn has_src_identity(line: &str, identity: &str) -> bool {
    line.contains(&format!("src.identity={identity}"))
        || line.contains(&format!("src.identity=\"{identity}\""))
}

/// Waits for the node's ztunnel to log, after `mark`, a completed inbound connection
/// authenticated as `from` (access logs are written when a connection ends).
fn expect_inbound_mtls(mesh: &Ambient, node: usize, mark: usize, from: &AmbientPod) -> String {
    let identity = spiffe(from);
    mesh.ztunnel(node)
        .try_wait_for_line_since(mark, PATIENCE, |line| {
            line.contains("connection complete") && has_src_identity(line, &identity)
        })
        .unwrap_or_else(|| {
            panic!(
                "the ztunnel of node {} logged no completed connection from {identity} after \
                 the request; its log since then:\n{}",
                node + 1,
                mesh.ztunnel(node).lines_since(mark).join("\n")
            )
        })
}

/// One request from `client` to `dst` with a fresh marker while capturing the node link.
fn request_on_link(mesh: &Ambient, client: &AmbientPod, dst: SocketAddr) -> (String, PcapData) {
    let payload = marker(&client.pod.name);
    let capture = mesh.topology().start_capture(&mesh.node(NODE1).node);
    let result = client.request(dst, &payload);
    let pcap = capture.stop();
    match result {
        Ok(reply) if reply == payload => (payload, pcap),
        Ok(_) => panic!("{} -> {dst}: the echo came back altered", client.pod.name),
        Err(err) => panic!("{err}"),
    }
}

/// The capture carried the request only as TLS to 15008 (plus control-plane TLS on 15012).
fn assert_mtls_on_link(pcap: &PcapData, payload: &str, what: &str) {
    assert_eq!(
        pcap.occurrences(payload.as_bytes()),
        0,
        "{what}: the payload crossed the node link in clear"
    );
    assert!(
        pcap.tls_app_data_segments(HBONE_PORT) > 0,
        "{what}: no TLS application data to or from port {HBONE_PORT} on the node link \
         (payload ports seen: {:?})",
        pcap.payload_ports()
    );
    let allowed = [HBONE_PORT, XDS_TLS_PORT];
    let other: Vec<_> = pcap
        .payload_ports()
        .into_iter()
        .filter(|(s, d)| !allowed.contains(s) && !allowed.contains(d))
        .collect();
    assert!(
        other.is_empty(),
        "{what}: payload on the node link outside 15008 (HBONE) and 15012 (control plane): \
         {other:?}"
    );
}

fn assert_peer_is(echo: &PodEchoServer, mark: usize, client: &AmbientPod) {
    let peer = echo.peer_since(mark);
    assert_eq!(
        peer.ip(),
        IpAddr::from(client.pod.ip),
        "the server app should see the client pod's IP"
    );
}

fn assert_no_rules(text: &str, where_: &str) {
    assert!(
        text.trim().is_empty(),
        "`nft list ruleset` + `iptables-save` in {where_} should show nothing, but:\n{text}"
    );
}

fn cross_node(name: &str, mode: RedirectMode) {
    let host_before = netfilter_rules(None);
    let cast = Cast::new(name, mode);
    let mesh = &cast.mesh;
    let mark = mesh.ztunnel(NODE2).log_mark();
    let peers = cast.echo.mark();
    let (payload, pcap) = request_on_link(mesh, &cast.client, cast.echo.addr());
    assert_mtls_on_link(
        &pcap,
        &payload,
        "enrolled client -> enrolled server on node2",
    );
    assert_peer_is(&cast.echo, peers, &cast.client);
    let line = expect_inbound_mtls(mesh, NODE2, mark, &cast.client);
    eprintln!("node2 ztunnel: {line}");
    // Each pod's processes run in the pod's own cgroup, under the node's.
    let shell = cast.client.shell();
    for (pid, pod) in [
        (shell.pid(), &cast.client),
        (cast.echo.proc().pid(), &cast.server),
    ] {
        assert_eq!(
            cgroup_of(pid),
            pod.cgroup,
            "process {pid} of pod {}",
            pod.pod.name
        );
    }
    assert!(cast.client.cgroup.starts_with(&mesh.node(NODE1).cgroup));
    drop(shell);

    // Nothing in the host netns, nothing in either node netns.
    assert_no_rules(&mesh_rules_diff(&host_before), "the host netns (new rules)");
    for node in [NODE1, NODE2] {
        let n = &mesh.node(node).node;
        assert_no_rules(&netfilter_rules(Some(&n.netns_path())), &n.netns);
    }
    for pod in [&cast.client, &cast.server] {
        let pod_rules = netfilter_rules(Some(&pod.pod.netns_path()));
        match mode {
            RedirectMode::Ebpf => assert_no_rules(&pod_rules, "an enrolled pod (eBPF mode)"),
            RedirectMode::Nftables => assert!(
                pod_rules.contains("15001") && pod_rules.contains("15006"),
                "nftables mode: the enrolled pod's netns should hold the redirect table:\n\
                 {pod_rules}"
            ),
        }
    }
    assert_no_rules(
        &netfilter_rules(Some(&cast.plain.pod.netns_path())),
        "an un-enrolled pod",
    );
}

/// Rules in the host netns now that were not there before (empty: nothing added).
fn mesh_rules_diff(before: &str) -> String {
    let now = netfilter_rules(None);
    now.lines()
        .filter(|line| !before.lines().any(|b| b == *line))
        .filter(|line| !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn ambient_cross_node_mtls_ebpf() {
    cross_node("amb_cross_ebpf", RedirectMode::Ebpf);
}

#[test]
fn ambient_cross_node_mtls_nftables() {
    cross_node("amb_cross_nft", RedirectMode::Nftables);
}

#[test]
fn ambient_same_node_through_the_node_proxy() {
    let mut mesh = mesh("amb_same_node", default_mode());
    mesh.set_namespace_mode("frontend", AMBIENT);
    mesh.set_namespace_mode("backend", AMBIENT);
    let server = mesh.add_pod(NODE1, "local-server", "backend", None);
    let client = mesh.add_pod(NODE1, "client", "frontend", None);
    let echo = server.start_echo_server(APP_PORT);
    let mark = mesh.ztunnel(NODE1).log_mark();
    let peers = echo.mark();
    // The pods' bridge on node1 carries the hop between the two pod netns.
    let node1 = &mesh.node(NODE1).node;
    let capture = mesh
        .topology()
        .start_capture_on(node1, "br0", server.pod.ip);
    let payload = marker("same-node");
    client.expect_echo(echo.addr(), &payload);
    let pcap = capture.stop();
    assert_eq!(
        pcap.occurrences(payload.as_bytes()),
        0,
        "same node: the payload crossed the pods' bridge in clear"
    );
    assert!(
        pcap.tls_app_data_segments(HBONE_PORT) > 0,
        "same node: no TLS to {HBONE_PORT} on the bridge: {:?}",
        pcap.payload_ports()
    );
    assert_peer_is(&echo, peers, &client);
    let line = expect_inbound_mtls(&mesh, NODE1, mark, &client);
    assert!(
        line.contains("inbound") || line.contains(&server.pod.ip.to_string()),
        "the authenticated connection should be the one into the server: {line}"
    );
}

#[test]
fn ambient_unenrolled_pods_are_untouched() {
    let cast = Cast::new("amb_unenrolled", default_mode());
    let mesh = &cast.mesh;
    let marks = [
        mesh.ztunnel(NODE1).log_mark(),
        mesh.ztunnel(NODE2).log_mark(),
    ];
    let peers = cast.plain_echo.mark();
    let (payload, pcap) = request_on_link(mesh, &cast.plain, cast.plain_echo.addr());
    assert!(
        pcap.occurrences(payload.as_bytes()) > 0,
        "a connection between two un-enrolled pods should cross the node link as it is \
         (plain TCP to {APP_PORT})"
    );
    assert!(
        pcap.payload_ports()
            .iter()
            .any(|&(s, d)| s == APP_PORT || d == APP_PORT),
        "the plain connection should go to port {APP_PORT} directly: {:?}",
        pcap.payload_ports()
    );
    assert_eq!(
        pcap.tls_app_data_segments(HBONE_PORT),
        0,
        "no HBONE expected"
    );
    assert_peer_is(&cast.plain_echo, peers, &cast.plain);
    for (node, mark) in [NODE1, NODE2].into_iter().zip(marks) {
        let plain_ips = [cast.plain.pod.ip, cast.plain_server.pod.ip];
        let touched: Vec<String> = mesh
            .ztunnel(node)
            .lines_since(mark)
            .into_iter()
            .filter(|l| plain_ips.iter().any(|ip| l.contains(&format!("{ip}:"))))
            .collect();
        assert!(
            touched.is_empty(),
            "the ztunnel of node {} handled un-enrolled traffic: {touched:?}",
            node + 1
        );
    }
}

/// Probes `pod` → `dst` from the same long-lived shell while capturing the node link:
/// whether the payload crossed in clear.
fn crossed_in_clear(mesh: &Ambient, shell: &mut PodShell, dst: SocketAddr) -> bool {
    let payload = marker("flip");
    let capture = mesh.topology().start_capture(&mesh.node(NODE1).node);
    let reply = shell.new_request(dst, &payload);
    let pcap = capture.stop();
    assert_eq!(
        reply.as_deref(),
        Ok(payload.as_str()),
        "the flipping pod's request must succeed whether enrolled or not"
    );
    pcap.occurrences(payload.as_bytes()) > 0
}

#[test]
fn ambient_enroll_and_unenroll_a_running_pod() {
    let mut cast = Cast::new("amb_flip", default_mode());
    cast.mesh.set_namespace_mode("flip", None);
    let pod = cast.mesh.add_pod(NODE1, "flip", "flip", None);
    let mesh = &cast.mesh;
    let mut shell = pod.shell();
    let pid = shell.pid();
    let dst = cast.echo.addr();

    assert!(
        crossed_in_clear(mesh, &mut shell, dst),
        "before enrollment the pod's traffic should be plain on the node link"
    );

    mesh.set_pod_mode(&pod, AMBIENT);
    let mark = mesh.ztunnel(NODE2).log_mark();
    assert!(
        eventually(ENROLL_PATIENCE, || !crossed_in_clear(mesh, &mut shell, dst)),
        "after labelling the running pod istio.io/dataplane-mode=ambient its traffic never \
         became encrypted on the node link"
    );
    expect_inbound_mtls(mesh, NODE2, mark, &pod);
    assert_eq!(shell.pid(), pid, "the pod's process must not be restarted");

    mesh.set_pod_mode(&pod, None);
    assert!(
        eventually(ENROLL_PATIENCE, || crossed_in_clear(mesh, &mut shell, dst)),
        "after removing the label the pod's traffic never became plain again"
    );
    assert_eq!(shell.pid(), pid, "the pod's process must not be restarted");
}

#[test]
fn ambient_strict_refuses_plaintext_from_unenrolled_pod() {
    let cast = Cast::new("amb_strict", default_mode());
    let mesh = &cast.mesh;
    // Before STRICT: the server proxy takes plaintext from the un-enrolled pod (15006).
    cast.plain
        .expect_echo(cast.echo.addr(), &marker("permissive"));

    let mark = mesh.ztunnel(NODE2).log_mark();
    mesh.control_plane().write_registry_file(
        "50-strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  \
         namespace: backend\nspec:\n  mtls:\n    mode: STRICT\n",
    );
    mesh.ztunnel(NODE2)
        .try_wait_for_line_since(mark, PATIENCE, |line| {
            line.contains("xDS response applied")
                && line.contains("istio.security.Authorization")
                && !line.contains("updated=0 removed=0")
        })
        .unwrap_or_else(|| panic!("node2's ztunnel did not receive the STRICT policy"));
    let refused = cast.plain.request(cast.echo.addr(), &marker("strict"));
    assert!(
        refused.is_err(),
        "STRICT: plaintext from the un-enrolled pod should be refused, got {refused:?}"
    );
    // The enrolled client still gets through (mTLS).
    cast.client
        .expect_echo(cast.echo.addr(), &marker("strict-mtls"));
}

#[test]
fn ambient_agent_restart_keeps_open_connections() {
    let mut cast = Cast::new("amb_agent_restart", default_mode());
    let mut shell = cast.client.shell();
    shell
        .open(cast.echo.addr())
        .expect("opening the kept connection");
    assert_eq!(
        shell.send("before-the-kill").as_deref(),
        Ok("before-the-kill")
    );

    cast.mesh.kill_agent(NODE1);
    cast.mesh.kill_agent(NODE2);
    assert_eq!(
        shell.send("agent-down").as_deref(),
        Ok("agent-down"),
        "the open connection broke when the agents died"
    );
    cast.mesh.start_agent(NODE1);
    cast.mesh.start_agent(NODE2);
    cast.mesh.wait_ztunnel_ready(NODE1);
    cast.mesh.wait_ztunnel_ready(NODE2);
    assert_eq!(
        shell.send("after-the-restart").as_deref(),
        Ok("after-the-restart"),
        "the open connection broke across the agent restart"
    );
    shell.close();

    let mark = cast.mesh.ztunnel(NODE2).log_mark();
    let (payload, pcap) = request_on_link(&cast.mesh, &cast.client, cast.echo.addr());
    assert_mtls_on_link(&pcap, &payload, "a new connection after the agent restart");
    expect_inbound_mtls(&cast.mesh, NODE2, mark, &cast.client);
}

#[test]
fn ambient_cni_add_needs_the_agent_and_del_is_idempotent() {
    let mut mesh = mesh("amb_cni", default_mode());
    mesh.set_namespace_mode("frontend", AMBIENT);
    mesh.set_namespace_mode("backend", AMBIENT);
    let server = mesh.add_pod(NODE2, "server", "backend", None);
    let echo = server.start_echo_server(APP_PORT);

    // A runtime asks a plugin which spec versions it speaks before using it.
    let version = mesh.cni(&server, "VERSION");
    assert!(
        version.success && version.stdout.contains("supportedVersions"),
        "CNI VERSION: {version:?}"
    );
    assert!(version.stdout.contains("1.0.0"), "CNI VERSION: {version:?}");

    // A runtime creating a pod while the node agent is down gets an error: no pod may start
    // uncaptured by mistake.
    mesh.kill_agent(NODE1);
    let (client, refused) = mesh.try_add_pod(NODE1, "client", "frontend", None);
    assert!(
        !refused.success,
        "CNI ADD must fail while the agent is unreachable: {refused:?}"
    );
    let error: serde_json::Value = serde_json::from_str(refused.stdout.trim())
        .unwrap_or_else(|e| panic!("CNI ADD error is not JSON ({e}): {refused:?}"));
    assert!(
        error["code"].as_u64().is_some() && error["msg"].as_str().is_some(),
        "a CNI error result has `code` and `msg`: {error}"
    );

    // The runtime retries once the agent is back: the pod is enrolled and captured.
    mesh.start_agent(NODE1);
    mesh.wait_ztunnel_ready(NODE1);
    let added = mesh.cni(&client, "ADD");
    assert!(
        added.success,
        "CNI ADD after the agent came back: {added:?}"
    );
    let result: serde_json::Value = serde_json::from_str(added.stdout.trim())
        .unwrap_or_else(|e| panic!("CNI ADD result is not JSON ({e}): {added:?}"));
    assert!(
        result.to_string().contains(&client.pod.ip.to_string()),
        "a chained plugin passes prevResult (with the pod IP) through: {result}"
    );
    mesh.wait_ztunnel_ready(NODE1);
    let mark = mesh.ztunnel(NODE2).log_mark();
    client.expect_echo(echo.addr(), &marker("after-retry"));
    expect_inbound_mtls(&mesh, NODE2, mark, &client);

    // DEL: the node proxy drains the pod; repeating it (and with the agent down) succeeds.
    let mark = mesh.ztunnel(NODE1).log_mark();
    mesh.delete_pod(&client);
    mesh.ztunnel(NODE1)
        .wait_for_log_since(mark, "pod deleted", PATIENCE);
    let again = mesh.cni(&client, "DEL");
    assert!(again.success, "a repeated CNI DEL must succeed: {again:?}");
    mesh.kill_agent(NODE1);
    let down = mesh.cni(&client, "DEL");
    assert!(
        down.success,
        "CNI DEL must succeed even with the agent down: {down:?}"
    );
}

#[test]
#[should_panic(expected = "cargo build -p")]
fn harness_ambient_missing_binaries_name_the_build_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    AmbientBins::next_to(dir.path().join("ztunnel"));
}
