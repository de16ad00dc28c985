//! The whole app from `app::build_with`: both gRPC ports (the TLS one with the serving
//! certificate from the CA), monitoring, and graceful shutdown with a stream open.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use istiod_compat::app::{App, BuildOptions, build_with};
use istiod_compat::ca::Outcome;
use istiod_compat::config::{Config, env};
use istiod_compat::model::Snapshot;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use xds_proto::ADDRESS_TYPE_URL;
use xds_proto::discovery::DeltaDiscoveryRequest;
use xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

use super::support::*;

struct Running {
    app: App,
    registry_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _snapshots: watch::Sender<Arc<Snapshot>>,
}

/// The app with an injected (empty) registry feed.
async fn start() -> Running {
    start_with(None).await
}

/// The app; with `registry_yaml`, the real files registry over a directory holding it.
async fn start_with(registry_yaml: Option<&str>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{token: {ECHO_TOKEN}, namespace: default, serviceAccount: echo}}\n\
             - {{token: {NODE1_TOKEN}, namespace: istio-system, serviceAccount: ztunnel, node: node-1}}\n"
        ),
    )
    .unwrap();
    let registry_dir = dir.path().join("registry");
    std::fs::create_dir(&registry_dir).unwrap();
    if let Some(yaml) = registry_yaml {
        std::fs::write(registry_dir.join("objects.yaml"), yaml).unwrap();
    }
    let ca_dir = dir.path().join("ca").display().to_string();
    let local_dir = registry_dir.display().to_string();
    let tokens = tokens.display().to_string();
    let vars: HashMap<&str, &str> = HashMap::from([
        (env::REGISTRY, "files"),
        (env::LOCAL_DIR, local_dir.as_str()),
        (env::CA_DIR, ca_dir.as_str()),
        (env::TOKENS_FILE, tokens.as_str()),
        (env::XDS_PLAINTEXT_ADDR, "127.0.0.1:0"),
        (env::XDS_TLS_ADDR, "127.0.0.1:0"),
        (env::MONITORING_ADDR, "127.0.0.1:0"),
        (env::PILOT_DEBOUNCE_AFTER, "1ms"),
        (env::PILOT_DEBOUNCE_MAX, "5ms"),
        (env::SERVING_CERT_SANS, "127.0.0.1"),
    ]);
    let cfg = Config::from_source(&vars).unwrap();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let opts = BuildOptions {
        snapshots: registry_yaml.is_none().then_some(rx),
        ..BuildOptions::default()
    };
    let app = build_with(cfg, opts).await.unwrap();
    Running {
        app,
        registry_dir,
        _dir: dir,
        _snapshots: tx,
    }
}

/// One HTTP/1.1 GET: (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    within("an HTTP response", stream.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Dials the TLS port, verifying the serving certificate as `localhost` against the roots.
#[derive(Clone)]
struct TlsDialer {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tonic::codegen::Service<http::Uri> for TlsDialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

async fn tls_channel(app: &App) -> Channel {
    let mut roots = RootCertStore::empty();
    for root in app.ca.roots() {
        roots.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let dialer = TlsDialer {
        addr: app.bound.xds_tls,
        config: Arc::new(config),
    };
    within(
        "a TLS channel",
        Endpoint::from_static("http://localhost").connect_with_connector(dialer),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn ready_and_metrics() {
    let running = start().await;
    let app = &running.app;
    assert!(within("readiness", app.ready()).await);
    let (status, body) = get(app.bound.monitoring, "/ready").await;
    assert!(status.contains("200"), "{status} {body}");
    let (status, body) = get(app.bound.monitoring, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for metric in [
        "istiod_compat_xds_connected_proxies",
        "istiod_compat_translate_snapshots_total",
    ] {
        assert!(body.contains(metric), "{metric} missing from:\n{body}");
    }
    let (status, _) = get(app.bound.monitoring, "/nope").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn both_grpc_ports_serve_ads_and_the_ca() {
    let running = start().await;
    let app = &running.app;
    assert!(within("readiness", app.ready()).await);
    let echo = spiffe("default", "echo");

    for (port, channel) in [
        ("plaintext", channel(app.bound.xds_plaintext).await),
        ("tls", tls_channel(app).await),
    ] {
        let resp = create_certificate(channel.clone(), Some(ECHO_TOKEN), csr(&[&echo]), None, 600)
            .await
            .unwrap_or_else(|e| panic!("{port}: {e:?}"));
        assert_eq!(resp.cert_chain.len(), 2, "{port}: leaf + root bundle");

        let mut ads = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = ads
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = within("the first ADS response", stream.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.type_url, ADDRESS_TYPE_URL, "{port}");
    }
    assert_eq!(app.ca_metrics.requests(Outcome::Issued), 2);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let running = start().await;
    let app = running.app;
    assert!(within("readiness", app.ready()).await);
    let mut ads = AggregatedDiscoveryServiceClient::new(channel(app.bound.xds_plaintext).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = ads
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    within("the first ADS response", stream.message())
        .await
        .unwrap()
        .unwrap();
    within("graceful shutdown", app.shutdown()).await;
    // The stream ends (cleanly or with a transport error), it does not hang.
    let end = within("the stream's end", stream.message()).await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: echo
  namespace: default
  uid: 0b1c
  labels:
    app: echo
spec:
  nodeName: node-1
  serviceAccountName: echo
  containers:
  - name: echo
    image: echo
status:
  podIP: 10.0.0.7
";

/// Files on disk → registry → translation → ADS and the node-bound CA, with a live change.
#[tokio::test]
async fn files_mode_end_to_end() {
    let running = start_with(Some(OBJECTS)).await;
    let app = &running.app;
    assert!(within("readiness", app.ready()).await);

    let mut ads = AggregatedDiscoveryServiceClient::new(channel(app.bound.xds_plaintext).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = ads
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = within("the first ADS response", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        first
            .resources
            .iter()
            .any(|r| r.name.ends_with("/Pod/default/echo")),
        "{:?}",
        first.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );

    // The node proxy of node-1 gets echo's certificate: the pod runs there.
    let echo = spiffe("default", "echo");
    let resp = create_certificate(
        channel(app.bound.xds_plaintext).await,
        Some(NODE1_TOKEN),
        csr(&[&echo]),
        Some(&echo),
        600,
    )
    .await
    .unwrap();
    assert_eq!(resp.cert_chain.len(), 2);

    // A new pod file: pushed to the open stream.
    let second = OBJECTS
        .split("---")
        .nth(1)
        .unwrap()
        .replace("name: echo\n  namespace", "name: echo2\n  namespace")
        .replace("uid: 0b1c", "uid: 0b1d")
        .replace("10.0.0.7", "10.0.0.8");
    std::fs::write(running.registry_dir.join("echo2.yaml"), second).unwrap();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|n: &String| n.ends_with("/Pod/default/echo2"))
    {
        let update = within("the new pod's push", stream.message())
            .await
            .unwrap()
            .unwrap();
        seen.extend(update.resources.into_iter().map(|r| r.name));
    }
}
