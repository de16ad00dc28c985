//! The reconcile loop: one thread owning the pods. Desired = pods reported by CNI (state
//! dir) ∩ enrolled by the source. A newly desired pod gets its redirection (routing
//! included), then a ZDS Add; after ztunnel's ack its 15006 listener goes into the
//! redirection. An undesired pod is unenrolled and deleted from every ztunnel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use mesh_cni::event::{CniCommand, CniEvent, CniReply};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::netns;
use crate::redirect::{PodNet, Redirection};
use crate::source::Enrolled;
use crate::state::{PodRecord, StateStore};
use crate::zds::{AddDispatch, ConnId, WorkloadInfo, ZdsEvent, ZdsHub, ZdsPod};

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A CNI ADD/DEL; the reply goes back to the plugin.
    Cni(CniEvent, oneshot::Sender<CniReply>),
    /// The source's enrolled set changed.
    Enrolled(Arc<Enrolled>),
    /// Something happened on a ZDS connection.
    Zds(ZdsEvent),
    /// Stop the loop.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZdsState {
    /// Not sent yet (or to be re-sent).
    Unsent,
    /// No ztunnel connected: the next snapshot carries it.
    InSnapshot,
    /// Sent on this connection; waiting for the ack.
    InFlight(ConnId),
    /// Acked by this ztunnel.
    Acked { conn: ConnId, pid: i32 },
    /// Nacked or failed: re-send at this time.
    Retry(Instant),
}

#[derive(Debug)]
struct Active {
    record: PodRecord,
    netns: Arc<OwnedFd>,
    ips: Vec<IpAddr>,
    zds: ZdsState,
    /// The ztunnel whose listener the redirection uses.
    listener_pid: Option<i32>,
}

/// The loop's state (built by [`Reconciler::new`], run by [`Reconciler::run`]).
pub struct Reconciler {
    store: StateStore,
    known: BTreeMap<String, PodRecord>,
    enrolled: Arc<Enrolled>,
    redirection: Box<dyn Redirection>,
    hub: ZdsHub,
    active: BTreeMap<String, Active>,
    /// Pods whose enrollment failed, retried at the given time.
    enroll_retry: BTreeMap<String, Instant>,
    retry_interval: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("known", &self.known.len())
            .field("active", &self.active.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Sends events to a running [`Reconciler`].
pub type EventTx = Sender<Event>;

impl Reconciler {
    /// Loads the state dir (forgetting pods whose netns is gone) and does the first
    /// reconcile: re-enrolls desired pods, unenrolls the known others, and asks the
    /// redirection to drop every other enrollment (restart after a crash).
    pub fn new(
        store: StateStore,
        enrolled: Arc<Enrolled>,
        redirection: Box<dyn Redirection>,
        hub: ZdsHub,
        retry_interval: Duration,
    ) -> Result<Self, crate::state::StateError> {
        Self::with_metrics(
            store,
            enrolled,
            redirection,
            hub,
            retry_interval,
            Arc::default(),
        )
    }

    /// [`Reconciler::new`], counting enrollments and failures in `metrics`.
    pub fn with_metrics(
        store: StateStore,
        enrolled: Arc<Enrolled>,
        redirection: Box<dyn Redirection>,
        hub: ZdsHub,
        retry_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::state::StateError> {
        let mut known = store.load()?;
        known.retain(|uid, rec| {
            let alive = rec.netns.exists();
            if !alive {
                tracing::info!(uid, pod = %format!("{}/{}", rec.namespace, rec.name), "netns gone while the agent was away; forgetting the pod");
                if let Err(e) = store.remove(uid) {
                    tracing::warn!(error = %e, "forgetting pod");
                }
            }
            alive
        });
        let mut r = Reconciler {
            store,
            known,
            enrolled,
            redirection,
            hub,
            active: BTreeMap::new(),
            enroll_retry: BTreeMap::new(),
            retry_interval,
            metrics,
        };
        let undesired: Vec<PodRecord> = r
            .known
            .values()
            .filter(|rec| !r.desired(rec))
            .cloned()
            .collect();
        for rec in undesired {
            r.cleanup_unknown(&rec);
        }
        r.reconcile();
        let keep: Vec<PodNet<'_>> = r.active.values().map(Active::net).collect();
        if let Err(e) = r.redirection.retain(&keep) {
            r.metrics.reconcile_error("stale_cleanup");
            tracing::warn!(error = %e, "removing stale enrollments");
        }
        Ok(r)
    }

    /// Uids currently enrolled (tests and logs).
    pub fn active_uids(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }

    fn desired(&self, rec: &PodRecord) -> bool {
        self.enrolled
            .matching(&rec.namespace, &rec.name, &rec.uid)
            .is_some()
    }

    /// Runs until [`Event::Shutdown`] or every sender is gone.
    pub fn run(mut self, rx: Receiver<Event>) {
        loop {
            let timeout = self
                .next_retry()
                .map(|t| t.saturating_duration_since(Instant::now()));
            let ev = match timeout {
                Some(t) => rx.recv_timeout(t),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match ev {
                Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(ev) => self.handle(ev),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.reconcile();
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        let zds = self.active.values().filter_map(|a| match a.zds {
            ZdsState::Retry(t) => Some(t),
            _ => None,
        });
        zds.chain(self.enroll_retry.values().copied()).min()
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Cni(ev, reply) => {
                let answer = self.cni(ev);
                let _ = reply.send(answer);
            }
            Event::Enrolled(e) => self.enrolled = e,
            Event::Zds(z) => self.zds_event(z),
            Event::Shutdown => {}
        }
    }

    fn cni(&mut self, ev: CniEvent) -> CniReply {
        let uid = if ev.pod_uid.is_empty() {
            ev.container_id.clone()
        } else {
            ev.pod_uid.clone()
        };
        match ev.command {
            CniCommand::Add => {
                let rec = PodRecord {
                    uid: uid.clone(),
                    name: ev.pod_name,
                    namespace: ev.pod_namespace,
                    netns: ev.netns.into(),
                    container_id: ev.container_id,
                    ips: ev.ips,
                };
                if let Err(e) = self.store.save(&rec) {
                    self.metrics.reconcile_error("state");
                    return CniReply::error(e.to_string());
                }
                tracing::info!(uid, pod = %format!("{}/{}", rec.namespace, rec.name), netns = %rec.netns.display(), "CNI ADD");
                self.known.insert(uid.clone(), rec);
                self.enroll_retry.remove(&uid);
                self.reconcile();
                // Capture must be in place before the pod's containers start.
                if self.enroll_retry.contains_key(&uid) {
                    CniReply::error(format!(
                        "enrolling pod {uid} failed (see agent log); retrying"
                    ))
                } else {
                    CniReply::ok()
                }
            }
            CniCommand::Del => {
                // Match by uid, or by sandbox id for runtimes without K8S_POD_UID.
                let uid = self
                    .known
                    .values()
                    .find(|r| r.uid == uid || r.container_id == ev.container_id)
                    .map(|r| r.uid.clone())
                    .unwrap_or(uid);
                tracing::info!(uid, "CNI DEL");
                self.unenroll(&uid);
                self.known.remove(&uid);
                self.enroll_retry.remove(&uid);
                match self.store.remove(&uid) {
                    Ok(()) => CniReply::ok(),
                    Err(e) => {
                        self.metrics.reconcile_error("state");
                        CniReply::error(e.to_string())
                    }
                }
            }
        }
    }

    fn zds_event(&mut self, ev: ZdsEvent) {
        match ev {
            ZdsEvent::AddResult { uid, conn, result } => {
                let Some(a) = self.active.get_mut(&uid) else {
                    return;
                };
                match result {
                    Ok(pid) => {
                        let newer = match a.zds {
                            ZdsState::Acked { conn: c, .. } => conn >= c,
                            _ => true,
                        };
                        if newer {
                            a.zds = ZdsState::Acked { conn, pid };
                        }
                    }
                    Err(e) if a.zds == ZdsState::InFlight(conn) => {
                        self.metrics.reconcile_error("zds_add");
                        tracing::warn!(
                            uid,
                            conn,
                            error = e,
                            "ztunnel did not take the pod; retrying"
                        );
                        a.zds = ZdsState::Retry(Instant::now() + self.retry_interval);
                    }
                    Err(_) => {}
                }
            }
            ZdsEvent::Ready { conn, pid, acked } => {
                let acked: BTreeSet<String> = acked.into_iter().collect();
                for (uid, a) in &mut self.active {
                    if acked.contains(uid) {
                        a.zds = ZdsState::Acked { conn, pid };
                    } else if !matches!(a.zds, ZdsState::InFlight(_)) {
                        // Nacked in the snapshot (or added meanwhile: its own result follows).
                        a.zds = ZdsState::Retry(Instant::now() + self.retry_interval);
                    }
                }
            }
            ZdsEvent::Closed { conn } => {
                for a in self.active.values_mut() {
                    let lost = match a.zds {
                        ZdsState::InFlight(c) | ZdsState::Acked { conn: c, .. } => c == conn,
                        _ => false,
                    };
                    if lost {
                        a.zds = ZdsState::Unsent;
                    }
                }
            }
        }
    }

    /// Brings the pods to the desired state.
    fn reconcile(&mut self) {
        let desired: BTreeSet<String> = self
            .known
            .values()
            .filter(|r| self.desired(r))
            .map(|r| r.uid.clone())
            .collect();
        // Gone, no longer enrolled, or sandbox recreated (different netns): unenroll.
        let stale: Vec<String> = self
            .active
            .iter()
            .filter(|(uid, a)| {
                !desired.contains(*uid)
                    || self
                        .known
                        .get(*uid)
                        .is_none_or(|r| r.netns != a.record.netns)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.unenroll(&uid);
        }
        self.enroll_retry.retain(|uid, _| desired.contains(uid));
        let now = Instant::now();
        for uid in &desired {
            if self.active.contains_key(uid) || self.enroll_retry.get(uid).is_some_and(|t| *t > now)
            {
                continue;
            }
            if let Some(rec) = self.known.get(uid).cloned() {
                let result = self.enroll(rec);
                self.metrics.enrollment(result.is_ok());
                match result {
                    Ok(()) => {
                        self.enroll_retry.remove(uid);
                    }
                    Err(e) => {
                        tracing::warn!(uid, error = %e, "enrolling pod failed; retrying");
                        self.enroll_retry
                            .insert(uid.clone(), now + self.retry_interval);
                    }
                }
            }
        }
        self.dispatch_zds(now);
        self.update_listeners();
        self.metrics.set_enrolled_pods(self.active.len());
    }

    fn enroll(&mut self, rec: PodRecord) -> Result<(), anyhow::Error> {
        use anyhow::Context;
        let file = std::fs::File::open(&rec.netns)
            .with_context(|| format!("opening netns {}", rec.netns.display()))?;
        let netns = Arc::new(OwnedFd::from(file));
        let mut ips = netns::parse_cidr_ips(&rec.ips);
        if ips.is_empty() {
            ips = netns::addresses(Some(&rec.netns))?;
        }
        let net = PodNet {
            uid: &rec.uid,
            netns_path: &rec.netns,
            netns: Some(netns.as_fd()),
            ips: &ips,
        };
        self.redirection.enroll(&net)?;
        tracing::info!(uid = rec.uid, pod = %format!("{}/{}", rec.namespace, rec.name), ?ips, mode = self.redirection.name(), "pod enrolled");
        self.active.insert(
            rec.uid.clone(),
            Active {
                record: rec,
                netns,
                ips,
                zds: ZdsState::Unsent,
                listener_pid: None,
            },
        );
        Ok(())
    }

    fn unenroll(&mut self, uid: &str) {
        self.hub.del(uid);
        let Some(a) = self.active.remove(uid) else {
            return;
        };
        let result = self.redirection.unenroll(&a.net());
        self.metrics.unenrollment(result.is_ok());
        if let Err(e) = result {
            tracing::warn!(uid, error = %e, "unenrolling pod");
        } else {
            tracing::info!(uid, pod = %format!("{}/{}", a.record.namespace, a.record.name), "pod unenrolled");
        }
    }

    /// A known pod that is not desired, at start-up: remove whatever an earlier run left in
    /// its netns (idempotent).
    fn cleanup_unknown(&mut self, rec: &PodRecord) {
        let Ok(file) = std::fs::File::open(&rec.netns) else {
            return;
        };
        let fd = OwnedFd::from(file);
        let ips = netns::parse_cidr_ips(&rec.ips);
        let net = PodNet {
            uid: &rec.uid,
            netns_path: &rec.netns,
            netns: Some(fd.as_fd()),
            ips: &ips,
        };
        if let Err(e) = self.redirection.unenroll(&net) {
            tracing::debug!(uid = rec.uid, error = %e, "start-up cleanup of an unenrolled pod");
        }
    }

    fn dispatch_zds(&mut self, now: Instant) {
        for (uid, a) in &mut self.active {
            let due = match a.zds {
                ZdsState::Unsent => true,
                ZdsState::Retry(t) => t <= now,
                _ => false,
            };
            if !due {
                continue;
            }
            let sa = self
                .enrolled
                .matching(&a.record.namespace, &a.record.name, uid)
                .map(|p| p.service_account.clone())
                .unwrap_or_else(|| crate::source::DEFAULT_SERVICE_ACCOUNT.to_string());
            let pod = ZdsPod {
                uid: uid.clone(),
                info: WorkloadInfo {
                    name: a.record.name.clone(),
                    namespace: a.record.namespace.clone(),
                    service_account: sa,
                },
                netns: Some(a.netns.clone()),
            };
            a.zds = match self.hub.add(pod) {
                AddDispatch::Sent(conn) => ZdsState::InFlight(conn),
                AddDispatch::NoProxy => ZdsState::InSnapshot,
            };
        }
    }

    fn update_listeners(&mut self) {
        for (uid, a) in &mut self.active {
            let ZdsState::Acked { pid, .. } = a.zds else {
                continue;
            };
            if a.listener_pid == Some(pid) {
                continue;
            }
            let net = PodNet {
                uid,
                netns_path: &a.record.netns,
                netns: Some(a.netns.as_fd()),
                ips: &a.ips,
            };
            match self.redirection.set_inbound_listener(&net, pid) {
                Ok(()) => {
                    tracing::info!(uid, ztunnel_pid = pid, "inbound listener set");
                    a.listener_pid = Some(pid);
                }
                Err(e) => {
                    self.metrics.reconcile_error("listener");
                    tracing::warn!(uid, ztunnel_pid = pid, error = %e, "setting the inbound listener; retrying");
                    a.zds = ZdsState::Retry(Instant::now() + self.retry_interval);
                }
            }
        }
    }
}

impl Active {
    fn net(&self) -> PodNet<'_> {
        PodNet {
            uid: &self.record.uid,
            netns_path: &self.record.netns,
            netns: Some(self.netns.as_fd()),
            ips: &self.ips,
        }
    }
}
