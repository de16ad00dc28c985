//! The real control plane end to end (Linux, root): the `istiod-compat` binary runs as its
//! own process in node1's netns on the local-files registry, and one dedicated-mode `ztunnel`
//! per captured pod (client on node1, server on node2) gets its configuration over delta xDS
//! and its certificate from istiod-compat's CA, both at `https://10.0.1.1:15012`. No local
//! config file and no local CA are involved.
//!
//! Shown here: traffic through both proxies with CA-issued certificates; an
//! AuthorizationPolicy file edit enforced within a second (and its removal); a SIGKILLed
//! control plane leaving the proxies working on cached state, and a restarted one resyncing
//! them.
//!
//! Run: `cargo build -p istiod-compat && cargo test -p ztunnel --test control_plane_netns`
//! (as root; `cargo test --workspace` builds istiod-compat by itself). Fails without root.
#![allow(
    clippy::expect_used,
    reason = "test helpers outside #[test] fns: a failed expectation is the test failure"
)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use ztunnel::test_helpers::netns::{
    ControlPlane, EchoServer, LoggedProc, PATIENCE, Pod, RegistryObjects, Topology, ZtunnelProc,
    echo_roundtrip, istiod_compat_bin, require_root, wait_closed,
};

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");
const APP_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const TOPOLOGY_FILE: &str = "10-topology.yaml";
const POLICY_FILE: &str = "40-deny-client.yaml";
/// The issue asks for a policy edit to be enforced "within a second". The files registry
/// polls every 500 ms and pushes are debounced (100 ms quiet, 1 s at most), so the bound
/// asserted is 2 s: a correctness bound that a loaded 2-core runner still meets, not a
/// performance measurement.
const POLICY_DEADLINE: Duration = Duration::from_secs(2);
/// How long a refused connection may take to be closed by the proxies.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(5);
/// The xDS client's reconnect backoff doubles up to 15 s while the control plane is down.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(40);
/// Proxy log filter: the xDS client logs each applied response at debug.
const PROXY_LOG: &str = "info,ztunnel::xds=debug";
const XDS_APPLIED: &str = "xDS response applied";
const AUTHORIZATION_TYPE: &str = "istio.security.Authorization";
const XDS_ESTABLISHED: &str = "xDS stream established";
/// Every xDS client log line about a lost stream or a failed connection carries this field.
const XDS_RETRY: &str = "retry_in";

/// The topology, the control plane and the two proxies. Fields drop in order: processes and
/// sockets before the topology.
struct Mesh {
    client_proxy: ZtunnelProc,
    server_proxy: ZtunnelProc,
    istiod: LoggedProc,
    echo: EchoServer,
    client: Pod,
    server: Pod,
    cp: ControlPlane,
    _topo: Topology,
}

impl Mesh {
    fn new(name: &str) -> Mesh {
        require_root();
        let istiod_bin = istiod_compat_bin(Path::new(ZTUNNEL));
        let mut topo = Topology::new(name).with_ztunnel_bin(ZTUNNEL);
        let node1 = topo.add_node("node1");
        let node2 = topo.add_node("node2");
        let client = topo.add_pod_as(&node1, "client", "frontend", "client");
        let server = topo.add_pod_as(&node2, "server", "backend", "server");
        let echo = server.start_echo_server(APP_PORT);
        topo.apply_inpod_redirect(&client);
        topo.apply_inpod_redirect(&server);

        let cp = topo.control_plane(istiod_bin, &node1);
        let objects = RegistryObjects::new()
            .ambient_pods(&[&client, &server])
            .service(&server, SERVICE_VIP, SERVICE_PORT, APP_PORT);
        cp.write_registry_file(TOPOLOGY_FILE, &objects.to_yaml());
        let istiod = cp.start();
        let env = [("RUST_LOG", PROXY_LOG)];
        let server_proxy = topo.start_ztunnel_with_control_plane(&server, &cp, &env);
        let client_proxy = topo.start_ztunnel_with_control_plane(&client, &cp, &env);
        Mesh {
            client_proxy,
            server_proxy,
            istiod,
            echo,
            client,
            server,
            cp,
            _topo: topo,
        }
    }

    fn app(&self) -> SocketAddr {
        self.server.addr(APP_PORT)
    }

    fn assert_allowed(&self, why: &str) {
        if let Err(err) = self.client.echo(self.app(), b"policy probe", PATIENCE) {
            panic!(
                "client -> {} should be allowed ({why}), but: {err}",
                self.app()
            );
        }
    }

    fn is_refused(&self) -> bool {
        self.client
            .echo(self.app(), b"policy probe", REFUSAL_PATIENCE)
            .is_err()
    }

    /// The server proxy's `src.identity=` for the next connection after `mark` that ended
    /// (access logs are written when a connection closes).
    fn server_saw_client_identity(&self, mark: usize) {
        let line = self
            .server_proxy
            .wait_for_log_since(mark, "src.identity=", PATIENCE);
        let expected = format!("spiffe://{}", self.client.principal());
        assert!(
            line.contains(&format!("src.identity={expected}"))
                || line.contains(&format!("src.identity=\"{expected}\"")),
            "the server proxy should have authenticated the client as {expected}: {line}"
        );
    }

    /// Writes (`Some`) or removes (`None`) the deny policy file, waits for the server proxy
    /// to apply the Authorization change, and checks that a new connection is then refused
    /// (or allowed); returns the time from the edit to that outcome, asserted below
    /// [`POLICY_DEADLINE`].
    fn edit_policy(&self, policy: Option<&str>, what: &str) -> Duration {
        let mark = self.server_proxy.log_mark();
        let edited = Instant::now();
        match policy {
            Some(yaml) => self.cp.write_registry_file(POLICY_FILE, yaml),
            None => self.cp.remove_registry_file(POLICY_FILE),
        }
        // A resync answer carries `updated=0 removed=0`: only a change counts.
        let applied = |line: &str| {
            line.contains(XDS_APPLIED)
                && line.contains(AUTHORIZATION_TYPE)
                && !line.contains("updated=0 removed=0")
        };
        let left = POLICY_DEADLINE.saturating_sub(edited.elapsed());
        if self
            .server_proxy
            .try_wait_for_line_since(mark, left, applied)
            .is_none()
        {
            let late = self
                .server_proxy
                .try_wait_for_line_since(mark, PATIENCE, applied)
                .map_or_else(
                    || format!("nor within a further {PATIENCE:?}"),
                    |_| format!("it did after {:?}", edited.elapsed()),
                );
            panic!(
                "{what}: the server proxy did not apply the Authorization change within \
                 {POLICY_DEADLINE:?} of the registry file edit ({late}); the issue requires \
                 policy edits to be enforced within a second"
            );
        }
        match policy {
            Some(_) => assert!(
                self.is_refused(),
                "{what}: the server proxy applied the DENY policy but the client still got \
                 its echo"
            ),
            None => self.assert_allowed(what),
        }
        let elapsed = edited.elapsed();
        assert!(
            elapsed < POLICY_DEADLINE,
            "{what}: enforced {elapsed:?} after the registry file edit; the issue requires \
             within a second (the test allows {POLICY_DEADLINE:?})"
        );
        elapsed
    }

    fn deny_client_policy(&self) -> String {
        RegistryObjects::new()
            .authorization_policy(
                "deny-client",
                &self.server.namespace,
                "DENY",
                &[self.client.principal()],
            )
            .to_yaml()
    }
}

/// `GET /config_dump` on the proxy admin port (127.0.0.1:15000 in the pod's netns).
fn config_dump(pod: &Pod) -> Value {
    let raw = pod
        .run_in(|| -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&ADMIN, PATIENCE)?;
            stream.set_read_timeout(Some(PATIENCE))?;
            stream.write_all(
                b"GET /config_dump HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        })
        .unwrap_or_else(|e| panic!("GET /config_dump in pod {}: {e}", pod.name));
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response from the admin port: {text}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "/config_dump in pod {}: {head}",
        pod.name
    );
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("/config_dump in pod {} is not JSON ({e}): {body}", pod.name))
}

/// The pod's own certificate in `/config_dump`: `(leaf serial, root PEM)`, checking that
/// it is available and for the pod's identity.
fn own_certificate(pod: &Pod) -> (String, String) {
    let dump = config_dump(pod);
    let identity = format!("spiffe://{}", pod.principal());
    let certs = dump["certificates"].as_array().cloned().unwrap_or_default();
    let Some(cert) = certs.iter().find(|c| c["identity"] == identity.as_str()) else {
        panic!(
            "pod {}: no certificate for {identity} in /config_dump: {certs:?}",
            pod.name
        );
    };
    assert_eq!(
        cert["state"], "Available",
        "pod {}: certificate state {cert}",
        pod.name
    );
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let serial = text(&cert["certChain"][0]["serialNumber"]);
    let root = text(&cert["rootCerts"][0]["pem"]);
    assert!(
        !serial.is_empty() && !root.is_empty(),
        "pod {}: incomplete certificate {cert}",
        pod.name
    );
    (serial, root)
}

fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

#[test]
fn traffic_flows_with_ca_issued_certificates() {
    let mesh = Mesh::new("cp_traffic");
    for proxy in [&mesh.client_proxy, &mesh.server_proxy] {
        proxy.wait_for_log(XDS_ESTABLISHED, PATIENCE);
        proxy.wait_for_log("Istio CA client", PATIENCE);
    }
    for node_id in ["client.frontend", "server.backend"] {
        mesh.istiod.wait_for_log(node_id, PATIENCE);
    }

    let mark = mesh.server_proxy.log_mark();
    let mut stream = mesh
        .client
        .connect(mesh.app(), PATIENCE)
        .unwrap_or_else(|e| panic!("client could not connect to {}: {e}", mesh.app()));
    echo_roundtrip(&mut stream, b"hello over the control plane", PATIENCE)
        .unwrap_or_else(|e| panic!("echo through both proxies failed: {e}"));
    let peer = mesh
        .echo
        .next_peer(PATIENCE)
        .expect("the server app accepted no connection");
    assert_eq!(
        peer.ip(),
        IpAddr::from(mesh.client.ip),
        "the app should see the client pod's IP"
    );
    // The access log line is written when the connection ends.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-closing the client stream");
    assert!(
        wait_closed(&mut stream, PATIENCE),
        "the server's close did not come back through the proxies"
    );
    mesh.server_saw_client_identity(mark);

    // The Service from the registry reached the client proxy too: its VIP works.
    let vip = SocketAddr::from((SERVICE_VIP, SERVICE_PORT));
    mesh.client
        .echo(vip, b"hello via the service VIP", PATIENCE)
        .unwrap_or_else(|e| panic!("echo to the Service VIP {vip} failed: {e}"));

    // Both certificates chain to the root in istiod-compat's CA directory.
    let root_file = std::fs::read_to_string(mesh.cp.root_cert()).expect("reading the CA root");
    for pod in [&mesh.client, &mesh.server] {
        let (_, root) = own_certificate(pod);
        assert_eq!(
            pem_body(&root),
            pem_body(&root_file),
            "pod {}: the proxy's trust root is not the root of istiod-compat's CA",
            pod.name
        );
    }
}

#[test]
fn policy_file_edit_is_enforced_within_a_second() {
    let mesh = Mesh::new("cp_policy");
    mesh.assert_allowed("no policy yet");
    let mut open = mesh
        .client
        .connect(mesh.app(), PATIENCE)
        .expect("opening a connection before the policy");
    echo_roundtrip(&mut open, b"before the policy", PATIENCE).expect("echo before the policy");

    let deny = mesh.deny_client_policy();
    let took = mesh.edit_policy(Some(&deny), "adding a DENY policy for the client");
    eprintln!("DENY policy enforced {took:?} after the file edit");
    assert!(
        wait_closed(&mut open, PATIENCE),
        "the connection opened before the DENY policy should be closed by the server proxy"
    );

    let took = mesh.edit_policy(None, "removing the DENY policy");
    eprintln!("DENY policy removal enforced {took:?} after the file edit");
}

#[test]
fn control_plane_restart_keeps_cached_state_and_resyncs() {
    let mut mesh = Mesh::new("cp_restart");
    let mut open = mesh
        .client
        .connect(mesh.app(), PATIENCE)
        .expect("opening a connection before the kill");
    echo_roundtrip(&mut open, b"before the kill", PATIENCE).expect("echo before the kill");
    let (serial_before, _) = own_certificate(&mesh.client);

    // SIGKILL: no goodbye to the proxies.
    let marks = [mesh.client_proxy.log_mark(), mesh.server_proxy.log_mark()];
    mesh.istiod.kill();
    for (proxy, mark) in [&mesh.client_proxy, &mesh.server_proxy]
        .into_iter()
        .zip(marks)
    {
        proxy.wait_for_log_since(mark, XDS_RETRY, PATIENCE);
    }
    echo_roundtrip(&mut open, b"after the kill", PATIENCE)
        .unwrap_or_else(|e| panic!("the established connection broke with the control plane: {e}"));
    let mark = mesh.server_proxy.log_mark();
    mesh.client
        .echo(mesh.app(), b"new connection, control plane down", PATIENCE)
        .unwrap_or_else(|e| panic!("a new connection failed while the control plane is down: {e}"));
    mesh.server_saw_client_identity(mark);
    let (serial_down, _) = own_certificate(&mesh.client);
    assert_eq!(
        serial_before, serial_down,
        "the cached certificate should keep serving while the CA is down"
    );

    // Same CA directory, same addresses: the proxies reconnect and resync.
    let marks = [mesh.client_proxy.log_mark(), mesh.server_proxy.log_mark()];
    mesh.istiod = mesh.cp.start();
    for (proxy, mark) in [&mesh.client_proxy, &mesh.server_proxy]
        .into_iter()
        .zip(marks)
    {
        proxy.wait_for_log_since(mark, XDS_ESTABLISHED, RECONNECT_PATIENCE);
        // Resynced: the answer to the reconnect's subscription has been applied.
        let resynced = |line: &str| line.contains(XDS_APPLIED) && line.contains(AUTHORIZATION_TYPE);
        assert!(
            proxy
                .try_wait_for_line_since(mark, PATIENCE, resynced)
                .is_some(),
            "a proxy reconnected but applied no Authorization answer within {PATIENCE:?}"
        );
    }
    for node_id in ["client.frontend", "server.backend"] {
        mesh.istiod.wait_for_log(node_id, PATIENCE);
    }
    echo_roundtrip(&mut open, b"after the restart", PATIENCE)
        .unwrap_or_else(|e| panic!("the established connection broke after the restart: {e}"));

    let deny = mesh.deny_client_policy();
    mesh.edit_policy(Some(&deny), "a DENY policy after the restart");
    mesh.edit_policy(None, "removing the DENY policy after the restart");
}

#[test]
#[should_panic(expected = "`cargo build -p istiod-compat`")]
fn harness_missing_istiod_compat_names_the_build_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    istiod_compat_bin(&dir.path().join("ztunnel"));
}
