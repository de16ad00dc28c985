//! End-to-end tests of the HBONE client, server and stream: loopback TCP for the byte
//! path, in-memory transports (and paused time) for GOAWAY and keepalive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use test_case::test_case;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::headers::{BAGGAGE, TRACEPARENT, TraceParent};
use super::test_support::{duplex_echo_client, duplex_echo_server, echo, eventually, pattern};
use super::*;

/// A loopback TCP HBONE server running `handler` on every connection.
async fn tcp_server<F, Fut>(settings: &H2Settings, handler: F) -> (SocketAddr, CancellationToken)
where
    F: Fn(IncomingConnect) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (token, settings) = (shutdown.clone(), settings.clone());
    tokio::spawn(async move {
        loop {
            let io = tokio::select! {
                accepted = listener.accept() => accepted.unwrap().0,
                () = token.cancelled() => return,
            };
            io.set_nodelay(true).unwrap();
            let (settings, token, handler) = (settings.clone(), token.clone(), handler.clone());
            tokio::spawn(async move {
                let _ = serve(io, &settings, token, handler).await;
            });
        }
    });
    (addr, shutdown)
}

async fn tcp_client(addr: SocketAddr, settings: &H2Settings) -> H2Client {
    let io = TcpStream::connect(addr).await.unwrap();
    io.set_nodelay(true).unwrap();
    handshake(io, settings).await.unwrap()
}

fn connect_req() -> Request<()> {
    connect_request("127.0.0.1:8080", HeaderMap::new()).unwrap()
}

/// Sends `payload`, half-closes, and reads the echo until EOF. Small payloads only: it
/// does not read while writing.
async fn echo_once(client: &H2Client, payload: &[u8]) -> Vec<u8> {
    let (parts, mut stream) = client.connect(connect_req()).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

/// An in-memory client whose server is raw h2 code: `on_stream` gets the request body and
/// the response body of each stream, after the 200 was sent.
async fn raw_server_client<F, Fut>(on_stream: F) -> H2Client
where
    F: Fn(RecvStream, SendStream<Bytes>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let send = respond.send_response(Response::new(()), false).unwrap();
            tokio::spawn(on_stream(request.into_body(), send));
        }
    });
    handshake(client_io, &H2Settings::default()).await.unwrap()
}

#[test]
fn connect_request_has_method_and_authority_only() {
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, TraceParent::random().to_header().unwrap());
    let req = connect_request("[fd00::5]:8080", headers).unwrap();
    assert_eq!(req.method(), Method::CONNECT);
    assert_eq!(req.version(), http::Version::HTTP_2);
    assert_eq!(req.uri().authority().unwrap().as_str(), "[fd00::5]:8080");
    assert!(req.uri().scheme().is_none());
    assert!(req.uri().path_and_query().is_none());
    assert!(req.headers().contains_key(TRACEPARENT));
}

#[test_case(""; "empty")]
#[test_case("10.0.0.5"; "no port")]
#[test_case("a b:80"; "whitespace")]
#[test_case("user@host:80"; "userinfo")]
#[test_case("host:80/path"; "path")]
fn connect_request_rejects_bad_authority(authority: &str) {
    let err = connect_request(authority, HeaderMap::new()).unwrap_err();
    assert!(matches!(err, HboneError::BadAuthority { .. }), "{err}");
}

#[test]
fn settings_are_validated() {
    assert!(H2Settings::default().validate().is_ok());
    let no_keepalive = H2Settings {
        keepalive_interval: Duration::ZERO,
        keepalive_timeout: Duration::ZERO,
        ..Default::default()
    };
    assert!(no_keepalive.validate().is_ok());
    let bad = [
        H2Settings {
            frame_size: 1024,
            ..Default::default()
        },
        H2Settings {
            frame_size: 1 << 24,
            ..Default::default()
        },
        H2Settings {
            stream_window: 0,
            ..Default::default()
        },
        H2Settings {
            connection_window: 1 << 31,
            ..Default::default()
        },
        H2Settings {
            max_streams_per_connection: 0,
            ..Default::default()
        },
        H2Settings {
            keepalive_timeout: Duration::ZERO,
            ..Default::default()
        },
    ];
    for settings in bad {
        assert!(settings.validate().is_err(), "{settings:?}");
    }
}

#[tokio::test]
async fn echo_roundtrip_over_tcp() {
    let settings = H2Settings::default();
    let (addr, _shutdown) = tcp_server(&settings, echo).await;
    let client = tcp_client(addr, &settings).await;
    assert!(client.is_ready());
    assert_eq!(echo_once(&client, b"hello hbone").await, b"hello hbone");
    assert_eq!(client.active_streams(), 0);
}

#[tokio::test]
async fn non_connect_method_gets_400_without_calling_handler() {
    let settings = H2Settings::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler = move |incoming: IncomingConnect| {
        counted.fetch_add(1, Ordering::SeqCst);
        echo(incoming)
    };
    let (addr, _shutdown) = tcp_server(&settings, handler).await;
    let client = tcp_client(addr, &settings).await;
    let get = Request::get("http://127.0.0.1:8080/").body(()).unwrap();
    let err = client.connect(get).await.unwrap_err();
    assert!(
        matches!(err, HboneError::Status(StatusCode::BAD_REQUEST)),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The connection still serves CONNECT.
    assert_eq!(echo_once(&client, b"ok").await, b"ok");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test_case(H2Settings::default(); "default windows")]
#[test_case(H2Settings {
    stream_window: 65_535,
    connection_window: 131_070,
    frame_size: 16_384,
    ..Default::default()
}; "small windows")]
#[tokio::test]
async fn large_transfer_respects_flow_control(settings: H2Settings) {
    let (addr, _shutdown) = tcp_server(&settings, echo).await;
    let client = tcp_client(addr, &settings).await;
    let (_, stream) = client.connect(connect_req()).await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let data = pattern(8 * 1024 * 1024);
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            write.write_all(chunk).await?;
        }
        write.shutdown().await
    };
    let reader = async {
        let mut out = Vec::with_capacity(data.len());
        read.read_to_end(&mut out).await.map(|_| out)
    };
    let (written, echoed) = tokio::join!(writer, reader);
    written.unwrap();
    let echoed = echoed.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed bytes differ");
}

#[tokio::test]
async fn copy_bidirectional_runs_over_a_stream() {
    let settings = H2Settings::default();
    let (addr, _shutdown) = tcp_server(&settings, echo).await;
    let client = tcp_client(addr, &settings).await;
    let (_, mut stream) = client.connect(connect_req()).await.unwrap();
    let (mut app, mut proxy_side) = tokio::io::duplex(64 * 1024);
    let copy =
        tokio::spawn(
            async move { tokio::io::copy_bidirectional(&mut proxy_side, &mut stream).await },
        );
    let data = pattern(1024 * 1024);
    let (mut app_read, mut app_write) = tokio::io::split(&mut app);
    let writer = async {
        app_write.write_all(&data).await?;
        app_write.shutdown().await
    };
    let mut echoed = Vec::new();
    let (written, read) = tokio::join!(writer, app_read.read_to_end(&mut echoed));
    written.unwrap();
    read.unwrap();
    assert!(echoed == data, "echoed bytes differ");
    let (up, down) = copy.await.unwrap().unwrap();
    assert_eq!((up, down), (data.len() as u64, data.len() as u64));
}

#[tokio::test]
async fn many_concurrent_streams_share_one_connection() {
    let settings = H2Settings::default();
    let (addr, _shutdown) = tcp_server(&settings, echo).await;
    let client = tcp_client(addr, &settings).await;
    // More than the 100-stream cap: h2 queues the rest until streams end.
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let payload = format!("stream {i} ").repeat(100).into_bytes();
                assert_eq!(echo_once(&client, &payload).await, payload);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(client.active_streams(), 0);
    assert!(client.is_ready());
}

#[tokio::test]
async fn oversized_headers_are_refused_and_server_keeps_serving() {
    let settings = H2Settings::default();
    let (addr, _shutdown) = tcp_server(&settings, echo).await;
    let client = tcp_client(addr, &settings).await;
    let mut headers = HeaderMap::new();
    let big = HeaderValue::from_str(&"a".repeat(70 * 1024)).unwrap();
    headers.insert("x-big", big);
    let err = client
        .connect(connect_request("127.0.0.1:8080", headers).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HboneError::Status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) | HboneError::H2(_)
        ),
        "{err}"
    );
    // Refusing the stream does not break the connection, nor the server.
    assert_eq!(
        echo_once(&client, b"same connection").await,
        b"same connection"
    );
    let client = tcp_client(addr, &settings).await;
    assert_eq!(
        echo_once(&client, b"new connection").await,
        b"new connection"
    );
}

#[tokio::test]
async fn handler_sees_request_and_sets_response_headers() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let handler = move |incoming: IncomingConnect| {
        let seen_tx = seen_tx.clone();
        async move {
            let baggage = incoming.headers().get(BAGGAGE).cloned();
            let _ = seen_tx.send((
                incoming.method().clone(),
                incoming.authority().to_owned(),
                baggage,
            ));
            let mut extra = HeaderMap::new();
            extra.insert(BAGGAGE, HeaderValue::from_static("k8s.namespace.name=dst"));
            let mut stream = incoming.accept(extra).unwrap();
            let _ = stream.shutdown().await;
        }
    };
    let settings = H2Settings::default();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let token = CancellationToken::new();
    let server_settings = settings.clone();
    tokio::spawn(async move { serve(server_io, &server_settings, token, handler).await });
    let client = handshake(client_io, &settings).await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert(BAGGAGE, HeaderValue::from_static("k8s.namespace.name=src"));
    let req = connect_request("echo.default.svc.cluster.local:80", headers).unwrap();
    let (parts, mut stream) = client.connect(req).await.unwrap();
    assert_eq!(parts.headers[BAGGAGE], "k8s.namespace.name=dst");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let (method, authority, baggage) = seen_rx.recv().await.unwrap();
    assert_eq!(method, Method::CONNECT);
    assert_eq!(authority, "echo.default.svc.cluster.local:80");
    assert_eq!(baggage.unwrap(), "k8s.namespace.name=src");
}

#[tokio::test]
async fn respond_error_is_a_status_for_the_client() {
    let handler = |incoming: IncomingConnect| async move {
        incoming.respond_error(StatusCode::UNAUTHORIZED);
    };
    let settings = H2Settings::default();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let token = CancellationToken::new();
    let server_settings = settings.clone();
    tokio::spawn(async move { serve(server_io, &server_settings, token, handler).await });
    let client = handshake(client_io, &settings).await.unwrap();
    let err = client.connect(connect_req()).await.unwrap_err();
    assert!(
        matches!(err, HboneError::Status(StatusCode::UNAUTHORIZED)),
        "{err}"
    );
    assert_eq!(client.active_streams(), 0);
    assert!(client.is_ready());
}

#[tokio::test]
async fn graceful_shutdown_drains_open_streams() {
    let (client, server) = duplex_echo_client(&H2Settings::default()).await;
    let (_, mut stream) = client.connect(connect_req()).await.unwrap();
    let mut buf = [0u8; 6];
    stream.write_all(b"before").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    server.shutdown.cancel();
    eventually("client sees GOAWAY", || !client.is_ready()).await;
    assert!(client.connect(connect_req()).await.is_err());

    // The open stream is still served.
    let mut buf = [0u8; 5];
    stream.write_all(b"after").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after");
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(stream);

    server.served.await.unwrap().unwrap();
}

#[tokio::test]
async fn peer_cancel_reads_as_eof_and_writes_fail() {
    let handler = |incoming: IncomingConnect| async move {
        // Accept, then drop the stream with both directions open: RST_STREAM(CANCEL).
        drop(incoming.accept(HeaderMap::new()));
    };
    let settings = H2Settings::default();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let token = CancellationToken::new();
    let server_settings = settings.clone();
    tokio::spawn(async move { serve(server_io, &server_settings, token, handler).await });
    let client = handshake(client_io, &settings).await.unwrap();
    let (_, mut stream) = client.connect(connect_req()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty());
    let err = stream.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn peer_reset_with_error_is_broken_pipe() {
    let client = raw_server_client(
        |mut body: RecvStream, mut send: SendStream<Bytes>| async move {
            // Reset only once the client has the 200: a reset drops unsent frames.
            let _ = body.data().await;
            send.send_reset(Reason::INTERNAL_ERROR);
        },
    )
    .await;
    let (_, mut stream) = client.connect(connect_req()).await.unwrap();
    stream.write_all(b"go").await.unwrap();
    let mut out = Vec::new();
    let err = stream.read_to_end(&mut out).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn empty_data_frames_are_skipped() {
    let client = raw_server_client(
        |_body: RecvStream, mut send: SendStream<Bytes>| async move {
            send.send_data(Bytes::new(), false).unwrap();
            send.send_data(Bytes::from_static(b"hi"), false).unwrap();
            send.send_data(Bytes::new(), false).unwrap();
            send.send_data(Bytes::new(), true).unwrap();
        },
    )
    .await;
    let (_, mut stream) = client.connect(connect_req()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"hi");
}

#[tokio::test]
async fn active_and_max_streams_are_reported() {
    let (client, _server) = duplex_echo_client(&H2Settings::default()).await;
    let (_, first) = client.connect(connect_req()).await.unwrap();
    // Our cap (100) is below the server's 200.
    assert_eq!(client.max_streams(), 100);
    assert_eq!(client.active_streams(), 1);
    let (_, second) = client.connect(connect_req()).await.unwrap();
    assert_eq!(client.active_streams(), 2);
    drop((first, second));
    assert_eq!(client.active_streams(), 0);

    let settings = H2Settings {
        max_streams_per_connection: 1000,
        ..Default::default()
    };
    let (client, _server) = duplex_echo_client(&settings).await;
    let (_, _stream) = client.connect(connect_req()).await.unwrap();
    // Lowered to the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    assert_eq!(client.max_streams(), 200);
}

#[tokio::test(start_paused = true)]
async fn client_keepalive_timeout_drops_connection() {
    let (client_io, peer) = tokio::io::duplex(64 * 1024);
    // A peer that reads everything and never answers: no SETTINGS, no PONG.
    let (mut peer_read, _peer_write) = tokio::io::split(peer);
    tokio::spawn(async move { tokio::io::copy(&mut peer_read, &mut tokio::io::sink()).await });
    let client = handshake(client_io, &H2Settings::default()).await.unwrap();
    assert!(client.is_ready());
    // First PING at 10 s, its timeout at 30 s.
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(client.is_ready());
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually("keepalive failure closes the client", || !client.is_ready()).await;
}

#[tokio::test(start_paused = true)]
async fn keepalive_keeps_healthy_idle_connection() {
    let (client, server) = duplex_echo_client(&H2Settings::default()).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(client.is_ready());
    assert_eq!(echo_once(&client, b"still here").await, b"still here");
    assert!(!server.served.is_finished());
}

#[tokio::test(start_paused = true)]
async fn server_keepalive_timeout_ends_serve() {
    let (io, server) = duplex_echo_server(&H2Settings::default());
    let (mut peer_read, mut peer_write) = tokio::io::split(io);
    // Client preface and an empty SETTINGS frame, then silence.
    peer_write
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut peer_read, &mut tokio::io::sink()).await });
    let result = server.served.await.unwrap();
    assert!(
        matches!(result, Err(HboneError::KeepaliveTimeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn server_stops_before_handshake_when_cancelled() {
    let (io, server) = duplex_echo_server(&H2Settings::default());
    server.shutdown.cancel();
    server.served.await.unwrap().unwrap();
    drop(io);
}
