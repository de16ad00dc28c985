//! The delta ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`) for `istio.workload.Address` and `istio.security.Authorization`
//! (reference §9).
//!
//! Data flow: translated [`XdsSnapshot`]s arrive on a `watch`; a publisher task debounces
//! bursts ([`Debounce`]), encodes each resource once and builds the on-demand address index
//! (`prepared`); every stream follows the prepared snapshot and sends each subscribed type
//! only what its client lacks (`subscription`), one task per stream (`connection`).
//!
//! Per stream and type: wildcard (`*`, or an empty first request), explicit names and
//! on-demand `network/IP` keys (answered with the workload or service holding that address,
//! the key as an alias, or as removed when nothing holds it); `initial_resource_versions` on
//! reconnect; a nonce per response; NACKs logged with the node id, counted, and the rejected
//! resources not resent until they change. An unknown type URL ends the stream with
//! `INVALID_ARGUMENT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use xds_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use crate::translate::XdsSnapshot;

mod connection;
mod prepared;
mod subscription;

pub use prepared::{Debounce, Initial};

/// Responses buffered per stream before the stream's task waits for the client.
const RESPONSE_BUFFER: usize = 8;
/// Largest request accepted (a reconnect lists every resource it has).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Translated snapshots, as the server is fed.
pub type XdsSnapshotRx = watch::Receiver<Arc<XdsSnapshot>>;

/// Settings of the ADS server.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdsOptions {
    /// Coalescing of snapshot bursts.
    pub debounce: Debounce,
    /// Whether the feed's current value is already servable.
    pub initial: Initial,
}

/// Label of per-type metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `Address` or `Authorization`.
    pub resource_type: &'static str,
}

impl TypeLabel {
    fn of(type_url: &str) -> TypeLabel {
        TypeLabel {
            resource_type: match type_url {
                ADDRESS_TYPE_URL => "Address",
                AUTHORIZATION_TYPE_URL => "Authorization",
                _ => "unknown",
            },
        }
    }
}

/// Metrics of the ADS server.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    connected: Gauge,
    pushes: Family<TypeLabel, Counter>,
    resources_sent: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    snapshots: Counter,
}

impl XdsMetrics {
    /// Registers the metrics (`istiod_compat_xds_*`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("istiod_compat_xds");
        sub.register(
            "connected_proxies",
            "Open delta ADS streams",
            self.connected.clone(),
        );
        sub.register(
            "pushes",
            "Delta ADS responses sent, by resource type",
            self.pushes.clone(),
        );
        sub.register(
            "resources_sent",
            "Resources sent in delta ADS responses, by resource type",
            self.resources_sent.clone(),
        );
        sub.register(
            "nacks",
            "Delta ADS responses rejected by proxies (NACK), by resource type",
            self.nacks.clone(),
        );
        sub.register(
            "snapshots",
            "Translated snapshots published to the streams",
            self.snapshots.clone(),
        );
    }

    /// Open streams.
    pub fn connected_proxies(&self) -> i64 {
        self.connected.get()
    }

    /// Responses sent for a type URL.
    pub fn pushes(&self, type_url: &str) -> u64 {
        self.pushes.get_or_create(&TypeLabel::of(type_url)).get()
    }

    /// NACKs received for a type URL.
    pub fn nacks(&self, type_url: &str) -> u64 {
        self.nacks.get_or_create(&TypeLabel::of(type_url)).get()
    }

    fn pushed(&self, type_url: &str, resources: usize) {
        let label = TypeLabel::of(type_url);
        self.pushes.get_or_create(&label).inc();
        self.resources_sent
            .get_or_create(&label)
            .inc_by(u64::try_from(resources).unwrap_or(u64::MAX));
    }

    fn nack(&self, type_url: &str) {
        self.nacks.get_or_create(&TypeLabel::of(type_url)).inc();
    }
}

/// The delta ADS service. Cheap to clone.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

struct Inner {
    prepared: watch::Receiver<Option<Arc<prepared::Prepared>>>,
    metrics: Arc<XdsMetrics>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

impl AdsServer {
    /// Starts following `snapshots` (the publisher task) and returns the service. Streams
    /// end when `shutdown` is cancelled.
    pub fn spawn(
        snapshots: XdsSnapshotRx,
        options: AdsOptions,
        metrics: Arc<XdsMetrics>,
        shutdown: CancellationToken,
    ) -> AdsServer {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(prepared::run_publisher(
            snapshots,
            tx,
            options.initial,
            options.debounce,
            metrics.clone(),
            shutdown.clone(),
        ));
        AdsServer {
            inner: Arc::new(Inner {
                prepared: rx,
                metrics,
                next_id: AtomicU64::new(1),
                shutdown,
            }),
        }
    }

    /// Whether a snapshot is being served (streams are answered).
    pub fn is_serving(&self) -> bool {
        self.inner.prepared.borrow().is_some()
    }

    /// The tonic service.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("serving", &self.is_serving())
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let connection = connection::Connection::new(
            id,
            self.inner.prepared.clone(),
            tx,
            self.inner.metrics.clone(),
        );
        tokio::spawn(connection.run(request.into_inner(), self.inner.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
