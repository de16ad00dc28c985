//! A fake delta ADS server (the generated tonic server trait) on 127.0.0.1 port 0.
//!
//! It holds resources per type URL and name, answers each initial request with every
//! resource whose version differs from the client's `initial_resource_versions` (and
//! removes the names it does not have), pushes changes to every live stream, records every
//! request it receives (with the `authorization` and `clusterid` headers), and can be taken
//! down (streams fail, new ones are refused) and brought back up.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helper")]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use xds_proto::security::Authorization;
use xds_proto::workload::{Address, Service, Workload, address};
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::pki::TestPki;
use super::{PATIENCE, grpc};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct ObservedRequest {
    /// Which stream (1, 2, ... in connection order).
    pub stream: u64,
    /// The request.
    pub request: DeltaDiscoveryRequest,
    /// `authorization` header of the stream.
    pub authorization: Option<String>,
    /// `clusterid` header of the stream.
    pub cluster_id: Option<String>,
}

impl ObservedRequest {
    /// An ACK or NACK (it answers a nonce).
    pub fn is_answer(&self) -> bool {
        !self.request.response_nonce.is_empty()
    }

    /// The NACK message, if this is a NACK.
    pub fn nack(&self) -> Option<&str> {
        self.request
            .error_detail
            .as_ref()
            .map(|s| s.message.as_str())
    }
}

/// A `Resource` holding a workload, named by its uid.
pub fn workload_resource(w: Workload) -> Resource {
    let name = w.uid.clone();
    resource(
        ADDRESS_TYPE_URL,
        &name,
        Address {
            r#type: Some(address::Type::Workload(w)),
        }
        .encode_to_vec(),
    )
}

/// A `Resource` holding a service, named `namespace/hostname`.
pub fn service_resource(s: Service) -> Resource {
    let name = format!("{}/{}", s.namespace, s.hostname);
    resource(
        ADDRESS_TYPE_URL,
        &name,
        Address {
            r#type: Some(address::Type::Service(s)),
        }
        .encode_to_vec(),
    )
}

/// A `Resource` holding a policy, named `namespace/name`.
pub fn policy_resource(p: Authorization) -> Resource {
    let name = format!("{}/{}", p.namespace, p.name);
    resource(AUTHORIZATION_TYPE_URL, &name, p.encode_to_vec())
}

/// A `Resource` of `type_url` with an `Any` body of those bytes (version set on publish).
pub fn resource(type_url: &str, name: &str, body: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value: body,
        }),
        ..Default::default()
    }
}

struct LiveStream {
    id: u64,
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    subscribed: HashSet<String>,
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, BTreeMap<String, Resource>>,
    streams: Vec<LiveStream>,
    down: bool,
    version: u64,
    nonce: u64,
    stream_ids: u64,
}

impl State {
    fn response(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> DeltaDiscoveryResponse {
        self.nonce += 1;
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: format!("n{}", self.nonce),
            resources,
            removed_resources: removed,
            ..Default::default()
        }
    }
}

struct Inner {
    state: Mutex<State>,
    requests: mpsc::UnboundedSender<ObservedRequest>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fake server. Stops when dropped.
pub struct FakeAds {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<ObservedRequest>>,
    shutdown: CancellationToken,
}

impl Drop for FakeAds {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FakeAds {
    /// Starts a plaintext (h2c) fake.
    pub async fn start() -> FakeAds {
        Self::start_with(None).await
    }

    /// Starts a fake serving TLS with `pki`'s server certificate.
    pub async fn start_tls(pki: &TestPki) -> FakeAds {
        Self::start_with(Some(pki.server_config())).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> FakeAds {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            requests: tx,
        });
        let shutdown = CancellationToken::new();
        let router = tonic::transport::Server::builder().add_service(
            AggregatedDiscoveryServiceServer::from_arc(Arc::new(AdsService {
                inner: inner.clone(),
            })),
        );
        let addr = grpc::serve(router, tls, shutdown.clone()).await;
        FakeAds {
            addr,
            inner,
            requests: tokio::sync::Mutex::new(rx),
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn https_address(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stores `resources` (each with a new version) and removes `removed`, then pushes one
    /// response with exactly those to every stream subscribed to `type_url`.
    pub fn publish(&self, type_url: &str, resources: Vec<Resource>, removed: Vec<String>) {
        let mut st = self.inner.lock();
        let mut sent = Vec::with_capacity(resources.len());
        for mut r in resources {
            st.version += 1;
            r.version = format!("v{}", st.version);
            st.resources
                .entry(type_url.into())
                .or_default()
                .insert(r.name.clone(), r.clone());
            sent.push(r);
        }
        if let Some(map) = st.resources.get_mut(type_url) {
            for name in &removed {
                map.remove(name);
            }
        }
        let ids: Vec<u64> = st
            .streams
            .iter()
            .filter(|s| s.subscribed.contains(type_url))
            .map(|s| s.id)
            .collect();
        for id in ids {
            let response = st.response(type_url, sent.clone(), removed.clone());
            if let Some(s) = st.streams.iter().find(|s| s.id == id) {
                let _ = s.tx.send(Ok(response));
            }
        }
    }

    /// Fails every live stream with UNAVAILABLE and refuses new ones until [`up`](Self::up).
    pub fn down(&self) {
        let mut st = self.inner.lock();
        st.down = true;
        for s in st.streams.drain(..) {
            let _ =
                s.tx.send(Err(Status::unavailable("fake ADS is going down")));
        }
    }

    /// Accepts streams again.
    pub fn up(&self) {
        self.inner.lock().down = false;
    }

    /// Live streams.
    pub fn streams(&self) -> usize {
        self.inner.lock().streams.len()
    }

    /// The next request received (in arrival order), failing the test after [`PATIENCE`].
    pub async fn next_request(&self) -> ObservedRequest {
        let mut rx = self.requests.lock().await;
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("no xDS request within the patience")
            .expect("fake ADS request channel closed")
    }

    /// Skips requests until one matches `pred`, and returns it.
    pub async fn wait_request(&self, pred: impl Fn(&ObservedRequest) -> bool) -> ObservedRequest {
        loop {
            let r = self.next_request().await;
            if pred(&r) {
                return r;
            }
        }
    }

    /// Waits for the answers (ACK or NACK) of `n` responses and returns them.
    pub async fn answers(&self, n: usize) -> Vec<ObservedRequest> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.wait_request(ObservedRequest::is_answer).await);
        }
        out
    }
}

/// The tonic service (named apart from the proto `Service` message).
struct AdsService {
    inner: Arc<Inner>,
}

fn header(request: &Request<Streaming<DeltaDiscoveryRequest>>, name: &str) -> Option<String> {
    request
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let authorization = header(&request, "authorization");
        let cluster_id = header(&request, "clusterid");
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut st = self.inner.lock();
            if st.down {
                return Err(Status::unavailable("fake ADS is down"));
            }
            st.stream_ids += 1;
            let id = st.stream_ids;
            st.streams.push(LiveStream {
                id,
                tx: tx.clone(),
                subscribed: HashSet::new(),
            });
            id
        };
        let inner = self.inner.clone();
        let mut incoming = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let _ = inner.requests.send(ObservedRequest {
                    stream: id,
                    request: req.clone(),
                    authorization: authorization.clone(),
                    cluster_id: cluster_id.clone(),
                });
                if !req.response_nonce.is_empty() {
                    continue;
                }
                let mut st = inner.lock();
                let Some(pos) = st.streams.iter().position(|s| s.id == id) else {
                    break;
                };
                st.streams[pos].subscribed.insert(req.type_url.clone());
                let known = &req.initial_resource_versions;
                let have = st.resources.get(&req.type_url).cloned().unwrap_or_default();
                let resources: Vec<Resource> = have
                    .values()
                    .filter(|r| known.get(&r.name) != Some(&r.version))
                    .cloned()
                    .collect();
                let removed: Vec<String> = known
                    .keys()
                    .filter(|name| !have.contains_key(*name))
                    .cloned()
                    .collect();
                let response = st.response(&req.type_url, resources, removed);
                let _ = st.streams[pos].tx.send(Ok(response));
            }
            inner.lock().streams.retain(|s| s.id != id);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
