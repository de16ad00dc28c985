//! The delta ADS stream: initial requests, ACK/NACK per response, publish, reconnect.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost_types::value::Kind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};
use xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use xds_proto::rpc::Status as RpcStatus;

use super::resources::{Resources, SUBSCRIBED};
use crate::config::Config;
use crate::control::{AuthHeaders, ControlTarget, describe_status};
use crate::metrics::{TerminationReason, XdsMetrics};
use crate::readiness::BlockReady;
use crate::socket::SocketFactory;
use crate::state::StateStore;

/// Largest response accepted (reference §9).
pub const MAX_DECODING_MESSAGE_SIZE: usize = 200 << 20;
/// First reconnect delay; doubled on each consecutive failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Reconnect delays never exceed this.
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// `google.rpc.Status.code` of a NACK's `error_detail` (reference §9: the presence of
/// `error_detail` is what makes a NACK).
const NACK_CODE: i32 = 0;

/// A delta ADS client for Address and Authorization resources. Build it with
/// [`XdsClient::new`], then [`run`](XdsClient::run) it on a task.
pub struct XdsClient {
    target: ControlTarget,
    auth: AuthHeaders,
    node: Node,
    store: Arc<StateStore>,
    local: Option<Arc<StateStore>>,
    metrics: Arc<XdsMetrics>,
    ready: Option<BlockReady>,
    resources: Resources,
    synced: HashSet<&'static str>,
}

/// How one stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The stream never started (connect, TLS, credentials, or the call was refused).
    NotConnected(String),
    /// The server ended the stream cleanly.
    Closed { received: bool },
    /// The stream failed after it started.
    Failed { status: Status, received: bool },
}

impl XdsClient {
    /// A client for the server at `address` (normalized, with scheme), with the roots,
    /// token, cluster id and node identity of `cfg`, publishing into `store`.
    pub fn new(
        cfg: &Config,
        address: String,
        store: Arc<StateStore>,
        metrics: Arc<XdsMetrics>,
        sockets: SocketFactory,
    ) -> XdsClient {
        XdsClient {
            target: ControlTarget {
                address,
                roots: cfg.control.xds_root_ca.clone(),
                sockets,
            },
            auth: AuthHeaders {
                token: cfg.control.auth_token.clone(),
                cluster_id: cfg.cluster_id.clone(),
            },
            node: node(cfg),
            store,
            local: None,
            metrics,
            ready: None,
            resources: Resources::default(),
            synced: HashSet::new(),
        }
    }

    /// Merges the resources of `local` (the local config file's store, kept up to date by
    /// its watcher) into every published state: xDS resources first, then the file's, so
    /// the file wins where both define the same key. A change of either republishes.
    pub fn with_local(mut self, local: Arc<StateStore>) -> XdsClient {
        self.local = Some(local);
        self
    }

    /// Holds `guard` (readiness task `state manager`) until the first response of every
    /// subscribed type has been processed and answered.
    pub fn with_readiness(mut self, guard: BlockReady) -> XdsClient {
        self.ready = Some(guard);
        self
    }

    /// The xDS node id this client sends.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// Runs until `shutdown`: connects, keeps the stream, reconnects with backoff (10 ms
    /// doubling to 15 s; reset once a stream delivers a response). While disconnected the
    /// last published state keeps serving.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let channel = match self.target.channel() {
            Ok(channel) => channel,
            Err(e) => {
                error!(error = %e, "xDS disabled: cannot build the channel");
                return;
            }
        };
        let mut local_rx = self.local.as_ref().map(|l| l.subscribe());
        if self.local.is_some() {
            self.publish();
        }
        let mut backoff = Backoff::default();
        loop {
            let end = tokio::select! {
                () = shutdown.cancelled() => return,
                end = self.stream(&channel, &mut local_rx) => end,
            };
            let (reason, delay) = backoff.after(&end);
            self.metrics.terminated(reason);
            match &end {
                StreamEnd::Closed { .. } => {
                    info!(address = %self.target.address, retry_in = ?delay, "xDS stream closed by the server");
                }
                StreamEnd::NotConnected(error) => {
                    warn!(address = %self.target.address, %error, retry_in = ?delay,
                        "xDS connection failed; keeping the last good state");
                }
                StreamEnd::Failed { status, .. } => {
                    warn!(address = %self.target.address, error = %describe_status(status),
                        reason = reason.as_str(), retry_in = ?delay,
                        "xDS stream failed; keeping the last good state");
                }
            }
            let deadline = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = local_changed(&mut local_rx) => self.publish(),
                }
            }
        }
    }

    /// One ADS stream, from the initial requests until it ends.
    async fn stream(
        &mut self,
        channel: &Channel,
        local_rx: &mut Option<watch::Receiver<u64>>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::unbounded_channel();
        for type_url in SUBSCRIBED {
            let initial = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_string(),
                initial_resource_versions: self.resources.initial_versions(type_url),
                ..Default::default()
            };
            // The receiver is alive: it is moved into the request below.
            let _ = tx.send(initial);
        }
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        if let Err(e) = self.auth.apply(request.metadata_mut()).await {
            return StreamEnd::NotConnected(e.to_string());
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        let mut responses = match client.delta_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamEnd::NotConnected(describe_status(&status)),
        };
        self.metrics.connected();
        info!(address = %self.target.address, node = %self.node.id, "xDS stream established");
        let mut received = false;
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        received = true;
                        self.handle(response, &tx);
                    }
                    Ok(None) => return StreamEnd::Closed { received },
                    Err(status) => return StreamEnd::Failed { status, received },
                },
                () = local_changed(local_rx) => self.publish(),
            }
        }
    }

    /// Applies one response, publishes if anything changed, and answers it (ACK, or NACK
    /// naming the rejected resources).
    fn handle(
        &mut self,
        response: DeltaDiscoveryResponse,
        tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    ) {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        self.metrics.received(&type_url, response.encoded_len());
        let error =
            match self
                .resources
                .apply(&type_url, response.resources, response.removed_resources)
            {
                Ok(applied) => {
                    if applied.changed {
                        self.publish();
                    }
                    debug!(%type_url, updated = applied.updated, removed = applied.removed,
                    rejected = applied.rejected.len(), version = self.store.version(),
                    "xDS response applied");
                    if let Some(url) = SUBSCRIBED.into_iter().find(|u| *u == type_url) {
                        self.synced.insert(url);
                    }
                    applied.nack_message()
                }
                Err(e) => Some(e.to_string()),
            };
        if let Some(message) = &error {
            self.metrics.nacked(&type_url);
            warn!(%type_url, %nonce, rejected = %message, "xDS NACK: rejected resources were not applied");
        }
        let answer = DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail: error.map(|message| RpcStatus {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        // The stream owns the receiver; if it is gone the stream is ending anyway.
        let _ = tx.send(answer);
        if self.ready.is_some() && SUBSCRIBED.iter().all(|u| self.synced.contains(u)) {
            self.ready = None;
            info!(version = self.store.version(), "xDS initial sync complete");
        }
    }

    /// Builds the whole state (xDS resources, then the local file's) and swaps it in.
    fn publish(&self) {
        let local = self.local.as_ref().map(|l| l.snapshot());
        let state = self.resources.build(local.as_deref());
        self.store.publish(state);
    }
}

/// Completes when the local config store changes; never without one (or once its writer
/// is gone).
async fn local_changed(rx: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// `ztunnel~<INSTANCE_IP|1.1.1.1>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`
/// with metadata NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID and every
/// `ISTIO_META_*` entry (which may override those).
fn node(cfg: &Config) -> Node {
    let c = &cfg.control;
    let ip = c
        .instance_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "1.1.1.1".into());
    let id = format!(
        "ztunnel~{ip}~{}.{}~{}.svc.cluster.local",
        c.pod_name, c.pod_namespace, c.pod_namespace
    );
    let mut metadata: BTreeMap<String, String> = BTreeMap::from([
        ("NAME".into(), c.pod_name.clone()),
        ("NAMESPACE".into(), c.pod_namespace.clone()),
        (
            "INSTANCE_IPS".into(),
            c.instance_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ),
        ("NODE_NAME".into(), cfg.node_name.clone()),
        ("CLUSTER_ID".into(), cfg.cluster_id.clone()),
    ]);
    metadata.extend(c.proxy_metadata.clone());
    Node {
        id,
        metadata: Some(prost_types::Struct {
            fields: metadata
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        prost_types::Value {
                            kind: Some(Kind::StringValue(v)),
                        },
                    )
                })
                .collect(),
        }),
        build_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Reconnect delays: 10 ms doubling to 15 s, reset after a stream that delivered something.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    /// The termination reason and the delay before reconnecting (reference §9): a clean
    /// end reconnects at once, transient stream errors after 10 ms, everything else backs
    /// off. A stream that delivered nothing always backs off, so a server that accepts and
    /// drops every stream is not hammered.
    fn after(&mut self, end: &StreamEnd) -> (TerminationReason, Duration) {
        let received = matches!(
            end,
            StreamEnd::Closed { received: true } | StreamEnd::Failed { received: true, .. }
        );
        if received {
            *self = Backoff::default();
        }
        match end {
            StreamEnd::NotConnected(_) => (TerminationReason::ConnectionError, self.next()),
            StreamEnd::Closed { received: true } => (TerminationReason::Complete, Duration::ZERO),
            StreamEnd::Closed { received: false } => (TerminationReason::Complete, self.next()),
            StreamEnd::Failed { status, received } if transient(status) => (
                TerminationReason::Reconnect,
                if *received {
                    BACKOFF_INITIAL
                } else {
                    self.next()
                },
            ),
            StreamEnd::Failed { .. } => (TerminationReason::Error, self.next()),
        }
    }
}

/// Stream errors that call for a quick reconnect.
fn transient(status: &Status) -> bool {
    match status.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => {
            let m = status.message();
            m.contains("transport is closing") || m.contains("received prior goaway")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn node_id_and_metadata() {
        let src: HashMap<&str, &str> = HashMap::from([
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/echo/echo"),
            ("XDS_ADDRESS", "istiod:15012"),
            ("POD_NAME", "ztunnel-x"),
            ("POD_NAMESPACE", "istio-system"),
            ("NODE_NAME", "node1"),
            ("CLUSTER_ID", "c1"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
        ]);
        let cfg = Config::from_source(&src).unwrap();
        let n = node(&cfg);
        assert_eq!(
            n.id,
            "ztunnel~1.1.1.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
        let fields = n.metadata.unwrap().fields;
        let get = |k: &str| match fields.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "ztunnel-x");
        assert_eq!(get("NAMESPACE"), "istio-system");
        assert_eq!(get("INSTANCE_IPS"), "");
        assert_eq!(get("NODE_NAME"), "node1");
        assert_eq!(get("CLUSTER_ID"), "c1");
        assert_eq!(get("DNS_CAPTURE"), "true");
    }

    #[test]
    fn backoff_per_termination() {
        let mut b = Backoff::default();
        let refused = StreamEnd::NotConnected("refused".into());
        let delays: Vec<Duration> = (0..12).map(|_| b.after(&refused).1).collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert_eq!(delays[11], BACKOFF_MAX);
        // A healthy stream resets the progression.
        let closed = StreamEnd::Closed { received: true };
        assert_eq!(
            b.after(&closed),
            (TerminationReason::Complete, Duration::ZERO)
        );
        let reset = StreamEnd::Failed {
            status: Status::unknown("h2 protocol error"),
            received: true,
        };
        assert_eq!(
            b.after(&reset),
            (TerminationReason::Reconnect, BACKOFF_INITIAL)
        );
        let denied = StreamEnd::Failed {
            status: Status::permission_denied("no"),
            received: false,
        };
        assert_eq!(
            b.after(&denied),
            (TerminationReason::Error, Duration::from_millis(10))
        );
        assert_eq!(b.after(&denied).1, Duration::from_millis(20));
        let goaway = Status::unavailable("received prior goaway: code: NO_ERROR");
        assert!(transient(&goaway));
        assert!(!transient(&Status::unavailable("connection refused")));
    }
}
