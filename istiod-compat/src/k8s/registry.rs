//! The registry: a reflector store per watched kind, and one task that turns the stores into
//! debounced [`Snapshot`]s.
//!
//! Nothing is published until every kind has completed its initial list (`InitDone`); the
//! first publish is therefore the "initial sync done" signal (also available as
//! [`InitialSync`]). Afterwards every store change schedules a publish [`RegistryConfig::debounce`]
//! after the last change, at most [`RegistryConfig::max_delay`] after the first, so a burst
//! of events makes one snapshot. Watch errors are logged, counted ([`RegistryStats`]) and
//! retried by the watcher with kube's default backoff; the stores (and so the published
//! snapshot) keep the last complete state meanwhile, and a re-list swaps in atomically.
//!
//! AuthorizationPolicy and PeerAuthentication are CRDs: when the API answers 404 for them
//! they count as synced-and-empty (with one clear warning) and keep being retried, so
//! installing Istio's CRDs later is picked up without a restart.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::K8sError;
use super::watch::{is_gone, is_not_found, run_kind};
use crate::crd::{AuthorizationPolicy, PeerAuthentication};
use crate::model::{Key, Snapshot};

/// A watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace.
    Namespace,
    /// `v1` Node.
    Node,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `security.istio.io/v1` AuthorizationPolicy (CRD).
    AuthorizationPolicy,
    /// `security.istio.io/v1` PeerAuthentication (CRD).
    PeerAuthentication,
}

const KINDS: usize = 7;

impl Kind {
    /// Every watched kind.
    pub const ALL: [Kind; KINDS] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
    ];

    /// The Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// Whether the kind may be absent from the cluster (a CRD): a 404 then means "none".
    pub fn is_optional(self) -> bool {
        matches!(self, Kind::AuthorizationPolicy | Kind::PeerAuthentication)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Registry timing.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Quiet time after the last change before a snapshot is built (default 50 ms).
    pub debounce: Duration,
    /// Upper bound on the delay between the first change of a burst and its snapshot, so a
    /// steady stream of events cannot starve publishing (default 1 s).
    pub max_delay: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Counters of a running registry (cheap to read at any time, e.g. for metrics).
#[derive(Debug, Default)]
pub struct RegistryStats {
    watch_errors: [AtomicU64; KINDS],
    events: [AtomicU64; KINDS],
    missing: [AtomicBool; KINDS],
    snapshots_published: AtomicU64,
}

impl RegistryStats {
    /// Watch errors seen for `kind` (each one retried with backoff).
    pub fn watch_errors(&self, kind: Kind) -> u64 {
        self.watch_errors[kind.index()].load(Ordering::Relaxed)
    }

    /// Watch errors over all kinds.
    pub fn total_watch_errors(&self) -> u64 {
        self.watch_errors
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Store changes seen for `kind` (applies, deletes and completed lists).
    pub fn events(&self, kind: Kind) -> u64 {
        self.events[kind.index()].load(Ordering::Relaxed)
    }

    /// Whether the API answered 404 for `kind` on its latest attempt (a CRD not installed).
    pub fn is_missing(&self, kind: Kind) -> bool {
        self.missing[kind.index()].load(Ordering::Relaxed)
    }

    /// Snapshots published so far.
    pub fn snapshots_published(&self) -> u64 {
        self.snapshots_published.load(Ordering::Relaxed)
    }
}

/// Resolves once the registry has published its first snapshot (every initial list done).
#[derive(Debug, Clone)]
pub struct InitialSync(watch::Receiver<bool>);

impl InitialSync {
    /// Whether the initial sync is done.
    pub fn is_done(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the initial sync; `false` if the registry stopped before it.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|done| *done).await.is_ok()
    }
}

/// The Kubernetes registry. [`run`] is the short form; this type also hands out
/// [`RegistryStats`] and [`InitialSync`] before running.
pub struct Registry {
    client: Client,
    config: RegistryConfig,
    stats: Arc<RegistryStats>,
    synced: watch::Sender<bool>,
}

/// Watches everything with `client` and publishes snapshots on `tx` until `shutdown`.
///
/// The first value published on `tx` comes after every initial list is complete: callers
/// that need a synced view wait for the receiver's first change. Returns `Ok(())` on
/// shutdown and an error only if a watch task dies.
pub async fn run(
    client: Client,
    tx: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) -> Result<(), K8sError> {
    Registry::new(client).run(tx, shutdown).await
}

impl Registry {
    /// A registry with the default [`RegistryConfig`].
    pub fn new(client: Client) -> Self {
        Self::with_config(client, RegistryConfig::default())
    }

    /// A registry with explicit timing.
    pub fn with_config(client: Client, config: RegistryConfig) -> Self {
        Registry {
            client,
            config,
            stats: Arc::default(),
            synced: watch::Sender::new(false),
        }
    }

    /// The registry's counters.
    pub fn stats(&self) -> Arc<RegistryStats> {
        self.stats.clone()
    }

    /// A signal that resolves after the first publish.
    pub fn initial_sync(&self) -> InitialSync {
        InitialSync(self.synced.subscribe())
    }

    /// Runs until `shutdown` (see [`run`]).
    pub async fn run(
        self,
        tx: watch::Sender<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) -> Result<(), K8sError> {
        let shared = Arc::new(Shared {
            notify: Notify::new(),
            state: Default::default(),
            stats: self.stats.clone(),
        });
        let watches = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let spawner = Spawner {
            client: &self.client,
            shared: &shared,
            shutdown: &watches,
        };
        let stores = Stores {
            namespaces: spawner.spawn(&mut tasks, Kind::Namespace),
            nodes: spawner.spawn(&mut tasks, Kind::Node),
            pods: spawner.spawn(&mut tasks, Kind::Pod),
            services: spawner.spawn(&mut tasks, Kind::Service),
            endpoint_slices: spawner.spawn(&mut tasks, Kind::EndpointSlice),
            authorization_policies: spawner.spawn(&mut tasks, Kind::AuthorizationPolicy),
            peer_authentications: spawner.spawn(&mut tasks, Kind::PeerAuthentication),
        };
        let result = self
            .publish_loop(&stores, &shared, &tx, &mut tasks, &shutdown)
            .await;
        watches.cancel();
        tasks.shutdown().await;
        result
    }

    async fn publish_loop(
        &self,
        stores: &Stores,
        shared: &Shared,
        tx: &watch::Sender<Arc<Snapshot>>,
        tasks: &mut JoinSet<Kind>,
        shutdown: &CancellationToken,
    ) -> Result<(), K8sError> {
        let mut last: Option<Arc<Snapshot>> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                ended = tasks.join_next() => return Err(task_ended(ended)),
                _ = shared.notify.notified() => {}
            }
            // Debounce: wait for a quiet period, bounded by max_delay from the first change.
            let deadline = Instant::now() + self.config.max_delay;
            loop {
                let quiet_until = (Instant::now() + self.config.debounce).min(deadline);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = shared.notify.notified() => {
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(quiet_until) => break,
                }
            }
            if !shared.all_synced() {
                continue;
            }
            let snapshot = stores.snapshot();
            if last.as_deref().is_some_and(|prev| same(prev, &snapshot)) {
                debug!("kubernetes registry: no visible change, snapshot not republished");
                continue;
            }
            let snapshot = Arc::new(snapshot);
            if last.is_none() {
                info!(
                    namespaces = snapshot.namespaces.len(),
                    nodes = snapshot.nodes.len(),
                    pods = snapshot.pods.len(),
                    services = snapshot.services.len(),
                    endpoint_slices = snapshot.endpoint_slices.len(),
                    authorization_policies = snapshot.authorization_policies.len(),
                    peer_authentications = snapshot.peer_authentications.len(),
                    "kubernetes registry: initial sync done"
                );
            }
            tx.send_replace(snapshot.clone());
            last = Some(snapshot);
            self.stats
                .snapshots_published
                .fetch_add(1, Ordering::Relaxed);
            self.synced.send_replace(true);
        }
    }
}

fn task_ended(ended: Option<Result<Kind, tokio::task::JoinError>>) -> K8sError {
    match ended {
        Some(Ok(kind)) => K8sError::WatchTaskEnded {
            kind: kind.name(),
            reason: "watch stream ended".into(),
        },
        Some(Err(err)) => K8sError::WatchTaskEnded {
            kind: "unknown",
            reason: err.to_string(),
        },
        None => K8sError::WatchTaskEnded {
            kind: "all",
            reason: "no watch tasks left".into(),
        },
    }
}

// === impl Shared ===

const PENDING: u8 = 0;
const SYNCED: u8 = 1;
const MISSING: u8 = 2;

/// What watch tasks share with the publisher.
pub(crate) struct Shared {
    /// Signalled on every visible store change (permits coalesce).
    notify: Notify,
    /// Per kind: PENDING until the first list completes, then SYNCED (or MISSING: a CRD
    /// answered 404 before ever listing).
    state: [AtomicU8; KINDS],
    stats: Arc<RegistryStats>,
}

impl Shared {
    pub(crate) fn synced(&self, kind: Kind) {
        let i = kind.index();
        self.stats.events[i].fetch_add(1, Ordering::Relaxed);
        let was_missing = self.stats.missing[i].swap(false, Ordering::Relaxed);
        if was_missing {
            info!(%kind, "kubernetes registry: {kind} is served now; watching it");
        }
        let before = self.state[i].swap(SYNCED, Ordering::AcqRel);
        if before == PENDING {
            debug!(%kind, "kubernetes registry: initial list done");
        }
        self.notify.notify_one();
    }

    pub(crate) fn changed(&self, kind: Kind) {
        self.stats.events[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub(crate) fn watch_error(&self, kind: Kind, err: &watcher::Error) {
        let i = kind.index();
        self.stats.watch_errors[i].fetch_add(1, Ordering::Relaxed);
        if kind.is_optional() && is_not_found(err) {
            let first = !self.stats.missing[i].swap(true, Ordering::Relaxed);
            let promoted = self.state[i]
                .compare_exchange(PENDING, MISSING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if first {
                warn!(
                    %kind,
                    "kubernetes registry: the API has no security.istio.io/v1 {kind} (Istio CRDs \
                     not installed?); continuing without them and retrying with backoff"
                );
            } else {
                debug!(%kind, error = %err, "kubernetes registry: still not served");
            }
            if promoted {
                self.notify.notify_one();
            }
        } else if is_gone(err) {
            info!(%kind, "kubernetes registry: watch expired (410); re-listing");
        } else {
            warn!(%kind, error = %err, "kubernetes registry: watch failed; keeping the last state and retrying with backoff");
        }
    }

    fn all_synced(&self) -> bool {
        self.state
            .iter()
            .all(|s| s.load(Ordering::Acquire) != PENDING)
    }
}

// === impl Stores ===

struct Spawner<'a> {
    client: &'a Client,
    shared: &'a Arc<Shared>,
    shutdown: &'a CancellationToken,
}

impl Spawner<'_> {
    fn spawn<K>(&self, tasks: &mut JoinSet<Kind>, kind: Kind) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (store, writer) = reflector::store::<K>();
        tasks.spawn(run_kind(
            kind,
            Api::<K>::all(self.client.clone()),
            writer,
            self.shared.clone(),
            self.shutdown.clone(),
        ));
        store
    }
}

struct Stores {
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    authorization_policies: Store<AuthorizationPolicy>,
    peer_authentications: Store<PeerAuthentication>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: by_name(&self.namespaces),
            nodes: by_name(&self.nodes),
            pods: by_key(&self.pods),
            services: by_key(&self.services),
            endpoint_slices: by_key(&self.endpoint_slices),
            authorization_policies: by_key(&self.authorization_policies),
            peer_authentications: by_key(&self.peer_authentications),
        }
    }
}

fn by_name<K>(store: &Store<K>) -> BTreeMap<String, K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .map(|obj| (obj.meta().name.clone().unwrap_or_default(), (*obj).clone()))
        .collect()
}

fn by_key<K>(store: &Store<K>) -> BTreeMap<Key, K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .map(|obj| {
            let meta = obj.meta();
            let key = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            (key, (*obj).clone())
        })
        .collect()
}

/// Whether two snapshots hold the same objects (so republishing would wake consumers for
/// nothing, e.g. after a re-list that found no change).
fn same(a: &Snapshot, b: &Snapshot) -> bool {
    a.namespaces == b.namespaces
        && a.nodes == b.nodes
        && a.pods == b.pods
        && a.services == b.services
        && a.endpoint_slices == b.endpoint_slices
        // The CRD root types do not derive PartialEq; their parts do.
        && same_by(&a.authorization_policies, &b.authorization_policies, |x, y| {
            x.metadata == y.metadata && x.spec == y.spec
        })
        && same_by(&a.peer_authentications, &b.peer_authentications, |x, y| {
            x.metadata == y.metadata && x.spec == y.spec
        })
}

fn same_by<V>(a: &BTreeMap<Key, V>, b: &BTreeMap<Key, V>, eq: impl Fn(&V, &V) -> bool) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && eq(va, vb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            notify: Notify::new(),
            state: Default::default(),
            stats: Arc::default(),
        }
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        kube::core::Status::failure("x", "y")
            .with_code(code)
            .boxed()
    }

    #[test]
    fn initial_sync_needs_every_kind() {
        let s = shared();
        for kind in &Kind::ALL[..KINDS - 1] {
            s.synced(*kind);
            assert!(!s.all_synced());
        }
        s.synced(Kind::PeerAuthentication);
        assert!(s.all_synced());
    }

    #[test]
    fn missing_crd_counts_as_synced_but_missing_core_kind_does_not() {
        let s = shared();
        for kind in [
            Kind::Namespace,
            Kind::Node,
            Kind::Pod,
            Kind::Service,
            Kind::PeerAuthentication,
        ] {
            s.synced(kind);
        }
        let not_found = || watcher::Error::InitialListFailed(kube::Error::Api(status(404)));
        s.watch_error(Kind::EndpointSlice, &not_found());
        s.watch_error(Kind::AuthorizationPolicy, &not_found());
        s.watch_error(Kind::AuthorizationPolicy, &not_found());
        assert!(!s.all_synced(), "a core kind answering 404 is not synced");
        assert!(s.stats.is_missing(Kind::AuthorizationPolicy));
        assert_eq!(s.stats.watch_errors(Kind::AuthorizationPolicy), 2);
        assert_eq!(s.stats.total_watch_errors(), 3);
        s.synced(Kind::EndpointSlice);
        assert!(s.all_synced());
        // CRDs installed later: the list succeeds and the kind is no longer missing.
        s.synced(Kind::AuthorizationPolicy);
        assert!(!s.stats.is_missing(Kind::AuthorizationPolicy));
    }

    #[test]
    fn a_synced_crd_stays_synced_on_404() {
        let s = shared();
        for kind in Kind::ALL {
            s.synced(kind);
        }
        let err = watcher::Error::WatchStartFailed(kube::Error::Api(status(404)));
        s.watch_error(Kind::PeerAuthentication, &err);
        assert!(s.all_synced());
        assert!(s.stats.is_missing(Kind::PeerAuthentication));
    }
}
