//! Namespaced end-to-end tests (Linux, root). Each test builds its own topology with
//! `ztunnel::test_helpers::netns`: two node namespaces joined by one veth link, pods in their
//! own namespaces, Istio's in-pod redirect rules in captured pods and one dedicated-mode
//! `ztunnel` per captured pod. Tests run in parallel; everything is removed on drop.
//!
//! `harness_*` tests check the harness itself and need no proxy. The others need the real
//! `ztunnel` binary. Without root every test fails loudly (never skips).
//!
//! Run: `cargo test -p ztunnel --test namespaced` (as root).
#![allow(
    clippy::expect_used,
    reason = "test helpers outside #[test] fns: a failed expectation is the test failure"
)]

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use socket2::{Domain, Protocol as SockProtocol, SockAddr, SockRef, Socket, Type};
use ztunnel::test_helpers::netns::{
    EchoServer, LocalConfig, Node, PATIENCE, Pod, Protocol, TcpSegment, Topology, ZtunnelProc,
    echo_roundtrip, eventually, policy, wait_closed,
};

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");
const APP_PORT: u16 = 8080;
const OTHER_APP_PORT: u16 = 9090;
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PLAINTEXT_PORT: u16 = 15006;
const HBONE_PORT: u16 = 15008;
const PROXY_MARK: u32 = 0x539;
/// How long a refused connection may take to be closed by the proxies.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(5);
const STRICT_POLICY: &str = "converted_peer_authentication_strict";

/// Two nodes; a meshed client (`frontend/client`) and an uncaptured pod (`legacy/plain`) on
/// node1, a meshed server (`backend/server`, echo on 8080) on node2; proxies for client and
/// server. Fields drop in order: processes and sockets before the topology.
struct Mesh {
    client_proxy: ZtunnelProc,
    server_proxy: ZtunnelProc,
    echo: EchoServer,
    client: Pod,
    plain: Pod,
    server: Pod,
    node1: Node,
    topo: Topology,
}

impl Mesh {
    fn new(name: &str) -> Mesh {
        let mut topo = Topology::new(name).with_ztunnel_bin(ZTUNNEL);
        let node1 = topo.add_node("node1");
        let node2 = topo.add_node("node2");
        let client = topo.add_pod_as(&node1, "client", "frontend", "client");
        let plain = topo.add_pod_as(&node1, "plain", "legacy", "plain");
        let server = topo.add_pod_as(&node2, "server", "backend", "server");
        let echo = server.start_echo_server(APP_PORT);
        topo.apply_inpod_redirect(&client);
        topo.apply_inpod_redirect(&server);
        topo.write_local_config(&config(&client, &plain, &server, &[], &[]));
        let server_proxy = topo.start_ztunnel(&server, &[]);
        let client_proxy = topo.start_ztunnel(&client, &[]);
        Mesh {
            client_proxy,
            server_proxy,
            echo,
            client,
            plain,
            server,
            node1,
            topo,
        }
    }

    /// Replaces the policies (the server selects `server_policy_keys`) and waits until both
    /// proxies applied the new config.
    fn set_policies(&self, policies: &[Value], server_policy_keys: &[&str]) {
        let cfg = config(
            &self.client,
            &self.plain,
            &self.server,
            policies,
            server_policy_keys,
        );
        self.topo
            .apply_local_config(&cfg, &[&self.server_proxy, &self.client_proxy]);
    }

    fn assert_allowed(&self, from: &Pod, port: u16, why: &str) {
        let dst = self.server.addr(port);
        if let Err(err) = from.echo(dst, b"policy probe", PATIENCE) {
            panic!(
                "{} -> {dst} should be allowed ({why}), but: {err}",
                from.name
            );
        }
    }

    fn assert_refused(&self, from: &Pod, port: u16, why: &str) {
        let dst = self.server.addr(port);
        if from.echo(dst, b"policy probe", REFUSAL_PATIENCE).is_ok() {
            panic!(
                "{} -> {dst} should be refused ({why}), but the echo came back",
                from.name
            );
        }
    }
}

fn config(
    client: &Pod,
    plain: &Pod,
    server: &Pod,
    policies: &[Value],
    server_policy_keys: &[&str],
) -> LocalConfig {
    let cfg = LocalConfig::new()
        .workload(client, Protocol::Hbone)
        .workload(plain, Protocol::Tcp)
        .workload_with_policies(server, Protocol::Hbone, server_policy_keys);
    policies.iter().cloned().fold(cfg, LocalConfig::policy)
}

fn backend_policy(name: &str, action: &str, matches: Value) -> Value {
    policy(name, "backend", "Namespace", action, json!([[[matches]]]))
}

fn strict_policy() -> Value {
    let rules = json!([[[{ "notPrincipals": [{ "Presence": [] }] }]]]);
    policy(STRICT_POLICY, "backend", "WorkloadSelector", "Deny", rules)
}

fn strict_key() -> String {
    format!("backend/{STRICT_POLICY}")
}

// ---------------------------------------------------------------------------------------
// Data-path scenarios (need the real ztunnel binary).
// ---------------------------------------------------------------------------------------

#[test]
fn meshed_client_reaches_server_across_nodes() {
    let mesh = Mesh::new("meshed_client_reaches_server");
    let dst = mesh.server.addr(APP_PORT);
    let mut stream = mesh
        .client
        .connect(dst, PATIENCE)
        .unwrap_or_else(|e| panic!("client could not connect to {dst} (captured to 15001): {e}"));
    for round in 0..3 {
        let payload = format!("hello server, round {round}");
        echo_roundtrip(&mut stream, payload.as_bytes(), PATIENCE)
            .unwrap_or_else(|e| panic!("echo round {round} through the two proxies failed: {e}"));
    }
    let big: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    echo_roundtrip(&mut stream, &big, PATIENCE)
        .unwrap_or_else(|e| panic!("512 KiB echo through the two proxies failed: {e}"));

    let peer = mesh
        .echo
        .next_peer(PATIENCE)
        .expect("the server app accepted no connection");
    assert_eq!(
        peer.ip(),
        IpAddr::from(mesh.client.ip),
        "the server app saw peer {peer}; expected the client pod's IP (inbound must connect \
         from the original source with IP_TRANSPARENT)"
    );
    assert!(
        mesh.echo.drain_peers().is_empty(),
        "one client connection must reach the app as exactly one connection"
    );

    // Half-close travels through the tunnel: the echo server sees EOF and closes its side.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-closing the client stream");
    assert!(
        wait_closed(&mut stream, PATIENCE),
        "after the client's FIN the server's close did not come back through the proxies"
    );
}

#[test]
fn node_link_carries_only_tls_to_15008() {
    let mesh = Mesh::new("node_link_only_tls");
    let capture = mesh.topo.start_capture(&mesh.node1);
    let marker = format!("ZTT-PLAINTEXT-MARKER-{}-", std::process::id());
    let payload = marker.repeat(64);
    mesh.client
        .echo(mesh.server.addr(APP_PORT), payload.as_bytes(), PATIENCE)
        .unwrap_or_else(|e| panic!("echo through the proxies failed: {e}"));
    let pcap = capture.stop();

    assert_eq!(
        pcap.occurrences(marker.as_bytes()),
        0,
        "the marker crossed the node link in clear text"
    );
    let ports = pcap.payload_ports();
    assert!(
        ports
            .iter()
            .all(|&(src, dst)| src == HBONE_PORT || dst == HBONE_PORT),
        "TCP payload on the node link outside port {HBONE_PORT}: {ports:?}"
    );
    let to_hbone = pcap.segments().iter().any(|s| {
        *s.src.ip() == mesh.client.ip && *s.dst.ip() == mesh.server.ip && s.dst.port() == HBONE_PORT
    });
    assert!(
        to_hbone,
        "no segment from the client pod to the server pod's port 15008"
    );
    let app_data = |from_server: bool| {
        let tls = |s: &&TcpSegment| s.payload.windows(3).any(|w| w == [0x17, 0x03, 0x03]);
        let segments = pcap.segments().iter().filter(|s| {
            let (from, to) = if from_server {
                (s.src, s.dst)
            } else {
                (s.dst, s.src)
            };
            *from.ip() == mesh.server.ip && from.port() == HBONE_PORT && *to.ip() == mesh.client.ip
        });
        segments.filter(tls).count()
    };
    assert!(
        app_data(false) > 0 && app_data(true) > 0,
        "expected TLS application-data records (17 03 03) both ways on 15008: {} to the \
         server, {} back ({} payload bytes on 15008 in all)",
        app_data(false),
        app_data(true),
        pcap.payload_bytes_on_port(HBONE_PORT)
    );
}

#[test]
fn policy_by_principal_allow_and_deny() {
    let mesh = Mesh::new("policy_by_principal");
    mesh.assert_allowed(&mesh.client, APP_PORT, "no policies");

    let other = json!({ "principals": [{ "Exact": "cluster.local/ns/frontend/sa/someone-else" }] });
    mesh.set_policies(&[backend_policy("allow-other", "Allow", other)], &[]);
    mesh.assert_refused(&mesh.client, APP_PORT, "ALLOW only for another principal");

    let client = json!({ "principals": [{ "Exact": mesh.client.principal() }] });
    mesh.set_policies(
        &[backend_policy("allow-client", "Allow", client.clone())],
        &[],
    );
    mesh.assert_allowed(&mesh.client, APP_PORT, "ALLOW for the client's principal");
    mesh.assert_refused(
        &mesh.plain,
        APP_PORT,
        "ALLOW exists and a plaintext peer has no identity",
    );

    mesh.set_policies(&[backend_policy("deny-client", "Deny", client)], &[]);
    mesh.assert_refused(&mesh.client, APP_PORT, "DENY for the client's principal");
    mesh.assert_allowed(
        &mesh.plain,
        APP_PORT,
        "DENY by principal cannot match no identity",
    );
}

#[test]
fn policy_by_namespace_allow_and_deny() {
    let mesh = Mesh::new("policy_by_namespace");
    let frontend = json!({ "namespaces": [{ "Exact": "frontend" }] });
    mesh.set_policies(
        &[backend_policy("allow-frontend", "Allow", frontend.clone())],
        &[],
    );
    mesh.assert_allowed(&mesh.client, APP_PORT, "ALLOW for the client's namespace");

    let elsewhere = json!({ "namespaces": [{ "Exact": "elsewhere" }] });
    mesh.set_policies(
        &[backend_policy("allow-elsewhere", "Allow", elsewhere)],
        &[],
    );
    mesh.assert_refused(&mesh.client, APP_PORT, "ALLOW only for another namespace");

    mesh.set_policies(&[backend_policy("deny-frontend", "Deny", frontend)], &[]);
    mesh.assert_refused(&mesh.client, APP_PORT, "DENY for the client's namespace");

    mesh.set_policies(&[], &[]);
    mesh.assert_allowed(&mesh.client, APP_PORT, "policies removed again");
}

#[test]
fn policy_by_port_allow_and_deny() {
    let mesh = Mesh::new("policy_by_port");
    let _other_app = mesh.server.start_echo_server(OTHER_APP_PORT);
    mesh.assert_allowed(&mesh.client, OTHER_APP_PORT, "no policies");

    let other_port = json!({ "destinationPorts": [OTHER_APP_PORT] });
    mesh.set_policies(
        &[backend_policy("deny-9090", "Deny", other_port.clone())],
        &[],
    );
    mesh.assert_refused(&mesh.client, OTHER_APP_PORT, "DENY for port 9090");
    mesh.assert_allowed(&mesh.client, APP_PORT, "DENY is for port 9090 only");

    mesh.set_policies(&[backend_policy("allow-9090", "Allow", other_port)], &[]);
    mesh.assert_allowed(&mesh.client, OTHER_APP_PORT, "ALLOW for port 9090");
    mesh.assert_refused(&mesh.client, APP_PORT, "ALLOW exists for port 9090 only");
}

#[test]
fn policy_change_closes_open_connection() {
    let mesh = Mesh::new("policy_closes_open");
    let dst = mesh.server.addr(APP_PORT);
    let mut stream = mesh.client.connect(dst, PATIENCE).expect("client connect");
    echo_roundtrip(&mut stream, b"before the policy", PATIENCE)
        .unwrap_or_else(|e| panic!("echo before the policy change failed: {e}"));

    let client = json!({ "principals": [{ "Exact": mesh.client.principal() }] });
    mesh.set_policies(&[backend_policy("deny-client", "Deny", client)], &[]);
    assert!(
        wait_closed(&mut stream, PATIENCE),
        "a connection open when a DENY policy arrived was still open {PATIENCE:?} later"
    );
    mesh.assert_refused(&mesh.client, APP_PORT, "DENY for the client's principal");
}

#[test]
fn permissive_allows_uncaptured_client() {
    let mesh = Mesh::new("permissive_uncaptured");
    mesh.echo.drain_peers();
    mesh.assert_allowed(
        &mesh.plain,
        APP_PORT,
        "PERMISSIVE: plaintext inbound via 15006",
    );
    let peer = mesh
        .echo
        .next_peer(PATIENCE)
        .expect("the server app accepted no connection");
    assert_eq!(
        peer.ip(),
        IpAddr::from(mesh.plain.ip),
        "plaintext inbound must keep the uncaptured client's source IP"
    );
}

#[test]
fn strict_denies_uncaptured_client_allows_meshed() {
    let mesh = Mesh::new("strict_uncaptured");
    let dst = mesh.server.addr(APP_PORT);
    let mut open_plain = mesh.plain.connect(dst, PATIENCE).expect("plain connect");
    echo_roundtrip(&mut open_plain, b"before STRICT", PATIENCE)
        .unwrap_or_else(|e| panic!("plaintext echo before STRICT failed: {e}"));

    let key = strict_key();
    mesh.set_policies(&[strict_policy()], &[&key]);
    mesh.assert_refused(&mesh.plain, APP_PORT, "STRICT: no identity");
    mesh.assert_allowed(
        &mesh.client,
        APP_PORT,
        "STRICT: the meshed client has an identity",
    );
    assert!(
        wait_closed(&mut open_plain, PATIENCE),
        "a plaintext connection open when STRICT arrived was not closed"
    );
}

#[test]
fn hbone_port_survives_plaintext_garbage() {
    let mesh = Mesh::new("hbone_garbage");
    let dst = mesh.server.addr(HBONE_PORT);
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: server\r\n\r\n",
        &[
            0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb, 0x03, 0x03, 0x00,
        ],
        &[0xa5; 4096],
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        let mut stream = mesh.plain.connect(dst, PATIENCE).unwrap_or_else(|e| {
            panic!(
                "an uncaptured pod could not reach {dst} directly (15008 is not redirected): {e}"
            )
        });
        // The proxy may close before all of it is written; that is fine.
        let _ = stream.write_all(bytes);
        assert!(
            wait_closed(&mut stream, PATIENCE),
            "garbage #{i} to {dst} was not answered with a close"
        );
    }
    assert!(
        mesh.server_proxy.is_running(),
        "the server proxy died on garbage input"
    );
    mesh.assert_allowed(&mesh.client, APP_PORT, "after garbage on 15008");
}

// ---------------------------------------------------------------------------------------
// Harness checks (no proxy needed).
// ---------------------------------------------------------------------------------------

/// Accepts one connection within `timeout` (the listener is switched to non-blocking).
fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut accepted = None;
    eventually(timeout, || {
        accepted = listener.accept().ok();
        accepted.is_some()
    });
    accepted
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    let addr = SockRef::from(stream)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST");
    addr.as_socket().expect("an IPv4 original destination")
}

fn two_pods(name: &str) -> (Topology, Node, Pod, Pod) {
    let mut topo = Topology::new(name);
    let node1 = topo.add_node("node1");
    let node2 = topo.add_node("node2");
    let a = topo.add_pod(&node1, "a");
    let b = topo.add_pod(&node2, "b");
    (topo, node1, a, b)
}

#[test]
fn harness_direct_tcp_across_nodes() {
    let (topo, node1, a, b) = two_pods("harness_direct_tcp");
    let echo = b.start_echo_server(APP_PORT);
    let capture = topo.start_capture(&node1);
    let marker = b"ZTT-HARNESS-CLEAR-MARKER";
    a.echo(b.addr(APP_PORT), marker, PATIENCE)
        .unwrap_or_else(|e| panic!("direct echo a -> b across nodes failed: {e}"));
    let peer = echo
        .next_peer(PATIENCE)
        .expect("echo server accepted nothing");
    assert_eq!(
        peer.ip(),
        IpAddr::from(a.ip),
        "the server must see pod a's IP"
    );

    let pcap = capture.stop();
    assert!(
        pcap.occurrences(marker) >= 2,
        "a plaintext echo must show the marker on the node link both ways"
    );
    assert!(
        pcap.payload_ports().contains(&(peer.port(), APP_PORT)),
        "the capture parser must see a -> b:8080 payload, saw {:?}",
        pcap.payload_ports()
    );
    assert_eq!(pcap.tls_app_data_segments(HBONE_PORT), 0);
}

#[test]
fn harness_inpod_redirect_captures_outbound() {
    let (topo, _node1, a, b) = two_pods("harness_redirect_outbound");
    topo.apply_inpod_redirect(&a);
    let outbound = a
        .run_in(|| TcpListener::bind(("0.0.0.0", OUTBOUND_PORT)))
        .expect("binding 15001 in pod a");
    let dst = b.addr(APP_PORT);
    let _client = a
        .connect(dst, PATIENCE)
        .unwrap_or_else(|e| panic!("connect to {dst} was not captured to 15001: {e}"));
    let (accepted, peer) = accept_within(&outbound, PATIENCE).expect("nothing arrived on 15001");
    assert_eq!(
        original_dst(&accepted),
        dst,
        "SO_ORIGINAL_DST must be the original target"
    );
    assert_eq!(
        peer.ip(),
        IpAddr::from(a.ip),
        "the captured connection comes from pod a"
    );

    // Sockets marked 0x539 (the proxy's own) are not captured.
    let echo = b.start_echo_server(APP_PORT);
    let mut marked = a
        .run_in(|| -> io::Result<TcpStream> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProtocol::TCP))?;
            socket.set_mark(PROXY_MARK)?;
            socket.connect_timeout(&SockAddr::from(dst), PATIENCE)?;
            Ok(socket.into())
        })
        .unwrap_or_else(|e| panic!("marked connect to {dst} failed: {e}"));
    echo_roundtrip(&mut marked, b"marked", PATIENCE).expect("marked echo reaches b directly");
    let peer = echo
        .next_peer(PATIENCE)
        .expect("b saw no marked connection");
    assert_eq!(peer.ip(), IpAddr::from(a.ip));
    assert!(
        accept_within(&outbound, Duration::ZERO).is_none(),
        "marked traffic hit 15001"
    );

    // Loopback traffic is not captured either.
    let local = a
        .run_in(|| TcpListener::bind("127.0.0.1:0"))
        .expect("loopback listener");
    let local_addr = local.local_addr().expect("local addr");
    let _loop_client = a.connect(local_addr, PATIENCE).expect("loopback connect");
    assert!(
        accept_within(&local, PATIENCE).is_some(),
        "loopback connect did not arrive"
    );
    assert!(
        accept_within(&outbound, Duration::ZERO).is_none(),
        "loopback hit 15001"
    );
}

#[test]
fn harness_inpod_redirect_captures_inbound() {
    let (topo, _node1, a, b) = two_pods("harness_redirect_inbound");
    topo.apply_inpod_redirect(&b);
    let plaintext = b
        .run_in(|| TcpListener::bind(("0.0.0.0", INBOUND_PLAINTEXT_PORT)))
        .expect("binding 15006 in pod b");
    let hbone = b
        .run_in(|| TcpListener::bind(("0.0.0.0", HBONE_PORT)))
        .expect("binding 15008 in pod b");

    let dst = b.addr(APP_PORT);
    let _c1 = a
        .connect(dst, PATIENCE)
        .expect("inbound connect to b:8080 captured to 15006");
    let (accepted, peer) = accept_within(&plaintext, PATIENCE).expect("nothing on 15006");
    assert_eq!(
        original_dst(&accepted),
        dst,
        "SO_ORIGINAL_DST of inbound plaintext"
    );
    assert_eq!(
        peer.ip(),
        IpAddr::from(a.ip),
        "inbound capture keeps the source IP"
    );

    let hbone_dst = b.addr(HBONE_PORT);
    let _c2 = a.connect(hbone_dst, PATIENCE).expect("connect to b:15008");
    let (accepted, _) = accept_within(&hbone, PATIENCE).expect("15008 must not be redirected");
    assert_eq!(accepted.local_addr().expect("local addr"), hbone_dst);
    assert!(
        accept_within(&plaintext, Duration::ZERO).is_none(),
        "15008 traffic hit 15006"
    );
}

#[test]
fn harness_inpod_spoofed_source_returns_via_lo() {
    let (topo, _node1, a, b) = two_pods("harness_spoofed_source");
    topo.apply_inpod_redirect(&b);
    let echo = b.start_echo_server(APP_PORT);
    // What the server-side proxy does: connect to the app from the client's IP, marked.
    let spoofed_connect = |timeout: Duration| {
        b.run_in(|| -> io::Result<TcpStream> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProtocol::TCP))?;
            socket.set_mark(PROXY_MARK)?;
            socket.set_ip_transparent_v4(true)?;
            socket.bind(&SockAddr::from(SocketAddr::from((a.ip, 0))))?;
            socket.connect_timeout(&SockAddr::from(b.addr(APP_PORT)), timeout)?;
            Ok(socket.into())
        })
    };
    let mut stream = spoofed_connect(PATIENCE)
        .unwrap_or_else(|e| panic!("spoofed-source connect inside pod b failed: {e}"));
    echo_roundtrip(&mut stream, b"spoofed", PATIENCE)
        .expect("the app's replies to the spoofed source must come back over lo");
    let peer = echo.next_peer(PATIENCE).expect("app accepted nothing");
    assert_eq!(
        peer.ip(),
        IpAddr::from(a.ip),
        "the app sees the spoofed client IP"
    );

    // Without the connmark/fwmark rules the replies leave via eth0 and the connect fails.
    topo.clean_inpod_redirect(&b);
    assert!(
        spoofed_connect(Duration::from_secs(2)).is_err(),
        "control: without the in-pod rules a spoofed-source connect must not complete"
    );
}

#[test]
fn harness_redirect_script_idempotent_and_clean() {
    let (topo, _node1, a, _b) = two_pods("harness_redirect_script");
    let istio_rules = || {
        let saved = a.exec_ok(&["iptables-nft-save"]);
        saved.lines().filter(|l| l.contains("ISTIO_")).count()
    };
    let fwmark_rules = || {
        let rules = a.exec_ok(&["ip", "rule", "show"]);
        rules
            .lines()
            .filter(|l| l.contains("fwmark 0x111/0xfff lookup 100"))
            .count()
    };
    topo.apply_inpod_redirect(&a);
    let first = istio_rules();
    // 4 jumps + mangle 2 + nat PRERT 2 + nat OUTPUT 4, plus 4 chain declarations.
    assert_eq!(first, 16, "unexpected ISTIO_ rule count after one install");
    topo.apply_inpod_redirect(&a);
    assert_eq!(
        istio_rules(),
        first,
        "a second install must not duplicate rules"
    );
    assert_eq!(fwmark_rules(), 1, "exactly one fwmark 0x111 rule");
    topo.clean_inpod_redirect(&a);
    assert_eq!(istio_rules(), 0, "--clean leaves ISTIO_ rules behind");
    assert_eq!(fwmark_rules(), 0, "--clean leaves the fwmark rule behind");
}

#[test]
fn harness_ztunnel_proc_runs_and_waits_for_log() {
    let topo = Topology::new("harness_fake_ztunnel");
    let fake = topo.work_dir().join("fake-ztunnel.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"INFO proxy ready workload=$PROXY_WORKLOAD_INFO mode=$PROXY_MODE\"\n\
         exec sleep 3600\n",
    )
    .expect("writing the fake proxy");
    let mut perms = std::fs::metadata(&fake).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).expect("chmod");
    let mut topo = topo.with_ztunnel_bin(&fake);
    let node = topo.add_node("node1");
    let pod = topo.add_pod_as(&node, "fake", "demo", "fake-sa");

    let proc = topo.start_ztunnel(&pod, &[]);
    let line = proc.wait_for_log("proxy ready", PATIENCE);
    assert!(
        line.contains("workload=demo/fake/fake-sa mode=dedicated"),
        "env not passed: {line}"
    );
    assert!(proc.is_running());
    assert!(
        proc.try_wait_for_log_since(proc.log_mark(), "never", Duration::ZERO)
            .is_none()
    );
}

#[test]
#[should_panic(expected = "without logging `proxy ready`")]
fn harness_ztunnel_proc_fails_loudly_on_early_exit() {
    let mut topo = Topology::new("harness_early_exit").with_ztunnel_bin("/bin/false");
    let node = topo.add_node("node1");
    let pod = topo.add_pod(&node, "quitter");
    let _proc = topo.start_ztunnel(&pod, &[]);
}

#[test]
fn harness_local_config_parses() {
    let pod = |name: &str, namespace: &str, node: &str, ip: [u8; 4]| Pod {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        service_account: name.to_owned(),
        node: node.to_owned(),
        netns: String::new(),
        ip: ip.into(),
    };
    let client = pod("client", "frontend", "node1", [10, 0, 1, 2]);
    let plain = pod("plain", "legacy", "node1", [10, 0, 1, 3]);
    let server = pod("server", "backend", "node2", [10, 0, 2, 2]);
    let policies = [
        backend_policy(
            "p",
            "Allow",
            json!({ "principals": [{ "Exact": client.principal() }] }),
        ),
        backend_policy(
            "n",
            "Deny",
            json!({ "namespaces": [{ "Exact": "frontend" }] }),
        ),
        backend_policy("d", "Deny", json!({ "destinationPorts": [OTHER_APP_PORT] })),
        strict_policy(),
    ];
    let key = strict_key();
    let yaml = config(&client, &plain, &server, &policies, &[&key]).to_yaml();
    if let Err(err) = ztunnel::localconfig::parse(&yaml) {
        panic!("the harness writes a local config the proxy rejects: {err}\n{yaml}");
    }
}
