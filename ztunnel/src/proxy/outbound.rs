//! Outbound (15001, and SOCKS5): a pod's captured connection goes to its destination in an
//! HBONE tunnel when the destination is in the mesh, or as plain TCP when it is not.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use mesh_core::Identity;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::error::ProxyError;
use super::hbone::{self, headers};
use super::pool::WorkloadKey;
use super::{ProxyInputs, copy, is_illegal_port};
use crate::identity::BoxFuture;
use crate::metrics::{ByteCounters, ConnectionLabels, Reporter, SecurityPolicy, TrafficMetrics};
use crate::proxy::listener::Handler;
use crate::state::{InboundProtocol, LoadBalancerMode, ProxyState, Service, Workload};

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// HBONE to `dst` (podIP:15008) with CONNECT `:authority` = `target`.
    Hbone {
        /// TCP destination of the tunnel.
        dst: SocketAddr,
        /// The `:authority` (workload IP and target port).
        target: SocketAddr,
        /// Identities the peer may present (service SANs + workload identity).
        expected: Vec<Identity>,
        /// The destination workload's identity (for logs).
        dst_identity: Identity,
        /// Service hostname when the connection was service-addressed.
        service: Option<String>,
    },
    /// Plain TCP to a mesh workload that does not speak HBONE.
    Tcp {
        /// Destination.
        dst: SocketAddr,
    },
    /// Not in the mesh: plain TCP to the original destination.
    Passthrough {
        /// Destination.
        dst: SocketAddr,
    },
}

/// Picks the destination IP: the original one if the workload has it, else the first of
/// the same family, else any.
fn pick_ip(workload: &Workload, original: IpAddr) -> Option<IpAddr> {
    if workload.workload_ips.contains(&original) {
        return Some(original);
    }
    workload
        .workload_ips
        .iter()
        .find(|ip| ip.is_ipv4() == original.is_ipv4())
        .or_else(|| workload.workload_ips.first())
        .copied()
}

fn expected_identities(workload: &Workload, service: Option<&Service>) -> Vec<Identity> {
    let mut ids: Vec<Identity> = service
        .map(|s| {
            s.subject_alt_names
                .iter()
                .filter_map(|san| san.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let own = workload.identity();
    if !ids.contains(&own) {
        ids.push(own);
    }
    ids
}

/// Decides how to reach `original` from `source` (reference §5.1, without waypoints and
/// multi-network gateways, which come with the control plane).
pub fn route(
    state: &ProxyState,
    network: &str,
    source: &Workload,
    original: SocketAddr,
) -> Result<Route, ProxyError> {
    // Workload IPs win over service VIPs.
    let (workload, port, service) = if let Some(w) = state.workload_by_ip(network, original.ip()) {
        (w, original.port(), None)
    } else if let Some(svc) = state.service_by_vip(network, original.ip(), &source.namespace) {
        if svc
            .load_balancer
            .as_ref()
            .is_some_and(|lb| lb.mode == LoadBalancerMode::Passthrough)
        {
            return Ok(Route::Passthrough { dst: original });
        }
        let up = state
            .load_balance(&svc, original.port(), Some(source))
            .ok_or_else(|| ProxyError::NoHealthyUpstream(svc.hostname.clone()))?;
        (up.workload, up.port, Some(svc))
    } else {
        return Ok(Route::Passthrough { dst: original });
    };

    let ip = pick_ip(&workload, original.ip())
        .ok_or_else(|| ProxyError::NoAddress(workload.uid.clone()))?;
    let target = SocketAddr::new(ip, port);
    Ok(match workload.protocol {
        InboundProtocol::Hbone => Route::Hbone {
            dst: SocketAddr::new(ip, super::HBONE_PORT),
            target,
            expected: expected_identities(&workload, service.as_deref()),
            dst_identity: workload.identity(),
            service: service.map(|s| s.hostname.clone()),
        },
        InboundProtocol::Tcp => Route::Tcp { dst: target },
    })
}

/// The client address to report: a loopback peer (the eBPF capture's rewrite target) is the
/// source workload itself, at the same port; anything else is taken as is.
fn client_addr(peer: SocketAddr, source: &Workload) -> SocketAddr {
    let family_match = |ip: &&IpAddr| ip.is_ipv4() == peer.is_ipv4();
    match source.workload_ips.iter().find(family_match) {
        Some(ip) if peer.ip().is_loopback() => SocketAddr::new(*ip, peer.port()),
        _ => peer,
    }
}

/// The outbound capture handler.
pub struct Outbound {
    pub(crate) inputs: Arc<ProxyInputs>,
}

impl Handler for Outbound {
    fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let orig = match self.inputs.orig_dst.original_dst(&stream) {
                Ok(d) => d,
                Err(e) => {
                    warn!(target: "access", direction = "outbound", src.addr = %peer, error = %ProxyError::OriginalDst(e), "connection failed");
                    return;
                }
            };
            self.inputs.clone().proxy_outbound(stream, peer, orig).await;
        })
    }
}

impl ProxyInputs {
    /// Proxies one outbound connection from `peer` that was going to `orig`.
    pub async fn proxy_outbound(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        orig: SocketAddr,
    ) {
        let start = Instant::now();
        if orig.ip().is_loopback() && is_illegal_port(orig.port()) {
            warn!(target: "access", direction = "outbound", src.addr = %peer, dst.addr = %orig, error = %ProxyError::SelfCall(orig), "connection failed");
            return;
        }
        let source = match self.local_workload().await {
            Ok(w) => w,
            Err(e) => {
                warn!(target: "access", direction = "outbound", src.addr = %peer, dst.addr = %orig, error = %e, "connection failed");
                return;
            }
        };
        // eBPF capture rewrites the app's connect to 127.0.0.1:15001 inside its pod: the
        // client is still the pod (same port), so report and forward the pod's address, as
        // under iptables REDIRECT.
        let peer = client_addr(peer, &source);
        let state = self.state.snapshot();
        let route = route(&state, &self.cfg.network, &source, orig);
        let labels = outbound_labels(
            &self.metrics.traffic,
            &state,
            &self.cfg.network,
            &source,
            orig,
            route.as_ref().ok(),
        );
        drop(state);
        let mut metrics = self.metrics.traffic.open(labels);
        let src_identity = source.identity();
        let result = match route {
            Err(e) => Err((e, None)),
            Ok(route) => {
                debug!(?route, "outbound route");
                self.forward(stream, peer, &src_identity, &source, route, metrics.bytes())
                    .await
            }
        };
        if let Err((e, _)) = &result {
            metrics.failed(e.response_flag());
        }
        let duration = start.elapsed();
        match result {
            Ok(done) => info!(
                target: "access", direction = "outbound",
                src.addr = %peer,
                src.workload = %source.name,
                src.namespace = %source.namespace,
                src.identity = %src_identity,
                dst.addr = %done.dst,
                dst.hbone_addr = done.hbone_addr.map(|a| a.to_string()),
                dst.identity = done.dst_identity.map(|i| i.to_string()),
                bytes_sent = done.bytes.0,
                bytes_recv = done.bytes.1,
                duration = format!("{}ms", duration.as_millis()),
                "connection complete"
            ),
            Err((e, dst)) => tracing::error!(
                target: "access", direction = "outbound",
                src.addr = %peer,
                src.workload = %source.name,
                src.identity = %src_identity,
                dst.addr = dst.map(|d| d.to_string()).unwrap_or_else(|| orig.to_string()),
                response_flags = e.response_flag(),
                duration = format!("{}ms", duration.as_millis()),
                error = %e,
                "connection complete"
            ),
        }
    }

    async fn forward(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        src_identity: &Identity,
        source: &Workload,
        route: Route,
        counters: &ByteCounters,
    ) -> Result<Completed, (ProxyError, Option<SocketAddr>)> {
        match route {
            Route::Passthrough { dst } | Route::Tcp { dst } => {
                let mut upstream = self
                    .sockets
                    .connect(dst, None, self.cfg.connect_timeout)
                    .await
                    .map_err(|source| (ProxyError::Connect { dst, source }, Some(dst)))?;
                let bytes = copy::bidirectional_counted(&mut stream, &mut upstream, None, counters)
                    .await
                    .map_err(|e| (e, Some(dst)))?;
                Ok(Completed {
                    dst,
                    hbone_addr: None,
                    dst_identity: None,
                    bytes,
                })
            }
            Route::Hbone {
                dst,
                target,
                expected,
                dst_identity,
                service,
            } => {
                let key = WorkloadKey {
                    src_id: src_identity.clone(),
                    dst_id: expected,
                    dst,
                    src: peer.ip(),
                };
                let mut extra = HeaderMap::new();
                if let Ok(v) =
                    headers::Baggage::from_workload(source, &self.cfg.cluster_id).to_header()
                {
                    extra.insert(headers::BAGGAGE, v);
                }
                if let Ok(v) = headers::forwarded_header(peer, service.as_deref()) {
                    extra.insert(headers::FORWARDED, v);
                }
                if let Ok(v) = headers::TraceParent::random().to_header() {
                    extra.insert(headers::TRACEPARENT, v);
                }
                let req = hbone::connect_request(&target.to_string(), extra)
                    .map_err(|e| (e.into(), Some(dst)))?;
                let (_resp, mut tunnel) = self
                    .pool
                    .send_request(&key, req)
                    .await
                    .map_err(|e| (ProxyError::Hbone(e), Some(dst)))?;
                let bytes = copy::tunnel_counted(
                    &mut stream,
                    &mut tunnel,
                    copy::TunnelSide::Downstream,
                    None,
                    counters,
                )
                .await
                .map_err(|e| (e, Some(dst)))?;
                Ok(Completed {
                    dst,
                    hbone_addr: Some(target),
                    dst_identity: Some(dst_identity),
                    bytes,
                })
            }
        }
    }
}

/// The `reporter="source"` labels: the local workload and identity, the service when the
/// original destination is a VIP, and the destination workload the route picked (its
/// principal only when HBONE verifies it).
fn outbound_labels(
    traffic: &TrafficMetrics,
    state: &ProxyState,
    network: &str,
    source: &Workload,
    orig: SocketAddr,
    route: Option<&Route>,
) -> ConnectionLabels {
    let i = traffic.interner();
    let security = match route {
        Some(Route::Hbone { .. }) => SecurityPolicy::MutualTls,
        _ => SecurityPolicy::Unknown,
    };
    let mut labels = ConnectionLabels::new(Reporter::Source, security)
        .with_source(i, source)
        .with_source_principal(i, Some(&source.identity()));
    if let Some(svc) = state.service_by_vip(network, orig.ip(), &source.namespace) {
        labels = labels.with_service(i, &svc);
    }
    let (dst_ip, principal) = match route {
        Some(Route::Hbone {
            target,
            dst_identity,
            ..
        }) => (Some(target.ip()), Some(dst_identity)),
        Some(Route::Tcp { dst }) => (Some(dst.ip()), None),
        _ => (None, None),
    };
    if let Some(w) = dst_ip.and_then(|ip| state.workload_by_ip(network, ip)) {
        labels = labels.with_destination(i, &w);
    }
    labels.with_destination_principal(i, principal)
}

/// What a finished connection reports.
struct Completed {
    dst: SocketAddr,
    hbone_addr: Option<SocketAddr>,
    dst_identity: Option<Identity>,
    /// (client → upstream, upstream → client)
    bytes: (u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localconfig;

    const YAML: &str = r#"
workloads:
- name: client
  namespace: default
  serviceAccount: client
  workloadIps: ["10.0.1.2"]
  protocol: HBONE
- name: server
  namespace: default
  serviceAccount: server
  workloadIps: ["10.0.2.2"]
  protocol: HBONE
  services:
    "default/echo.default.svc.cluster.local": {80: 8080}
- name: legacy
  namespace: default
  workloadIps: ["10.0.2.3"]
  protocol: TCP
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo-san"]
- name: empty
  namespace: default
  hostname: empty.default.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {80: 8080}
"#;

    fn setup() -> (ProxyState, Arc<Workload>) {
        let state = localconfig::parse(YAML).unwrap();
        let client = state
            .workload_by_info("default", "client", "client")
            .unwrap();
        (state, client)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_client_is_reported_as_the_source_pod() {
        let (_, client) = setup();
        let pod_ip = client.workload_ips[0];
        // eBPF capture: the app's connect arrives from 127.0.0.1 at its own port.
        assert_eq!(
            client_addr(addr("127.0.0.1:40000"), &client),
            SocketAddr::new(pod_ip, 40000)
        );
        // iptables REDIRECT / dedicated mode: the real address stays.
        assert_eq!(
            client_addr(addr("10.9.9.9:40000"), &client),
            addr("10.9.9.9:40000")
        );
    }

    #[test]
    fn workload_ip_goes_hbone_to_15008() {
        let (state, client) = setup();
        let r = route(&state, "", &client, addr("10.0.2.2:9090")).unwrap();
        let Route::Hbone {
            dst,
            target,
            expected,
            service,
            ..
        } = r
        else {
            panic!("expected HBONE, got {r:?}");
        };
        assert_eq!(dst, addr("10.0.2.2:15008"));
        assert_eq!(
            target,
            addr("10.0.2.2:9090"),
            "workload-addressed keeps the port"
        );
        assert_eq!(
            expected,
            vec![
                "spiffe://cluster.local/ns/default/sa/server"
                    .parse()
                    .unwrap()
            ]
        );
        assert_eq!(service, None);
    }

    #[test]
    fn service_vip_load_balances_and_maps_port() {
        let (state, client) = setup();
        let r = route(&state, "", &client, addr("10.96.0.10:80")).unwrap();
        let Route::Hbone {
            dst,
            target,
            expected,
            service,
            ..
        } = r
        else {
            panic!("expected HBONE, got {r:?}");
        };
        assert_eq!(dst, addr("10.0.2.2:15008"));
        assert_eq!(
            target,
            addr("10.0.2.2:8080"),
            "service port 80 maps to target 8080"
        );
        let ids: Vec<String> = expected.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://cluster.local/ns/default/sa/echo-san",
                "spiffe://cluster.local/ns/default/sa/server"
            ],
            "service SANs plus the workload identity"
        );
        assert_eq!(service.as_deref(), Some("echo.default.svc.cluster.local"));
    }

    #[test]
    fn tcp_workload_goes_plain() {
        let (state, client) = setup();
        let r = route(&state, "", &client, addr("10.0.2.3:80")).unwrap();
        assert_eq!(
            r,
            Route::Tcp {
                dst: addr("10.0.2.3:80")
            }
        );
    }

    #[test]
    fn outside_the_mesh_is_passthrough() {
        let (state, client) = setup();
        let r = route(&state, "", &client, addr("192.0.2.1:443")).unwrap();
        assert_eq!(
            r,
            Route::Passthrough {
                dst: addr("192.0.2.1:443")
            }
        );
        // Another network's address is not ours either.
        let r = route(&state, "other", &client, addr("10.0.2.2:80")).unwrap();
        assert_eq!(
            r,
            Route::Passthrough {
                dst: addr("10.0.2.2:80")
            }
        );
    }

    #[test]
    fn service_without_endpoints_fails() {
        let (state, client) = setup();
        let err = route(&state, "", &client, addr("10.96.0.11:80")).unwrap_err();
        assert!(matches!(err, ProxyError::NoHealthyUpstream(_)), "{err}");
        assert_eq!(err.response_flag(), "CONNECT");
    }

    #[test]
    fn illegal_ports() {
        for p in [15001, 15006, 15008] {
            assert!(is_illegal_port(p));
        }
        assert!(!is_illegal_port(8080));
    }
}
