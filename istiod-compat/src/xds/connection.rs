//! One delta ADS stream: reads requests (subscriptions, ACKs, NACKs), follows the prepared
//! snapshots, and sends each type only what its client lacks.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};
use xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use xds_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

use super::XdsMetrics;
use super::prepared::Prepared;
use super::subscription::{Delta, TypeState};

/// NACKed resources logged one per line; the rest are summarized.
const MAX_REJECTIONS_LOGGED: usize = 20;

/// Responses (or the final error) toward the client.
pub(crate) type ResponseTx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// The client went away (or was refused): stop serving it.
struct Closed;

/// The two types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Address,
    Authorization,
}

impl Type {
    fn from_url(url: &str) -> Option<Type> {
        match url {
            ADDRESS_TYPE_URL => Some(Type::Address),
            AUTHORIZATION_TYPE_URL => Some(Type::Authorization),
            _ => None,
        }
    }

    fn url(self) -> &'static str {
        match self {
            Type::Address => ADDRESS_TYPE_URL,
            Type::Authorization => AUTHORIZATION_TYPE_URL,
        }
    }
}

/// State of one stream.
pub(crate) struct Connection {
    id: u64,
    /// `Node.id` from the first request that carried one.
    node: String,
    address: TypeState,
    authorization: TypeState,
    nonces: u64,
    prepared: watch::Receiver<Option<Arc<Prepared>>>,
    tx: ResponseTx,
    metrics: Arc<XdsMetrics>,
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        prepared: watch::Receiver<Option<Arc<Prepared>>>,
        tx: ResponseTx,
        metrics: Arc<XdsMetrics>,
    ) -> Self {
        Connection {
            id,
            node: String::new(),
            address: TypeState::default(),
            authorization: TypeState::default(),
            nonces: 0,
            prepared,
            tx,
            metrics,
        }
    }

    /// Serves the stream until the client leaves, a request is refused, or `shutdown`.
    pub(crate) async fn run(
        mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        shutdown: CancellationToken,
    ) {
        self.metrics.connected.inc();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if self.on_request(request).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                    Some(Err(status)) => {
                        debug!(conn = self.id, node = %self.node, %status, "xDS stream error");
                        break;
                    }
                },
                changed = self.prepared.changed() => {
                    if changed.is_err() || self.push_all().await.is_err() {
                        break;
                    }
                }
            }
        }
        self.metrics.connected.dec();
        info!(conn = self.id, node = %self.node, "xDS stream closed");
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(ty) = Type::from_url(&req.type_url) else {
            warn!(
                conn = self.id,
                node = %self.node,
                type_url = %req.type_url,
                "xDS request for an unknown type; closing the stream"
            );
            let status = Status::invalid_argument(format!(
                "unknown type URL {:?}: this server serves {ADDRESS_TYPE_URL} and {AUTHORIZATION_TYPE_URL}",
                req.type_url
            ));
            // Best effort: the client may already be gone.
            let _ = self.tx.send(Err(status)).await;
            return Err(Closed);
        };
        if self.node.is_empty()
            && let Some(node) = &req.node
            && !node.id.is_empty()
        {
            self.node = node.id.clone();
            info!(conn = self.id, node = %self.node, "xDS stream opened");
        }
        if !req.response_nonce.is_empty() {
            self.on_response_ack(ty, &req);
        }
        let state = self.state(ty);
        let changes_subscriptions =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if !state.started || changes_subscriptions {
            state.subscribe(
                &req.resource_names_subscribe,
                &req.resource_names_unsubscribe,
                &req.initial_resource_versions,
            );
            self.push(ty).await?;
        }
        Ok(())
    }

    /// Handles the ACK or NACK part of a request.
    fn on_response_ack(&mut self, ty: Type, req: &DeltaDiscoveryRequest) {
        let conn = self.id;
        let node = self.node.clone();
        let nonce = req.response_nonce.as_str();
        let Some(error) = &req.error_detail else {
            if !self.state(ty).ack(nonce) {
                debug!(conn, %node, type_url = ty.url(), nonce, "ACK of an unknown or stale nonce");
            }
            return;
        };
        self.metrics.nack(ty.url());
        let rejected = self.state(ty).nack(nonce, &error.message);
        warn!(
            conn,
            %node,
            type_url = ty.url(),
            nonce,
            code = error.code,
            rejected = rejected.len(),
            detail = %error.message,
            "proxy rejected xDS resources (NACK); they are not resent until they change"
        );
        for r in rejected.iter().take(MAX_REJECTIONS_LOGGED) {
            warn!(
                conn,
                %node,
                type_url = ty.url(),
                resource = %r.name,
                version = %r.version,
                reason = %r.reason,
                "resource rejected by proxy"
            );
        }
        if rejected.len() > MAX_REJECTIONS_LOGGED {
            warn!(
                conn,
                %node,
                more = rejected.len() - MAX_REJECTIONS_LOGGED,
                "more rejected resources not logged"
            );
        }
    }

    fn state(&mut self, ty: Type) -> &mut TypeState {
        match ty {
            Type::Address => &mut self.address,
            Type::Authorization => &mut self.authorization,
        }
    }

    /// A new snapshot: brings every started type up to date.
    async fn push_all(&mut self) -> Result<(), Closed> {
        self.prepared.borrow_and_update();
        self.push(Type::Address).await?;
        self.push(Type::Authorization).await
    }

    /// Sends `ty`'s delta, if there is one (or its first response is still owed).
    async fn push(&mut self, ty: Type) -> Result<(), Closed> {
        let Some(prepared) = self.prepared.borrow().clone() else {
            // No snapshot yet: answered once the first one is published.
            return Ok(());
        };
        self.nonces += 1;
        let nonce = format!("{:x}-{}", self.id, self.nonces);
        let state = self.state(ty);
        if !state.started {
            return Ok(());
        }
        let delta = state.delta(ty.url(), &prepared);
        if delta.is_empty() && !state.must_respond {
            return Ok(());
        }
        state.must_respond = false;
        state.sent(nonce.clone(), &delta);
        let response = response(ty, &delta, nonce, prepared.generation);
        debug!(
            conn = self.id,
            node = %self.node,
            type_url = ty.url(),
            nonce = %response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "xDS push"
        );
        self.metrics.pushed(ty.url(), response.resources.len());
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}

fn response(ty: Type, delta: &Delta, nonce: String, generation: u64) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: generation.to_string(),
        resources: delta
            .updates
            .iter()
            .map(|u| Resource {
                version: u.resource.version.clone(),
                resource: Some(u.resource.any.clone()),
                name: u.name.clone(),
                aliases: u.aliases.clone(),
                ttl: None,
                cache_control: None,
            })
            .collect(),
        type_url: ty.url().to_string(),
        nonce,
        removed_resources: delta.removed.clone(),
    }
}
