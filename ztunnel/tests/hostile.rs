#![allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]

//! Hostile input on the inbound HBONE listener (15008), in-process on loopback, no root.
//!
//! Each test starts one server proxy (dedicated mode, workload `default/server/server` at
//! 127.0.N.2) and an echo server beside it. The client side is this file speaking TLS and
//! HTTP/2 directly, with certificates from the proxy's own local CA. Every case must end in
//! the reference's status (§5.2-5.3) or a clean close, and afterwards a valid CONNECT must
//! still echo: the proxy keeps serving. Each test ends with a drain that must complete, so
//! no hostile connection leaves a server task behind.
//!
//! `RUST_LOG=debug cargo test -p ztunnel --test hostile` shows the proxy's log of each case.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use mesh_core::Identity;
use rand::RngCore;
use rustls::AlertDescription;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::info;
use ztunnel::app::{self, App};
use ztunnel::drain::DrainOutcome;
use ztunnel::identity::{LocalCa, WorkloadCertificate};
use ztunnel::proxy::hbone::{self, H2Client, H2Settings, HboneError};
use ztunnel::test_helpers::inprocess::{echo_server, loopback_config, two_workloads_yaml};
use ztunnel::tls;

/// Bound on every network await: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(10);
const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "default";
/// The service account of the test's well-behaved client.
const CLIENT_SA: &str = "client";

// === Harness ===

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

fn identity(sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, NAMESPACE, sa)
}

/// One server proxy on 127.0.N.2 with an echo server beside it, and the mesh CA.
struct Server {
    /// Each test passes its own `net` so parallel tests never share a listener address
    /// (SO_REUSEPORT would otherwise spread connections across tests).
    net: u8,
    dir: tempfile::TempDir,
    app: App,
    /// The inbound HBONE listener (127.0.N.2:15008).
    hbone: SocketAddr,
    echo: SocketAddr,
    /// The proxy's CA, loaded from the directory it created on start.
    ca: LocalCa,
}

impl Server {
    async fn start(net: u8, policies: &str) -> Server {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            two_workloads_yaml(net, policies),
        )
        .unwrap();
        let ip = format!("127.0.{net}.2");
        let (echo, _) = echo_server(&ip).await;
        let app = app::build(loopback_config(
            dir.path(),
            "default/server/server",
            &ip,
            &[],
            false,
        ))
        .await
        .unwrap();
        let hbone = app.bound.inbound;
        // The proxy created its CA in `<dir>/ca` during `build`; same files, same root.
        let ca = LocalCa::load_or_create(
            &dir.path().join("ca"),
            TRUST_DOMAIN,
            Duration::from_secs(3600),
        )
        .unwrap();
        Server {
            net,
            dir,
            app,
            hbone,
            echo,
            ca,
        }
    }

    /// A currently valid certificate for `default/<sa>` from the mesh CA.
    fn cert(&self, sa: &str) -> WorkloadCertificate {
        let now = SystemTime::now();
        self.ca
            .issue(
                &identity(sa),
                now - Duration::from_secs(60),
                now + Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// TLS client config presenting `cert` and requiring the server's identity.
    fn tls_config(cert: &WorkloadCertificate) -> Arc<rustls::ClientConfig> {
        tls::client_config(cert, vec![identity("server")]).unwrap()
    }

    /// A TCP connection to 15008 from the client workload's address (127.0.N.1).
    async fn tcp(&self) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.{}.1:0", self.net).parse().unwrap())
            .unwrap();
        within("TCP connect to 15008", socket.connect(self.hbone))
            .await
            .unwrap()
    }

    async fn tls(&self, config: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp().await;
        within(
            "TLS handshake",
            TlsConnector::from(config).connect(tls::server_name(), tcp),
        )
        .await
    }

    /// An HBONE (TLS + HTTP/2) client presenting `cert`.
    async fn hbone_client(&self, cert: &WorkloadCertificate) -> H2Client {
        let tls = self.tls(Self::tls_config(cert)).await.unwrap();
        within(
            "HTTP/2 handshake",
            hbone::handshake(tls, &H2Settings::default()),
        )
        .await
        .unwrap()
    }

    /// Sends `req` on a fresh connection as the well-behaved client and returns the status
    /// the proxy answered with (200 tunnels are dropped at once).
    async fn status_of(&self, req: Request<()>) -> StatusCode {
        let client = self.hbone_client(&self.cert(CLIENT_SA)).await;
        match within("CONNECT response", client.connect(req)).await {
            Ok((parts, _stream)) => parts.status,
            Err(HboneError::Status(status)) => status,
            Err(e) => panic!("expected an HTTP status, got {e}"),
        }
    }

    fn local(&self, port: u16) -> String {
        format!("127.0.{}.2:{port}", self.net)
    }

    /// A valid CONNECT to the echo server from `sa` still gets 200 and echoes.
    async fn assert_still_serving(&self, sa: &str) {
        let client = self.hbone_client(&self.cert(sa)).await;
        let req = hbone::connect_request(&self.echo.to_string(), HeaderMap::new()).unwrap();
        let (parts, mut stream) = within("CONNECT to echo", client.connect(req))
            .await
            .unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        stream.write_all(b"still serving").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = Vec::new();
        within("echo", stream.read_to_end(&mut out)).await.unwrap();
        assert_eq!(out, b"still serving", "the proxy keeps serving");
    }

    /// Drains the proxy: every connection task (hostile ones included) must have ended, and
    /// every registered connection must be unregistered.
    async fn stop(self) {
        let inputs = self.app.inputs.clone();
        assert_eq!(
            self.app.shutdown().await,
            DrainOutcome::Completed,
            "a connection task was still running at the drain deadline"
        );
        assert_eq!(
            inputs.connections.len(),
            0,
            "leaked connection registrations"
        );
        drop(self.dir);
    }
}

/// A CONNECT for `authority` exactly as given: unlike [`hbone::connect_request`], no HBONE
/// validation (the `http` crate still checks URI syntax).
fn raw_connect(authority: &str) -> Request<()> {
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(authority.parse().unwrap());
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = Uri::from_parts(parts).unwrap();
    *req.version_mut() = Version::HTTP_2;
    req
}

/// Reads until the peer closes. The connection must end (EOF or error) within
/// [`PATIENCE`]; returns the bytes received before that.
async fn assert_closed(mut s: impl AsyncRead + Unpin, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match within(what, s.read_to_end(&mut out)).await {
        Ok(_) => info!(case = what, bytes = out.len(), "closed by the proxy (EOF)"),
        Err(e) => info!(case = what, error = %e, "closed by the proxy (error)"),
    }
    out
}

/// The TLS alert a rustls error reports as received from the peer.
fn alert_received(e: &io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Connects with `config` and returns the alert the server refused the client with.
///
/// In TLS 1.3 the client's handshake is done once it sent its certificate and Finished; the
/// server's verdict on that certificate is the next record the client reads.
async fn tls_refusal(server: &Server, config: Arc<rustls::ClientConfig>) -> AlertDescription {
    let mut tls = match server.tls(config).await {
        Ok(tls) => tls,
        Err(e) => {
            return alert_received(&e)
                .unwrap_or_else(|| panic!("handshake failed without a server alert: {e}"));
        }
    };
    let mut buf = [0u8; 64];
    match within("server verdict", tls.read(&mut buf)).await {
        Ok(n) => panic!("the server accepted the client (read {n} bytes instead of an alert)"),
        Err(e) => alert_received(&e)
            .unwrap_or_else(|| panic!("connection failed without a server alert: {e}")),
    }
}

/// Presents no client certificate (the server asks for one; we answer with none).
#[derive(Debug)]
struct NoClientCert;

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

// === Raw HTTP/2 ===

/// A minimal HTTP/2 client for requests `http` and `h2` refuse to build (an `:authority`
/// with spaces, a CONNECT without `:authority`). HPACK fields are all literals without
/// indexing and never Huffman-coded; responses are only decoded far enough to read the
/// status of an indexed `:status`.
struct RawH2 {
    io: TlsStream<TcpStream>,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// RFC 9113 §7.
const PROTOCOL_ERROR: u32 = 0x1;

/// How the server answered one raw request.
#[derive(Debug, PartialEq, Eq)]
enum RawOutcome {
    /// Response headers with this `:status`.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The transport closed.
    Closed,
    /// Response headers this client cannot decode (raw block).
    Undecoded(Vec<u8>),
}

/// HPACK integer with an `prefix`-bit prefix, high bits of the first byte from `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for s in [name, value] {
        hpack_int(out, 0x00, 7, s.len());
        out.extend_from_slice(s.as_bytes());
    }
}

/// `:status` from the first field of a header block, if it is an indexed static entry.
fn indexed_status(block: &[u8]) -> Option<u16> {
    // RFC 7541 Appendix A, indices 8..=14.
    match block.first()? {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        _ => None,
    }
}

impl RawH2 {
    async fn open(server: &Server) -> RawH2 {
        let tls = server
            .tls(Server::tls_config(&server.cert(CLIENT_SA)))
            .await
            .unwrap();
        let mut raw = RawH2 { io: tls };
        raw.io.write_all(PREFACE).await.unwrap();
        raw.write_frame(FRAME_SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn write_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        assert!(
            len < 1 << 14,
            "frame larger than the default max frame size"
        );
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Sends one HEADERS frame (END_HEADERS, not END_STREAM) on `stream` and waits for the
    /// server's answer on that stream, or for the connection's end.
    async fn request(&mut self, stream: u32, fields: &[(&str, &str)]) -> RawOutcome {
        let mut block = Vec::new();
        for (name, value) in fields {
            hpack_literal(&mut block, name, value);
        }
        self.write_frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block)
            .await;
        within("raw HTTP/2 answer", self.answer(stream)).await
    }

    async fn answer(&mut self, stream: u32) -> RawOutcome {
        loop {
            let mut head = [0u8; 9];
            if self.io.read_exact(&mut head).await.is_err() {
                return RawOutcome::Closed;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            // We advertised the default max frame size (16 KiB): len is bounded.
            let mut payload = vec![0u8; len];
            if self.io.read_exact(&mut payload).await.is_err() {
                return RawOutcome::Closed;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                    self.write_frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]).await;
                }
                FRAME_GOAWAY => return RawOutcome::GoAway(code(4).unwrap()),
                FRAME_RST_STREAM if id == stream => return RawOutcome::Reset(code(0).unwrap()),
                FRAME_HEADERS if id == stream => {
                    let mut block = &payload[..];
                    if flags & FLAG_PADDED != 0 {
                        let pad = usize::from(block[0]);
                        block = &block[1..block.len() - pad];
                    }
                    if flags & FLAG_PRIORITY != 0 {
                        block = &block[5..];
                    }
                    return indexed_status(block)
                        .map_or_else(|| RawOutcome::Undecoded(block.to_vec()), RawOutcome::Status);
                }
                _ => {}
            }
        }
    }
}

// === Cases ===

/// Case 1: bytes that are not TLS (or not HTTP/2 inside TLS) on 15008 get the connection
/// closed. The only bytes allowed back are a TLS alert, or the server's HTTP/2 SETTINGS
/// once TLS is up: never an HTTP/1.1 response.
#[tokio::test]
async fn plaintext_and_garbage_are_closed() {
    let server = Server::start(20, "[]").await;
    let http11 = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: hostile\r\n\r\n",
        server.local(15008)
    );
    let mut random = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut random);
    // A well-framed TLS handshake record whose ClientHello is garbage: legacy version
    // 0xffff and a session id length of 255 (at most 32 is legal).
    let mut bad_hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    bad_hello.resize(5 + 512, 0xff);
    let cases: [(&str, &[u8]); 4] = [
        ("plaintext HTTP/1.1", http11.as_bytes()),
        ("cleartext HTTP/2 preface (h2c)", PREFACE),
        ("64 KiB of random bytes", &random),
        ("TLS record with a garbage ClientHello", &bad_hello),
    ];
    for (what, bytes) in cases {
        info!(case = what, "sending to 15008");
        let mut s = server.tcp().await;
        // The proxy may close while we are still writing: that is the expected outcome.
        let _ = s.write_all(bytes).await;
        let back = assert_closed(s, what).await;
        assert!(
            back.is_empty() || back[0] == 0x15,
            "{what}: only a TLS alert may come back, got {:?}",
            &back[..back.len().min(32)]
        );
    }

    // Valid mTLS, but HTTP/1.1 inside (ALPN not offered, so TLS alone cannot refuse it).
    let mut config = (*Server::tls_config(&server.cert(CLIENT_SA))).clone();
    config.alpn_protocols.clear();
    let mut tls = server.tls(Arc::new(config)).await.unwrap();
    tls.write_all(http11.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let back = assert_closed(tls, "HTTP/1.1 inside mTLS").await;
    assert!(
        !back.starts_with(b"HTTP/"),
        "the proxy must not speak HTTP/1.1, got {:?}",
        String::from_utf8_lossy(&back)
    );

    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 2: methods other than CONNECT get 400 (reference §5.3).
#[tokio::test]
async fn non_connect_methods_get_400() {
    let server = Server::start(21, "[]").await;
    for method in [Method::GET, Method::POST, Method::OPTIONS] {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("https://{}/", server.echo))
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(
            server.status_of(req).await,
            StatusCode::BAD_REQUEST,
            "{method}"
        );
    }
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 3: an `:authority` that is not `ip:port`/`host:port`, or names another IP, gets 400
/// (reference §5.2 step 2-3).
#[tokio::test]
async fn bad_and_mismatched_authorities_get_400() {
    let server = Server::start(22, "[]").await;
    let echo_port = server.echo.port();
    let bad = [
        "10.0.0.1".to_string(),
        server.local(0),
        format!("user@{}", server.local(echo_port)),
        format!("127.0.{}.99:{echo_port}", server.net),
        format!("10.0.0.1:{echo_port}"),
    ];
    for authority in &bad {
        assert_eq!(
            server.status_of(raw_connect(authority)).await,
            StatusCode::BAD_REQUEST,
            "{authority}"
        );
    }

    // Authorities the `http` crate refuses to build, on one raw connection.
    let mut raw = RawH2::open(&server).await;
    assert_eq!(
        raw.request(1, &[(":method", "CONNECT")]).await,
        RawOutcome::Status(400),
        "CONNECT without :authority"
    );
    // Not a URI authority at all: h2 rejects the request as malformed (RFC 9113 §8.1.1)
    // before the proxy sees it, with a stream error; the connection survives.
    assert_eq!(
        raw.request(3, &[(":method", "CONNECT"), (":authority", "not a host")])
            .await,
        RawOutcome::Reset(PROTOCOL_ERROR),
        "CONNECT to `not a host`"
    );
    let echo = server.echo.to_string();
    assert_eq!(
        raw.request(5, &[(":method", "CONNECT"), (":authority", &echo)])
            .await,
        RawOutcome::Status(200),
        "the same connection still tunnels"
    );
    drop(raw);

    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 4: a client whose SPIFFE identity is in another trust domain is refused at TLS,
/// whether its certificate chains to the mesh root or to a foreign one.
#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let server = Server::start(23, "[]").await;
    let now = SystemTime::now();
    let validity = (
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let evil = Identity::new("evil.local", NAMESPACE, CLIENT_SA);

    // Same root as the mesh, foreign trust domain: the chain verifies, the trust-domain
    // check refuses.
    let same_root = LocalCa::load_or_create(
        &server.dir.path().join("ca"),
        "evil.local",
        Duration::from_secs(3600),
    )
    .unwrap();
    let cert = same_root.issue(&evil, validity.0, validity.1).unwrap();
    assert_eq!(
        tls_refusal(&server, Server::tls_config(&cert)).await,
        AlertDescription::CertificateUnknown,
        "mesh root, trust domain evil.local"
    );

    // A CA of its own: the chain does not verify. The client still trusts the mesh root,
    // so it is the server that refuses.
    let evil_dir = tempfile::tempdir().unwrap();
    let foreign =
        LocalCa::load_or_create(evil_dir.path(), "evil.local", Duration::from_secs(3600)).unwrap();
    let issued = foreign.issue(&evil, validity.0, validity.1).unwrap();
    let cert =
        WorkloadCertificate::new(issued.chain, issued.key, server.ca.roots().to_vec()).unwrap();
    assert_eq!(
        tls_refusal(&server, Server::tls_config(&cert)).await,
        AlertDescription::UnknownCA,
        "foreign root, trust domain evil.local"
    );

    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 5: a mesh certificate outside its validity period is refused at TLS.
#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let server = Server::start(24, "[]").await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let periods = [
        ("expired", now - 2 * hour, now - hour),
        ("not yet valid", now + hour, now + 2 * hour),
    ];
    for (what, not_before, not_after) in periods {
        let cert = server
            .ca
            .issue(&identity(CLIENT_SA), not_before, not_after)
            .unwrap();
        assert_eq!(
            tls_refusal(&server, Server::tls_config(&cert)).await,
            AlertDescription::CertificateExpired,
            "{what}"
        );
    }
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 6: a client presenting no certificate is refused at TLS.
#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let server = Server::start(25, "[]").await;
    // The production client config (verifying the server), minus our certificate.
    let mut config = (*Server::tls_config(&server.cert(CLIENT_SA))).clone();
    config.client_auth_cert_resolver = Arc::new(NoClientCert);
    assert_eq!(
        tls_refusal(&server, Arc::new(config)).await,
        AlertDescription::CertificateRequired
    );
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 7: request headers beyond the server's 64 KiB header list limit (reference §4.2)
/// never open a tunnel: the stream is refused (431 or a reset) or, past h2's abuse limit,
/// the connection is closed.
#[tokio::test]
async fn oversized_request_headers_are_refused() {
    let server = Server::start(26, "[]").await;
    let junk = |len: usize| HeaderValue::from_str(&"x".repeat(len)).unwrap();
    let mut one_big = HeaderMap::new();
    one_big.insert("x-junk", junk(100 * 1024));
    let mut many = HeaderMap::new();
    for i in 0..400 {
        many.insert(
            http::HeaderName::try_from(format!("x-junk-{i}")).unwrap(),
            junk(256),
        );
    }
    let mut huge = HeaderMap::new();
    huge.insert("x-junk", junk(1024 * 1024));
    let cases = [
        ("one 100 KiB header", one_big),
        ("400 headers of 256 bytes", many),
        ("one 1 MiB header", huge),
    ];
    for (what, headers) in cases {
        let client = server.hbone_client(&server.cert(CLIENT_SA)).await;
        let req = hbone::connect_request(&server.echo.to_string(), headers).unwrap();
        match within(what, client.connect(req)).await {
            Err(HboneError::Status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)) => {
                info!(case = what, "refused with 431");
            }
            Err(HboneError::H2(e)) => info!(case = what, error = %e, "refused by HTTP/2"),
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok((parts, _)) => panic!("{what}: tunnel opened with {}", parts.status),
        }
    }
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// Case 8: a policy denial is 401; a CONNECT to a local port nobody listens on is 503
/// (reference §5.3).
#[tokio::test]
async fn policy_denial_is_401_and_closed_port_is_503() {
    let policies = r#"
  - name: only-allowed
    namespace: default
    scope: Namespace
    action: Allow
    rules:
    - - - principals: [{Exact: "cluster.local/ns/default/sa/allowed"}]
"#;
    let server = Server::start(27, policies).await;
    let echo = server.echo.to_string();
    assert_eq!(
        server
            .status_of(hbone::connect_request(&echo, HeaderMap::new()).unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "identity `client` is not allowed"
    );

    // A port that was just free: bind, learn it, release it.
    let closed = {
        let l = TcpListener::bind(server.local(0)).await.unwrap();
        l.local_addr().unwrap()
    };
    let client = server.hbone_client(&server.cert("allowed")).await;
    let req = hbone::connect_request(&closed.to_string(), HeaderMap::new()).unwrap();
    match within("CONNECT to a closed port", client.connect(req)).await {
        Err(HboneError::Status(status)) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{closed}");
        }
        Err(e) => panic!("expected 503, got {e}"),
        Ok((parts, _)) => panic!("expected 503, got {}", parts.status),
    }
    drop(client);

    server.assert_still_serving("allowed").await;
    server.stop().await;
}

/// Case 9: a CONNECT to one of the proxy's own ports on the local IP is a self-call: 503
/// (reference §5.3), even though nothing else is wrong with it.
#[tokio::test]
async fn self_call_to_proxy_ports_is_503() {
    let server = Server::start(28, "[]").await;
    for port in [15008, 15001, 15006] {
        assert_eq!(
            server
                .status_of(hbone::connect_request(&server.local(port), HeaderMap::new()).unwrap())
                .await,
            StatusCode::SERVICE_UNAVAILABLE,
            "port {port}"
        );
    }
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
}

/// A client that opens 15008 and stalls inside the TLS handshake must not hold up a
/// graceful drain: it carries no traffic yet, so nothing is lost by closing it.
#[tokio::test]
async fn stalled_tls_handshake_does_not_hold_up_drain() {
    let server = Server::start(29, "[]").await;
    // The first two bytes of a TLS record header, then silence.
    let mut stalled = server.tcp().await;
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    // Accepted in order: once a later connection is served, the stalled one is in the
    // proxy's hands.
    server.assert_still_serving(CLIENT_SA).await;
    server.stop().await;
    drop(stalled);
}
