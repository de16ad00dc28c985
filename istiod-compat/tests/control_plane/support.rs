//! Shared harness: servers on 127.0.0.1:0, tonic clients, resource builders, log capture.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use istiod_compat::ca::auth::Authenticator;
use istiod_compat::ca::{CaMetrics, CaPolicy, CaServer, FileTokenAuthenticator, NodeAccount};
use istiod_compat::translate::{Versioned, XdsSnapshot};
use istiod_compat::xds::{AdsOptions, AdsServer, Debounce, Initial, XdsMetrics};
use mesh_ca::Ca;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Channel, Server};
use tonic::{Status, Streaming};
use xds_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use xds_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use xds_proto::rpc;
use xds_proto::security::Authorization;
use xds_proto::workload::address::Type as AddressType;
use xds_proto::workload::{Address, NetworkAddress, Service, Workload};

/// Upper bound for anything a test waits for (the machine may be busy).
pub const PATIENCE: Duration = Duration::from_secs(20);
pub const TD: &str = "cluster.local";

/// `f`, or a panic naming `what` after [`PATIENCE`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

/// Serves `routes` on 127.0.0.1:0 until the token is cancelled.
pub async fn serve(routes: Routes) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await
            .unwrap();
    });
    (addr, shutdown)
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

// ---- resources ----

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

pub fn workload(uid: &str, ip: [u8; 4], version: &str) -> (String, Versioned<Address>) {
    let address = Address {
        r#type: Some(AddressType::Workload(Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap_or(uid).into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })),
    };
    (
        uid.into(),
        Versioned {
            version: version.into(),
            resource: address,
        },
    )
}

pub fn service(name: &str, vip: [u8; 4], version: &str) -> (String, Versioned<Address>) {
    let hostname = format!("{name}.default.svc.cluster.local");
    let address = Address {
        r#type: Some(AddressType::Service(Service {
            name: name.into(),
            namespace: "default".into(),
            hostname: hostname.clone(),
            addresses: vec![NetworkAddress {
                address: vip.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    (
        format!("default/{hostname}"),
        Versioned {
            version: version.into(),
            resource: address,
        },
    )
}

pub fn authz(name: &str, version: &str) -> (String, Versioned<Authorization>) {
    (
        format!("default/{name}"),
        Versioned {
            version: version.into(),
            resource: Authorization {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            },
        },
    )
}

pub fn snapshot(
    addresses: Vec<(String, Versioned<Address>)>,
    authorizations: Vec<(String, Versioned<Authorization>)>,
) -> XdsSnapshot {
    XdsSnapshot {
        addresses: addresses.into_iter().collect(),
        authorizations: authorizations.into_iter().collect(),
        ..Default::default()
    }
}

// ---- ADS ----

/// An ADS server fed by `tx`, debounced by 1 ms so tests never wait long.
pub struct AdsHarness {
    pub addr: SocketAddr,
    pub tx: watch::Sender<Arc<XdsSnapshot>>,
    pub metrics: Arc<XdsMetrics>,
    shutdown: CancellationToken,
    server: CancellationToken,
}

impl AdsHarness {
    pub async fn start(initial: XdsSnapshot) -> Self {
        let (tx, rx) = watch::channel(Arc::new(initial));
        let metrics = Arc::new(XdsMetrics::default());
        let shutdown = CancellationToken::new();
        let ads = AdsServer::spawn(
            rx,
            AdsOptions {
                debounce: Debounce {
                    quiet: Duration::from_millis(1),
                    max_delay: Duration::from_millis(5),
                },
                initial: Initial::Ready,
            },
            metrics.clone(),
            shutdown.clone(),
        );
        let (addr, server) = serve(Routes::new(ads.into_service())).await;
        AdsHarness {
            addr,
            tx,
            metrics,
            shutdown,
            server,
        }
    }

    pub fn publish(&self, s: XdsSnapshot) {
        self.tx.send_replace(Arc::new(s));
    }

    pub async fn connect(&self, node: &str) -> AdsClient {
        let mut client = AggregatedDiscoveryServiceClient::new(channel(self.addr).await);
        let (tx, rx) = mpsc::channel(16);
        let responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        AdsClient {
            tx,
            responses,
            node: node.into(),
        }
    }
}

impl Drop for AdsHarness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.cancel();
    }
}

/// One delta ADS stream, as a node proxy drives it.
pub struct AdsClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    node: String,
}

impl AdsClient {
    pub async fn send(&self, mut req: DeltaDiscoveryRequest) {
        req.node = Some(Node {
            id: self.node.clone(),
            ..Default::default()
        });
        self.tx.send(req).await.unwrap();
    }

    /// A subscription request (the first one of a type also carries `initial`).
    pub async fn subscribe(
        &self,
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
        initial: HashMap<String, String>,
    ) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        within("an ADS response", self.responses.message())
            .await
            .expect("ADS stream error")
            .expect("ADS stream ended")
    }

    pub async fn recv_status(&mut self) -> Status {
        match within("an ADS stream error", self.responses.message()).await {
            Err(status) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, resp: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(rpc::Status {
                code: 0,
                message: message.into(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    }
}

/// Resource names of a response, sorted.
pub fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// name → version of a response.
pub fn versions(resp: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    resp.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

// ---- CA ----

/// Tokens of the CA harness.
pub const NODE1_TOKEN: &str = "token-ztunnel-node-1";
pub const NODE2_TOKEN: &str = "token-ztunnel-node-2";
pub const NODELESS_ZTUNNEL_TOKEN: &str = "token-ztunnel-nodeless";
pub const ECHO_TOKEN: &str = "token-echo";

/// A CA server with a fresh self-signed root, a token file and `echo` running on node-1.
pub struct CaHarness {
    pub addr: SocketAddr,
    pub ca: Arc<Ca>,
    pub metrics: Arc<CaMetrics>,
    _dir: tempfile::TempDir,
    server: CancellationToken,
}

impl CaHarness {
    pub async fn start(max_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("ca"), TD).unwrap());
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "- {{token: {NODE1_TOKEN}, namespace: istio-system, serviceAccount: ztunnel, node: node-1}}\n\
                 - {{token: {NODE2_TOKEN}, namespace: istio-system, serviceAccount: ztunnel, node: node-2}}\n\
                 - {{token: {NODELESS_ZTUNNEL_TOKEN}, namespace: istio-system, serviceAccount: ztunnel}}\n\
                 - {{token: {ECHO_TOKEN}, namespace: default, serviceAccount: echo, node: node-1}}\n"
            ),
        )
        .unwrap();
        let authenticator: Arc<dyn Authenticator> =
            Arc::new(FileTokenAuthenticator::load(&tokens).unwrap());
        let mut xds = XdsSnapshot::default();
        xds.identities_by_node
            .insert("node-1".into(), BTreeSet::from([spiffe("default", "echo")]));
        let (_tx, rx) = watch::channel(Arc::new(xds));
        let metrics = Arc::new(CaMetrics::default());
        let server = CaServer::new(
            ca.clone(),
            authenticator,
            Arc::new(rx),
            CaPolicy {
                trusted_node_accounts: BTreeSet::from([NodeAccount {
                    namespace: "istio-system".into(),
                    service_account: "ztunnel".into(),
                }]),
                max_ttl,
            },
            metrics.clone(),
        );
        let (addr, shutdown) = serve(Routes::new(server.into_service())).await;
        CaHarness {
            addr,
            ca,
            metrics,
            _dir: dir,
            server: shutdown,
        }
    }

    /// Calls CreateCertificate with `token` (if any) and the `ImpersonatedIdentity` (if any).
    pub async fn request(
        &self,
        token: Option<&str>,
        csr: String,
        impersonate: Option<&str>,
        ttl_secs: i64,
    ) -> Result<IstioCertificateResponse, Status> {
        create_certificate(channel(self.addr).await, token, csr, impersonate, ttl_secs).await
    }
}

impl Drop for CaHarness {
    fn drop(&mut self) {
        self.server.cancel();
    }
}

pub async fn create_certificate(
    channel: Channel,
    token: Option<&str>,
    csr: String,
    impersonate: Option<&str>,
    ttl_secs: i64,
) -> Result<IstioCertificateResponse, Status> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.into())),
            },
        )]
        .into(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl_secs,
        metadata,
    });
    if let Some(token) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut client = IstioCertificateServiceClient::new(channel);
    within("CreateCertificate", client.create_certificate(req))
        .await
        .map(tonic::Response::into_inner)
}

/// A P-256 CSR with these SANs (URIs, or `dns:` names).
pub fn csr(sans: &[&str]) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("dns:") {
            Some(dns) => SanType::DnsName((*dns).try_into().unwrap()),
            None => SanType::URI((*s).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

// ---- logs ----

/// Captures log lines of the current thread (tests run on a current-thread runtime, so the
/// servers' tasks log here too).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}
