//! An in-process fake Kubernetes apiserver for tests (feature `testing`), driven by the real
//! `kube::Client` over HTTP on `127.0.0.1:<port 0>`.
//!
//! It serves the resources the control plane uses — Namespaces, Nodes, Pods, Services,
//! EndpointSlices, Secrets, ConfigMaps and the Istio `security.istio.io/v1` CRDs — with:
//!
//! - `GET` list (one page; `resourceVersion` in the list metadata) and get;
//! - `GET ?watch=true`: chunked JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
//!   "object":...}`, honoring `resourceVersion` (resume from retained history, or 410 Gone
//!   after [`FakeApiServer::compact`]), `allowWatchBookmarks` ([`FakeApiServer::bookmark`],
//!   or periodically) and `timeoutSeconds`;
//! - `POST` create (409 AlreadyExists), `PUT` replace (409 on a stale resourceVersion),
//!   `PATCH` (merge, strategic-merge treated as merge, and server-side apply approximated as
//!   a merge that creates), `DELETE`;
//! - `POST` TokenReview answered from a token table ([`FakeApiServer::set_token`]).
//!
//! Tests change the world with [`FakeApiServer::apply`] / [`FakeApiServer::delete`] and
//! break it with [`Fault`]s, [`FakeApiServer::disconnect_watches`],
//! [`FakeApiServer::compact`] and [`FakeApiServer::set_istio_crds`]. Field selectors on
//! `metadata.name`, `metadata.namespace` and (Pods) `spec.nodeName` filter lists and watches
//! like the apiserver; other fields and label selectors are refused with 400 rather than
//! silently ignored. [`FakeApiServer::deliveries`] tells which objects reached clients.

mod http;
pub mod objects;
mod selector;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::http::Method;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::state::{ResourceDef, State, TokenEntry, find_def};
use crate::model::{Snapshot, SnapshotRx};

/// Audience of tokens that name none: the apiserver's own.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// An injected failure: matching requests are answered with `status` (a `Status` body)
/// instead of being served.
#[derive(Debug, Clone)]
pub struct Fault {
    status: u16,
    method: Option<Method>,
    resource: Option<String>,
    watch: Option<bool>,
    remaining: Option<usize>,
}

impl Fault {
    /// Every request fails with `status`, until narrowed.
    pub fn status(status: u16) -> Self {
        Fault {
            status,
            method: None,
            resource: None,
            watch: None,
            remaining: None,
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only requests for this resource (plural: `pods`, `secrets`, `tokenreviews`, ...).
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.to_string());
        self
    }

    /// Only watch requests (`true`) or only non-watch requests (`false`).
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Only the next `n` matching requests (default: all of them, until cleared).
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, method: &Method, resource: &str, watch: bool) -> bool {
        self.remaining != Some(0)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.watch.is_none_or(|w| w == watch)
    }
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Resource plural (empty if the path is not a resource path).
    pub resource: String,
    /// Whether it was a watch.
    pub watch: bool,
    /// Response status.
    pub status: u16,
}

/// One object the fake sent to a client: an item of a list response or a watch event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivery {
    /// Resource plural (`pods`, ...).
    pub resource: String,
    /// `LIST` for a list item, else the watch event type (`ADDED`, `MODIFIED`, `DELETED`).
    pub event: String,
    /// The object's namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl Delivery {
    fn of(resource: &str, event: &str, object: &serde_json::Value) -> Delivery {
        let meta = |field: &str| {
            object["metadata"][field]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        Delivery {
            resource: resource.to_string(),
            event: event.to_string(),
            namespace: meta("namespace"),
            name: meta("name"),
        }
    }
}

/// Shared by the test handle and the server tasks.
struct Inner {
    state: Mutex<State>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<RequestRecord>>,
    deliveries: Mutex<Vec<Delivery>>,
    disconnect: watch::Sender<u64>,
    /// Bumped after every request and every change made through the test API.
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
    max_watch_timeout: Option<Duration>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_fault(&self, method: &Method, resource: &str, watch: bool) -> Option<u16> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let fault = faults
            .iter_mut()
            .find(|f| f.matches(method, resource, watch))?;
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        Some(fault.status)
    }

    fn record(&self, record: RequestRecord) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        self.touch();
    }

    fn deliver(&self, delivery: Delivery) {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(delivery);
    }

    fn touch(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// Options for [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct FakeApiServerBuilder {
    istio_crds: bool,
    bookmark_interval: Option<Duration>,
    max_watch_timeout: Option<Duration>,
}

impl FakeApiServerBuilder {
    /// Whether the Istio CRDs are installed at start (default yes).
    pub fn istio_crds(mut self, installed: bool) -> Self {
        self.istio_crds = installed;
        self
    }

    /// Send a BOOKMARK to every watch that allows them this often (default: only on
    /// [`FakeApiServer::bookmark`]).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = Some(every);
        self
    }

    /// End every watch after at most this long, whatever `timeoutSeconds` says (default:
    /// as asked), to exercise watch restarts.
    pub fn max_watch_timeout(mut self, max: Duration) -> Self {
        self.max_watch_timeout = Some(max);
        self
    }

    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(self) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(self.istio_crds)),
            faults: Mutex::default(),
            requests: Mutex::default(),
            deliveries: Mutex::default(),
            disconnect: watch::Sender::new(0),
            changes: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
            max_watch_timeout: self.max_watch_timeout,
        });
        tokio::spawn(http::serve(listener, inner.clone()));
        if let Some(every) = self.bookmark_interval {
            let inner = inner.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tick.tick() => inner.lock().bookmark(),
                    }
                }
            });
        }
        Ok(FakeApiServer { inner, addr })
    }
}

/// The fake apiserver. Stops serving (and ends every watch) when dropped.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl FakeApiServer {
    /// Options.
    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder {
            istio_crds: true,
            bookmark_interval: None,
            max_watch_timeout: None,
        }
    }

    /// A fake with the Istio CRDs installed, on 127.0.0.1:0.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real `kube::Client` for this fake (`Config::new(url)`).
    ///
    /// # Panics
    /// If kube cannot build a client for a plain-HTTP URL (a kube feature problem).
    pub fn client(&self) -> kube::Client {
        match self.url().parse() {
            Ok(uri) => match kube::Client::try_from(kube::Config::new(uri)) {
                Ok(client) => client,
                Err(e) => panic!("kube client for the fake apiserver: {e}"),
            },
            Err(e) => panic!("fake apiserver URL: {e}"),
        }
    }

    /// Creates or replaces `obj` (namespace `default` if a namespaced object has none);
    /// watches see ADDED or MODIFIED (nothing if it is unchanged). Returns the stored
    /// object's resourceVersion.
    ///
    /// # Panics
    /// If `K` is not a resource the fake serves or `obj` has no name.
    pub fn apply<K>(&self, obj: &K) -> u64
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let def = def_of::<K>();
        let value = match serde_json::to_value(obj) {
            Ok(value) => value,
            Err(e) => panic!("serializing {}: {e}", def.kind),
        };
        let name = obj.meta().name.clone().unwrap_or_default();
        let namespace = if def.namespaced {
            obj.meta()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string())
        } else {
            String::new()
        };
        let stored = self.inner.lock().upsert(def, &namespace, &name, value);
        self.inner.touch();
        match stored {
            Ok(v) => v["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse().ok())
                .unwrap_or_default(),
            Err(e) => panic!("apply {} {namespace}/{name}: {}", def.kind, e.message),
        }
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds); watches see
    /// DELETED. Returns whether it existed.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        let def = def_of::<K>();
        let namespace = if def.namespaced { namespace } else { "" };
        let deleted = self.inner.lock().delete(def, namespace, name).is_ok();
        self.inner.touch();
        deleted
    }

    /// The stored object, if any.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let def = def_of::<K>();
        let namespace = if def.namespaced { namespace } else { "" };
        let value = self.inner.lock().get(def, namespace, name).ok()?;
        serde_json::from_value(value).ok()
    }

    /// Every stored object of kind `K`.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (items, _) = self.inner.lock().list(def_of::<K>(), None);
        items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// TokenReview accepts `token` for `username` with these `extras` (one value each) and
    /// audience `istio-ca`.
    pub fn set_token(&self, token: &str, username: &str, extras: &[(&str, &str)]) {
        self.set_token_with_audiences(token, username, extras, &["istio-ca"]);
    }

    /// Like [`Self::set_token`] with explicit token audiences.
    pub fn set_token_with_audiences(
        &self,
        token: &str,
        username: &str,
        extras: &[(&str, &str)],
        audiences: &[&str],
    ) {
        let extras: BTreeMap<String, Vec<String>> = extras
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect();
        self.inner.lock().tokens.insert(
            token.to_string(),
            TokenEntry {
                username: username.to_string(),
                extras,
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            },
        );
    }

    /// TokenReview no longer accepts `token`.
    pub fn remove_token(&self, token: &str) {
        self.inner.lock().tokens.remove(token);
    }

    /// Installs or removes the Istio CRDs: while removed their paths answer a plain 404.
    /// Stored objects are kept.
    pub fn set_istio_crds(&self, installed: bool) {
        self.inner.lock().crds_installed = installed;
    }

    /// Adds a fault (checked in order of insertion).
    pub fn inject(&self, fault: Fault) {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every object sent to a client so far (list items and watch events, in order; not
    /// bookmarks or errors): what a field selector kept from the client.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows them.
    pub fn bookmark(&self) {
        self.inner.lock().bookmark();
    }

    /// Forgets the event history: watches resuming from an older version get 410 Gone
    /// (and clients re-list).
    pub fn compact(&self) {
        self.inner.lock().compact();
    }

    /// Ends every open watch stream (clients resume from their last version).
    pub fn disconnect_watches(&self) {
        self.inner.disconnect.send_modify(|n| *n += 1);
    }

    /// Watches currently open.
    pub fn open_watches(&self) -> usize {
        self.inner.lock().open_watches()
    }

    /// Waits until `pred` holds, re-checking after every request the fake answers and every
    /// change made through this handle (no polling).
    ///
    /// # Panics
    /// After `timeout` (this is a test assertion).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&FakeApiServer) -> bool,
    ) {
        let mut changes = self.inner.changes.subscribe();
        let wait = async {
            while !pred(self) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            panic!("waiting for {what}: not seen within {timeout:?}");
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().resource_version()
    }
}

fn def_of<K: Resource<DynamicType = ()>>() -> &'static ResourceDef {
    let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
    match find_def(&group, &version, &plural) {
        Some(def) => def,
        None => panic!("the fake apiserver does not serve {group}/{version} {plural}"),
    }
}

/// Waits until the latest snapshot on `rx` satisfies `pred`, and returns it.
///
/// # Panics
/// After `timeout`, describing what the last snapshot held (this is a test assertion).
pub async fn expect_snapshot(
    rx: &mut SnapshotRx,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async { rx.wait_for(|s| pred(s)).await.map(|s| s.clone()) };
    let waited = tokio::time::timeout(timeout, wait).await;
    match waited {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(_)) => panic!("waiting for {what}: the registry stopped"),
        Err(_) => {
            let s = rx.borrow().clone();
            panic!(
                "waiting for {what}: not seen within {timeout:?}; last snapshot: namespaces {:?}, \
                 nodes {:?}, pods {:?}, services {:?}, endpoint slices {:?}, authorization \
                 policies {:?}, peer authentications {:?}",
                s.namespaces.keys().collect::<Vec<_>>(),
                s.nodes.keys().collect::<Vec<_>>(),
                s.pods.keys().collect::<Vec<_>>(),
                s.services.keys().collect::<Vec<_>>(),
                s.endpoint_slices.keys().collect::<Vec<_>>(),
                s.authorization_policies.keys().collect::<Vec<_>>(),
                s.peer_authentications.keys().collect::<Vec<_>>(),
            )
        }
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}
