//! Inbound: HBONE on 15008 (mTLS + HTTP/2 CONNECT) and captured plaintext on 15006.
//! Both authorize with L4 policy and deliver to the local workload, keeping the client's
//! source IP when the proxy may spoof it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use mesh_core::Identity;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::error::ProxyError;
use super::hbone::headers::{self, Authority};
use super::hbone::{self, IncomingConnect};
use super::{ProxyInputs, copy, is_illegal_port};
use crate::drain::Drain;
use crate::identity::BoxFuture;
use crate::metrics::{ConnectionLabels, Reporter, SecurityPolicy};
use crate::proxy::listener::Handler;
use crate::rbac::RbacConnection;
use crate::socket::canonical;
use crate::state::{ProxyState, Workload};
use crate::tls;

/// How long a client may take to complete the TLS handshake on 15008.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HBONE listener's handler.
pub struct InboundHbone {
    pub(crate) inputs: Arc<ProxyInputs>,
    pub(crate) drain: Drain,
}

impl Handler for InboundHbone {
    fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let peer = canonical(peer);
            if let Err(e) = self.serve(stream, peer).await {
                warn!(target: "access", direction = "inbound", src.addr = %peer, error = %e, "connection failed");
            }
        })
    }
}

impl InboundHbone {
    async fn serve(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), ProxyError> {
        let local = canonical(stream.local_addr()?);
        let workload = self.inputs.local_workload().await?;
        let cert = self
            .inputs
            .certs
            .fetch_certificate(&workload.identity())
            .await?;
        let config = self.inputs.server_config(&cert)?;
        // A client that stalls mid-handshake must neither hold a task forever nor delay a
        // drain: bound the handshake and abandon it when we stop accepting.
        let handshake = TlsAcceptor::from(config).accept(super::tls_transport(stream));
        let tls = tokio::select! {
            res = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake) => match res {
                Ok(res) => res.map_err(|source| ProxyError::TlsHandshake { peer, source })?,
                Err(_) => {
                    return Err(ProxyError::TlsHandshake {
                        peer,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no complete handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
                        ),
                    });
                }
            },
            _ = self.drain.stop_accepting.cancelled() => return Ok(()),
        };
        let peer_identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| tls::peer_identity(certs));
        debug!(src.identity = ?peer_identity, "hbone connection established");
        let inputs = self.inputs.clone();
        hbone::serve(
            tls,
            &self.inputs.h2,
            self.drain.stop_accepting.clone(),
            move |req| {
                let inputs = inputs.clone();
                let peer_identity = peer_identity.clone();
                async move { handle_connect(inputs, req, peer, local, peer_identity).await }
            },
        )
        .await?;
        Ok(())
    }
}

/// Where an inbound CONNECT goes on this workload: the validation every HBONE stream passes
/// before policy. `authority` is the raw `:authority`; `local` is the address the HBONE
/// connection was accepted on (canonical). An IP authority must be `local`'s IP (unless the
/// workload has an application tunnel); a hostname authority is mapped through the service's
/// port map; the proxy's own ports are refused.
///
/// Public for the fuzz targets (`fuzz/targets`); the data path is [`InboundHbone`].
pub fn resolve_target(
    state: &ProxyState,
    workload: &Workload,
    authority: &str,
    local: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let parsed = headers::parse_authority(authority)
        .map_err(|_| ProxyError::BadAuthority(authority.to_string()))?;
    let port = match parsed {
        Authority::Ip(addr) => {
            let addr = canonical(addr);
            if addr.ip() != local.ip() && workload.application_tunnel.is_none() {
                return Err(ProxyError::IpMismatch {
                    authority: authority.to_string(),
                    local,
                });
            }
            addr.port()
        }
        Authority::Hostname { host, port } => {
            let svc = state
                .service_by_hostname(&host, &workload.namespace)
                .ok_or_else(|| ProxyError::NoTargetPort(authority.to_string()))?;
            workload
                .services
                .get(&svc.namespaced_hostname())
                .and_then(|ports| ports.get(&port).copied())
                .filter(|p| *p != 0)
                .or_else(|| svc.ports.get(&port).copied().filter(|p| *p != 0))
                .ok_or_else(|| ProxyError::NoTargetPort(authority.to_string()))?
        }
    };
    let target = SocketAddr::new(local.ip(), port);
    if is_illegal_port(port) {
        return Err(ProxyError::SelfCall(target));
    }
    Ok(target)
}

async fn handle_connect(
    inputs: Arc<ProxyInputs>,
    req: IncomingConnect,
    peer: SocketAddr,
    local: SocketAddr,
    peer_identity: Option<Identity>,
) {
    let start = Instant::now();
    let authority = req.authority().to_string();
    let workload = inputs.local_workload().await;
    let mut metrics = inputs.metrics.traffic.open(inbound_labels(
        &inputs,
        peer,
        peer_identity.as_ref(),
        workload.as_deref().ok(),
        Some((&authority, req.headers())),
    ));
    let result = async {
        let workload = workload?;
        let state = inputs.state.snapshot();
        let dst = resolve_target(&state, &workload, &authority, local)?;
        let conn = RbacConnection {
            src: peer,
            src_identity: peer_identity.clone(),
            dst,
            dst_network: inputs.cfg.network.clone(),
        };
        // Register before checking so a policy change in between is not missed.
        let guard = inputs
            .connections
            .register(conn.clone(), workload.uid.clone());
        state.assert_rbac(&workload, &conn)?;
        drop(state);
        let upstream = inputs.connect_local(dst, peer).await?;
        Ok::<_, ProxyError>((workload, dst, guard, upstream))
    }
    .await;

    let (workload, dst, guard, mut upstream) = match result {
        Ok(ok) => ok,
        Err(e) => {
            metrics.failed(e.response_flag());
            warn!(
                target: "access", direction = "inbound",
                src.addr = %peer,
                src.identity = peer_identity.as_ref().map(|i| i.to_string()),
                dst.addr = %local,
                dst.hbone_addr = %authority,
                response_flags = e.response_flag(),
                error = %e,
                "connection complete"
            );
            req.respond_error(e.status());
            return;
        }
    };
    let mut resp_headers = HeaderMap::new();
    if let Ok(v) = headers::Baggage::from_workload(&workload, &inputs.cfg.cluster_id).to_header() {
        resp_headers.insert(headers::BAGGAGE, v);
    }
    let mut tunnel = match req.accept(resp_headers) {
        Ok(s) => s,
        Err(e) => {
            let e = ProxyError::Hbone(e);
            metrics.failed(e.response_flag());
            warn!(target: "access", direction = "inbound", src.addr = %peer, error = %e, "connection failed");
            return;
        }
    };
    let res = copy::tunnel_counted(
        &mut upstream,
        &mut tunnel,
        copy::TunnelSide::Upstream,
        Some(&guard.revoked),
        metrics.bytes(),
    )
    .await;
    if let Err(e) = &res {
        metrics.failed(e.response_flag());
    }
    log_inbound(
        peer,
        peer_identity.as_ref(),
        dst,
        Some(&authority),
        &workload,
        start,
        res,
    );
}

/// The `reporter="destination"` labels. The source is the workload at the peer address when
/// the state knows it, else what the CONNECT's `baggage` says; its principal only ever comes
/// from the mTLS peer. `hbone` is the CONNECT authority and headers (none for plaintext).
fn inbound_labels(
    inputs: &ProxyInputs,
    peer: SocketAddr,
    peer_identity: Option<&Identity>,
    local: Option<&Workload>,
    hbone: Option<(&str, &HeaderMap)>,
) -> ConnectionLabels {
    let i = inputs.metrics.traffic.interner();
    let security = if hbone.is_some() {
        SecurityPolicy::MutualTls
    } else {
        SecurityPolicy::Unknown
    };
    let state = inputs.state.snapshot();
    let mut labels = ConnectionLabels::new(Reporter::Destination, security)
        .with_source_principal(i, peer_identity);
    if let Some(src) = state.workload_by_ip(&inputs.cfg.network, peer.ip()) {
        labels = labels.with_source(i, &src);
    } else if let Some(b) = hbone
        .and_then(|(_, h)| h.get(headers::BAGGAGE))
        .and_then(|v| headers::Baggage::parse(v.as_bytes()).ok())
    {
        let from_baggage = Workload {
            name: b.workload_name.clone(),
            namespace: b.namespace,
            workload_name: b.workload_name,
            canonical_name: b.service_name,
            canonical_revision: b.service_version,
            cluster_id: b.cluster,
            ..Workload::default()
        };
        labels = labels.with_source(i, &from_baggage);
    }
    if let Some(w) = local {
        labels = labels
            .with_destination(i, w)
            .with_destination_principal(i, Some(&w.identity()));
        if let Some((authority, _)) = hbone
            && let Ok(Authority::Hostname { host, .. }) = headers::parse_authority(authority)
            && let Some(svc) = state.service_by_hostname(&host, &w.namespace)
        {
            labels = labels.with_service(i, &svc);
        }
    }
    labels
}

fn log_inbound(
    peer: SocketAddr,
    peer_identity: Option<&Identity>,
    dst: SocketAddr,
    hbone_addr: Option<&str>,
    workload: &Workload,
    start: Instant,
    res: Result<(u64, u64), ProxyError>,
) {
    let duration = format!("{}ms", start.elapsed().as_millis());
    let src_identity = peer_identity.map(|i| i.to_string());
    match res {
        Ok((recv, sent)) => info!(
            target: "access", direction = "inbound",
            src.addr = %peer,
            src.identity = src_identity,
            dst.addr = %dst,
            dst.hbone_addr = hbone_addr,
            dst.workload = %workload.name,
            dst.namespace = %workload.namespace,
            dst.identity = %workload.identity(),
            bytes_sent = sent,
            bytes_recv = recv,
            duration,
            "connection complete"
        ),
        Err(e) => tracing::error!(
            target: "access", direction = "inbound",
            src.addr = %peer,
            src.identity = src_identity,
            dst.addr = %dst,
            dst.hbone_addr = hbone_addr,
            dst.workload = %workload.name,
            dst.identity = %workload.identity(),
            response_flags = e.response_flag(),
            duration,
            error = %e,
            "connection complete"
        ),
    }
}

/// Captured plaintext inbound (15006): allowed unless policy (e.g. STRICT) denies it.
pub struct InboundPlaintext {
    pub(crate) inputs: Arc<ProxyInputs>,
}

impl Handler for InboundPlaintext {
    fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let start = Instant::now();
            let peer = canonical(peer);
            let local = self.inputs.local_workload().await;
            let mut metrics = self.inputs.metrics.traffic.open(inbound_labels(
                &self.inputs,
                peer,
                None,
                local.as_deref().ok(),
                None,
            ));
            let result = async {
                let dst = self
                    .inputs
                    .orig_dst
                    .original_dst(&stream)
                    .map_err(ProxyError::OriginalDst)?;
                if is_illegal_port(dst.port()) {
                    return Err(ProxyError::SelfCall(dst));
                }
                let workload = local?;
                let conn = RbacConnection {
                    src: peer,
                    src_identity: None,
                    dst,
                    dst_network: self.inputs.cfg.network.clone(),
                };
                let guard = self
                    .inputs
                    .connections
                    .register(conn.clone(), workload.uid.clone());
                self.inputs.state.snapshot().assert_rbac(&workload, &conn)?;
                let upstream = self.inputs.connect_local(dst, peer).await?;
                Ok((workload, dst, guard, upstream))
            }
            .await;
            match result {
                Ok((workload, dst, guard, mut upstream)) => {
                    let res = copy::bidirectional_counted(
                        &mut stream,
                        &mut upstream,
                        Some(&guard.revoked),
                        metrics.bytes(),
                    )
                    .await;
                    if let Err(e) = &res {
                        metrics.failed(e.response_flag());
                    }
                    log_inbound(peer, None, dst, None, &workload, start, res);
                }
                Err(e) => {
                    metrics.failed(e.response_flag());
                    warn!(
                    target: "access", direction = "inbound",
                    src.addr = %peer,
                    connection_security_policy = "unknown",
                    response_flags = e.response_flag(),
                    error = %e,
                    "connection complete"
                    )
                }
            }
        })
    }
}
