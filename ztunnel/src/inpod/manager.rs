//! The per-pod proxies of shared mode (reference §3.2 "ztunnel behaviour rules", §3.3): one
//! proxy set per pod uid, bound inside the pod's netns, each with its own HBONE pool and
//! connection manager (state, certificates and metrics are shared).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::netns::{InpodNetns, NetnsId};
use crate::config::{Config, WorkloadInfo};
use crate::drain::{Drain, DrainOutcome};
use crate::identity::CertManager;
use crate::metrics::Metrics;
use crate::proxy::inbound::{InboundHbone, InboundPlaintext};
use crate::proxy::listener::{self, Handler};
use crate::proxy::outbound::Outbound;
use crate::proxy::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, ProxyInputs, ProxyParts};
use crate::socket::{ProxySockets, SoOriginalDst, SocketFactory};
use crate::state::StateStore;

/// Where each pod's outbound listener binds (inside the pod; plus `[::1]` with IPv6).
pub const OUTBOUND_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), OUTBOUND_PORT);

/// What every pod proxy shares.
#[derive(Clone)]
pub struct SharedInputs {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Mesh state.
    pub state: Arc<StateStore>,
    /// Certificates (one manager for every pod identity).
    pub certs: Arc<CertManager>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Source-IP preservation toward the apps (start-up decision).
    pub spoof_source: bool,
    /// Mark and socket options.
    pub sockets: SocketFactory,
}

/// Lifecycle state of a pod proxy, as shown in `/config_dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    /// Listeners bound and serving.
    Running,
    /// Start failed (nacked); retried periodically.
    Pending,
    /// Draining after Del, reconciliation, a netns change or shutdown.
    Draining,
}

/// One pod proxy, as shown in `/config_dump`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Pod uid.
    pub uid: String,
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Netns identity.
    pub netns: NetnsId,
    /// State.
    pub state: PodState,
    /// Why the last start failed (pending pods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pods a manager serves, readable from other tasks (admin).
#[derive(Debug, Clone, Default)]
pub struct PodsView(Arc<Mutex<BTreeMap<u64, PodStatus>>>);

impl PodsView {
    /// Every pod proxy (running, pending, draining), sorted by uid.
    pub fn list(&self) -> Vec<PodStatus> {
        let mut pods: Vec<PodStatus> = match self.0.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        pods.sort_by(|a, b| (&a.uid, a.state as u8).cmp(&(&b.uid, b.state as u8)));
        pods
    }

    fn set(&self, instance: u64, status: PodStatus) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(instance, status);
        }
    }

    fn set_state(&self, instance: u64, state: PodState) {
        if let Ok(mut m) = self.0.lock()
            && let Some(s) = m.get_mut(&instance)
        {
            s.state = state;
        }
    }

    fn remove(&self, instance: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&instance);
        }
    }
}

struct PodProxy {
    drain: Drain,
    background: CancellationToken,
}

struct Pod {
    instance: u64,
    info: WorkloadInfo,
    netns: Arc<InpodNetns>,
    /// `None` while pending.
    proxy: Option<PodProxy>,
}

/// The per-pod proxies (owned by the ZDS client task).
pub struct ProxyManager {
    shared: SharedInputs,
    pods: HashMap<String, Pod>,
    next_instance: u64,
    view: PodsView,
    drains: TaskTracker,
}

impl ProxyManager {
    /// An empty manager.
    pub fn new(shared: SharedInputs) -> ProxyManager {
        ProxyManager {
            shared,
            pods: HashMap::new(),
            next_instance: 0,
            view: PodsView::default(),
            drains: TaskTracker::new(),
        }
    }

    /// A live view of the pods (for `/config_dump`).
    pub fn view(&self) -> PodsView {
        self.view.clone()
    }

    /// Number of pods whose proxy failed to start.
    pub fn pending(&self) -> usize {
        self.pods.values().filter(|p| p.proxy.is_none()).count()
    }

    /// AddWorkload: starts the pod's proxy. Idempotent for the same netns; a different netns
    /// (sandbox recreated) drains the old proxy first. A start failure leaves the pod pending
    /// (see [`ProxyManager::retry_pending`]) and is returned for the nack.
    pub fn add(&mut self, uid: &str, info: WorkloadInfo, netns: InpodNetns) -> Result<(), String> {
        if let Some(pod) = self.pods.get(uid) {
            if pod.netns.id() == netns.id() {
                if pod.proxy.is_some() {
                    debug!(uid, netns = %netns.id(), "pod already served");
                    return Ok(());
                }
            } else {
                info!(uid, old = %pod.netns.id(), new = %netns.id(), "pod netns changed: replacing its proxy");
            }
            self.remove_and_drain(uid, Duration::ZERO);
        }
        let instance = self.next_instance;
        self.next_instance += 1;
        let pod = Pod {
            instance,
            info,
            netns: Arc::new(netns),
            proxy: None,
        };
        self.start(uid, pod)
    }

    fn start(&mut self, uid: &str, mut pod: Pod) -> Result<(), String> {
        let result = start_proxy(&self.shared, &pod.info, &pod.netns);
        let (state, error) = match result {
            Ok(proxy) => {
                info!(uid, workload = %format_info(&pod.info), netns = %pod.netns.id(), "pod proxy started");
                pod.proxy = Some(proxy);
                (PodState::Running, None)
            }
            Err(e) => {
                warn!(uid, workload = %format_info(&pod.info), netns = %pod.netns.id(), error = %e, "pod proxy failed to start; pending");
                (PodState::Pending, Some(e))
            }
        };
        self.view.set(
            pod.instance,
            PodStatus {
                uid: uid.to_string(),
                name: pod.info.name.clone(),
                namespace: pod.info.namespace.clone(),
                service_account: pod.info.service_account.clone(),
                netns: pod.netns.id(),
                state,
                error: error.clone(),
            },
        );
        self.pods.insert(uid.to_string(), pod);
        match error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Retries every pending pod; returns how many are still pending.
    pub fn retry_pending(&mut self) -> usize {
        let pending: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.proxy.is_none())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in pending {
            if let Some(pod) = self.pods.remove(&uid) {
                let _ = self.start(&uid, pod);
            }
        }
        self.pending()
    }

    /// DelWorkload before the snapshot ended: forgets the pod if pending.
    pub fn forget_pending(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|p| p.proxy.is_none()) {
            self.remove_and_drain(uid, Duration::ZERO);
        }
    }

    /// DelWorkload after the snapshot: the pod is gone, drain its proxy immediately.
    pub fn del(&mut self, uid: &str) {
        if self.pods.contains_key(uid) {
            info!(uid, "pod deleted: draining its proxy");
            self.remove_and_drain(uid, Duration::ZERO);
        } else {
            debug!(uid, "delete of an unknown pod");
        }
    }

    /// After SnapshotSent: drains (immediately) every proxy whose uid the snapshot did not
    /// name.
    pub fn reconcile(&mut self, seen: &HashSet<String>) {
        let stale: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in stale {
            info!(uid, "pod not in the snapshot: draining its proxy");
            self.remove_and_drain(&uid, Duration::ZERO);
        }
    }

    fn remove_and_drain(&mut self, uid: &str, deadline: Duration) {
        let Some(pod) = self.pods.remove(uid) else {
            return;
        };
        let Some(proxy) = pod.proxy else {
            self.view.remove(pod.instance);
            return;
        };
        self.view.set_state(pod.instance, PodState::Draining);
        let view = self.view.clone();
        let uid = uid.to_string();
        self.drains.spawn(async move {
            let outcome = proxy.drain.drain(deadline).await;
            proxy.background.cancel();
            view.remove(pod.instance);
            debug!(uid, ?outcome, "pod proxy drained");
            outcome
        });
    }

    /// ztunnel shutdown: drains every pod proxy gracefully (up to `deadline`) and waits.
    pub async fn shutdown(mut self, deadline: Duration) -> DrainOutcome {
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        let drains: Vec<_> = uids
            .iter()
            .filter_map(|uid| {
                let pod = self.pods.remove(uid)?;
                let Some(proxy) = pod.proxy else {
                    self.view.remove(pod.instance);
                    return None;
                };
                self.view.set_state(pod.instance, PodState::Draining);
                let view = self.view.clone();
                Some(async move {
                    let outcome = proxy.drain.drain(deadline).await;
                    proxy.background.cancel();
                    view.remove(pod.instance);
                    outcome
                })
            })
            .collect();
        let outcomes = futures_util::future::join_all(drains).await;
        self.drains.close();
        self.drains.wait().await;
        if outcomes.contains(&DrainOutcome::Forced) {
            DrainOutcome::Forced
        } else {
            DrainOutcome::Completed
        }
    }
}

fn format_info(info: &WorkloadInfo) -> String {
    format!(
        "{}/{} (sa {})",
        info.namespace, info.name, info.service_account
    )
}

fn unspecified(ipv6: bool, port: u16) -> SocketAddr {
    if ipv6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }
}

/// Binds the pod's listeners inside its netns and spawns the accept loops. Nothing is
/// spawned unless every required listener bound.
fn start_proxy(
    shared: &SharedInputs,
    info: &WorkloadInfo,
    netns: &Arc<InpodNetns>,
) -> Result<PodProxy, String> {
    let cfg = &shared.cfg;
    let sockets = ProxySockets {
        factory: shared.sockets,
        netns: Some(netns.clone()),
        reuse_port: cfg.inpod.port_reuse,
    };
    let ipv6 = cfg.inpod.ipv6;
    // 15001 never on a wildcard address: only the pod's own (redirected) traffic may use
    // the pod's identity.
    let outbound_v4 = OUTBOUND_ADDR;
    let bind = |what: &str, addr: SocketAddr, any_family: bool| -> Result<TcpListener, String> {
        let res = if any_family {
            sockets.listen_any_family(addr, true)
        } else {
            sockets.listen(addr, true)
        };
        res.map(|(l, _)| l)
            .map_err(|e| format!("{what} listener in pod netns {}: {e}", netns.id()))
    };
    let mut outbound = vec![bind("outbound", outbound_v4, false)?];
    if ipv6 {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), OUTBOUND_PORT);
        match sockets.listen(v6, true) {
            Ok((l, _)) => outbound.push(l),
            Err(e) => debug!(error = %e, "no IPv6 outbound listener in the pod (best effort)"),
        }
    }
    let plaintext = bind(
        "inbound plaintext",
        unspecified(ipv6, INBOUND_PLAINTEXT_PORT),
        true,
    )?;
    let inbound = bind("inbound HBONE", unspecified(ipv6, HBONE_PORT), true)?;

    let inputs = ProxyInputs::from_parts(ProxyParts {
        cfg: cfg.clone(),
        state: shared.state.clone(),
        certs: shared.certs.clone(),
        workload: Some(info.clone()),
        sockets,
        orig_dst: Arc::new(SoOriginalDst),
        spoof_source: shared.spoof_source,
        metrics: shared.metrics.clone(),
    });
    let drain = Drain::new();
    let background = CancellationToken::new();
    // The accept loops are drain tasks too: a finished drain means the listeners closed.
    let spawn = |name: &'static str, l: TcpListener, h: Arc<dyn Handler>| {
        drain.tasks.spawn(listener::run(name, l, h, drain.clone()));
    };
    for l in outbound {
        spawn(
            "outbound",
            l,
            Arc::new(Outbound {
                inputs: inputs.clone(),
            }),
        );
    }
    spawn(
        "inbound_plaintext",
        plaintext,
        Arc::new(InboundPlaintext {
            inputs: inputs.clone(),
        }),
    );
    spawn(
        "inbound",
        inbound,
        Arc::new(InboundHbone {
            inputs: inputs.clone(),
            drain: drain.clone(),
        }),
    );
    tokio::spawn(
        inputs
            .connections
            .clone()
            .watch(shared.state.clone(), background.clone()),
    );
    // Warm the pod's certificate so its first connection does not wait.
    {
        let inputs = inputs.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            let warm = async {
                let Ok(w) = inputs.local_workload().await else {
                    return;
                };
                let id = w.identity();
                if let Err(e) = inputs.certs.fetch_certificate(&id).await {
                    warn!(identity = %id, error = %e, "certificate prefetch failed");
                }
            };
            tokio::select! {
                () = warm => {}
                () = stop.cancelled() => {}
            }
        });
    }
    Ok(PodProxy { drain, background })
}
