//! The fake apiserver's data: objects per resource as JSON, a global resourceVersion, the
//! retained event history per resource (for watches resuming from a version), and the
//! broadcast that feeds open watches.
//!
//! Every write bumps the global version and appends + broadcasts its event under the state
//! lock, so a watch that reads history and subscribes under that same lock sees every event
//! exactly once and in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::selector::FieldSelector;

/// A resource the fake serves.
#[derive(Debug)]
pub(super) struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Served only while the Istio CRDs are "installed".
    pub crd: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn def(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    crd: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        kind,
        namespaced,
        crd,
    }
}

/// Every stored resource (TokenReview is answered, never stored).
pub(super) static RESOURCES: &[ResourceDef] = &[
    def("", "v1", "namespaces", "Namespace", false, false),
    def("", "v1", "nodes", "Node", false, false),
    def("", "v1", "pods", "Pod", true, false),
    def("", "v1", "services", "Service", true, false),
    def("", "v1", "secrets", "Secret", true, false),
    def("", "v1", "configmaps", "ConfigMap", true, false),
    def(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    def(
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        true,
    ),
    def(
        "security.istio.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        true,
        true,
    ),
];

pub(super) fn find_def(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// An API error answered as a `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason_for(code),
            message: message.into(),
        }
    }

    pub fn status_json(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

pub(super) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// One watch event, serialized once as a JSON line.
#[derive(Debug)]
pub(super) struct WatchRecord {
    pub rv: u64,
    pub bookmark: bool,
    pub namespace: String,
    pub line: Bytes,
    /// `ADDED`, `MODIFIED`, `DELETED` or `BOOKMARK`.
    pub event: &'static str,
    /// The event's object (none for bookmarks), for field selectors.
    pub object: Option<Value>,
    /// For MODIFIED: the object before the change.
    pub prev: Option<Value>,
}

pub(super) fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

pub(super) struct KindState {
    pub def: &'static ResourceDef,
    pub objects: BTreeMap<(String, String), Value>,
    /// Events newer than `compacted_at`.
    history: Vec<Arc<WatchRecord>>,
    /// Watches from a version older than this get 410 Gone.
    compacted_at: u64,
    tx: broadcast::Sender<Arc<WatchRecord>>,
}

/// What a new watch starts with.
pub(super) struct WatchStart {
    pub initial: Vec<Bytes>,
    pub from: u64,
    pub rx: broadcast::Receiver<Arc<WatchRecord>>,
}

/// A TokenReview answer.
#[derive(Debug, Clone)]
pub(super) struct TokenEntry {
    pub username: String,
    pub extras: BTreeMap<String, Vec<String>>,
    pub audiences: Vec<String>,
}

/// How a PATCH body applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchKind {
    /// JSON merge patch (also used for strategic merge: the fake has no schemas).
    Merge,
    /// Server-side apply, approximated as a merge that creates a missing object.
    Apply,
}

pub(super) struct State {
    rv: u64,
    kinds: HashMap<&'static str, KindState>,
    pub crds_installed: bool,
    pub tokens: HashMap<String, TokenEntry>,
}

type Key = (String, String);

impl State {
    pub fn new(crds_installed: bool) -> Self {
        let kinds = RESOURCES
            .iter()
            .map(|def| {
                let (tx, _) = broadcast::channel(4096);
                (
                    def.plural,
                    KindState {
                        def,
                        objects: BTreeMap::new(),
                        history: Vec::new(),
                        compacted_at: 0,
                        tx,
                    },
                )
            })
            .collect();
        State {
            rv: 1000,
            kinds,
            crds_installed,
            tokens: HashMap::new(),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn kind_mut(&mut self, def: &ResourceDef) -> Result<&mut KindState, ApiError> {
        // Every def in RESOURCES has a KindState (both are built from the same table).
        self.kinds
            .get_mut(def.plural)
            .ok_or_else(|| ApiError::new(404, format!("the server does not serve {}", def.plural)))
    }

    fn kind(&self, def: &ResourceDef) -> Option<&KindState> {
        self.kinds.get(def.plural)
    }

    pub fn get(&self, def: &ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.kind(def)
            .and_then(|k| k.objects.get(&(namespace.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| not_found(def, name))
    }

    /// Objects (of `namespace`, or all) and the list's resourceVersion.
    pub fn list(&self, def: &ResourceDef, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let items = self
            .kind(def)
            .map(|k| {
                k.objects
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| ns == want))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, self.rv)
    }

    pub fn create(
        &mut self,
        def: &'static ResourceDef,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let name = object_name(&obj)?;
        let key = (namespace.to_string(), name.clone());
        if self.kind_mut(def)?.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", def.plural),
            });
        }
        self.store(def, key, obj, None)
    }

    /// Creates or fully replaces (whatever its resourceVersion says).
    pub fn upsert(
        &mut self,
        def: &'static ResourceDef,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        if name.is_empty() {
            return Err(ApiError::new(422, "metadata.name is required"));
        }
        let key = (namespace.to_string(), name.to_string());
        let old = self.kind_mut(def)?.objects.get(&key).cloned();
        self.store(def, key, obj, old.as_ref())
    }

    pub fn replace(
        &mut self,
        def: &'static ResourceDef,
        namespace: &str,
        name: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        if object_name(&obj)? != name {
            return Err(ApiError::new(400, "name in body differs from the URL"));
        }
        let key = (namespace.to_string(), name.to_string());
        let old = self
            .kind_mut(def)?
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(def, name))?;
        let want = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        let have = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !want.is_empty() && want != have {
            return Err(ApiError::new(
                409,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                    def.plural
                ),
            ));
        }
        self.store(def, key, obj, Some(&old))
    }

    pub fn patch(
        &mut self,
        def: &'static ResourceDef,
        namespace: &str,
        name: &str,
        patch: &Value,
        kind: PatchKind,
    ) -> Result<Value, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        let old = self.kind_mut(def)?.objects.get(&key).cloned();
        match (old, kind) {
            (Some(old), _) => {
                let mut merged = old.clone();
                merge_patch(&mut merged, patch);
                merged["metadata"]["name"] = json!(name);
                self.store(def, key, merged, Some(&old))
            }
            (None, PatchKind::Apply) => {
                let mut obj = patch.clone();
                merge_patch(&mut obj, &json!({ "metadata": { "name": name } }));
                self.store(def, key, obj, None)
            }
            (None, PatchKind::Merge) => Err(not_found(def, name)),
        }
    }

    pub fn delete(
        &mut self,
        def: &'static ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rv = self.rv + 1;
        let kind = self.kind_mut(def)?;
        let mut obj = kind
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| not_found(def, name))?;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        kind.record(rv, "DELETED", namespace, &obj, None);
        self.rv = rv;
        Ok(obj)
    }

    /// Stores `obj` under `key` (create when `old` is None), maintaining metadata, and emits
    /// the event. A write that changes nothing is a no-op returning the stored object, like
    /// the real apiserver.
    fn store(
        &mut self,
        def: &'static ResourceDef,
        key: Key,
        mut obj: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        normalize(def, &key, &mut obj);
        if let Some(old) = old {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                obj["metadata"][field] = old["metadata"][field].clone();
            }
            if &obj == old {
                return Ok(obj);
            }
        } else {
            let uid = format!("00000000-0000-4000-8000-{:012x}", self.rv + 1);
            obj["metadata"]["uid"] = json!(uid);
            obj["metadata"]["creationTimestamp"] = now();
        }
        let rv = self.rv + 1;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = self.kind_mut(def)?;
        kind.objects.insert(key.clone(), obj.clone());
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        kind.record(rv, event, &key.0, &obj, old);
        self.rv = rv;
        Ok(obj)
    }

    /// Starts a watch from `from` (None: synthetic ADDED events for the current objects),
    /// its initial events limited to `namespace` and `selector`.
    pub fn watch(
        &mut self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        selector: &FieldSelector,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let current = self.rv;
        let kind = self.kind_mut(def)?;
        let in_ns = |ns: &str| namespace.is_none_or(|want| ns == want);
        let (initial, from) = match from {
            None => (
                kind.objects
                    .iter()
                    .filter(|((ns, _), obj)| in_ns(ns) && selector.matches(obj))
                    .map(|(_, obj)| event_line("ADDED", obj))
                    .collect(),
                current,
            ),
            Some(rv) if rv < kind.compacted_at => {
                return Err(ApiError::new(
                    410,
                    format!("too old resource version: {rv} ({})", kind.compacted_at),
                ));
            }
            Some(rv) => (
                kind.history
                    .iter()
                    .filter(|r| r.rv > rv && in_ns(&r.namespace))
                    .filter_map(|r| selector.watch_line(r))
                    .collect(),
                rv.max(current),
            ),
        };
        Ok(WatchStart {
            initial,
            from,
            rx: kind.tx.subscribe(),
        })
    }

    /// Sends a BOOKMARK at the current version to every open watch.
    pub fn bookmark(&mut self) {
        let rv = self.rv;
        for kind in self.kinds.values() {
            let object = json!({
                "kind": kind.def.kind,
                "apiVersion": kind.def.api_version(),
                "metadata": { "resourceVersion": rv.to_string() },
            });
            let record = WatchRecord {
                rv,
                bookmark: true,
                namespace: String::new(),
                line: event_line("BOOKMARK", &object),
                event: "BOOKMARK",
                object: None,
                prev: None,
            };
            // No receivers is fine.
            let _ = kind.tx.send(Arc::new(record));
        }
    }

    /// Forgets all history: watches resuming from an older version get 410 Gone.
    pub fn compact(&mut self) {
        let rv = self.rv;
        for kind in self.kinds.values_mut() {
            kind.history.clear();
            kind.compacted_at = rv;
        }
    }

    pub fn open_watches(&self) -> usize {
        self.kinds.values().map(|k| k.tx.receiver_count()).sum()
    }
}

impl KindState {
    fn record(
        &mut self,
        rv: u64,
        event: &'static str,
        namespace: &str,
        obj: &Value,
        prev: Option<&Value>,
    ) {
        let record = Arc::new(WatchRecord {
            rv,
            bookmark: false,
            namespace: namespace.to_string(),
            line: event_line(event, obj),
            event,
            object: Some(obj.clone()),
            prev: prev.cloned(),
        });
        self.history.push(record.clone());
        // No receivers is fine.
        let _ = self.tx.send(record);
    }
}

fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::new(404, format!("{} \"{name}\" not found", def.plural))
}

fn object_name(obj: &Value) -> Result<String, ApiError> {
    match obj["metadata"]["name"].as_str() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(ApiError::new(422, "metadata.name is required")),
    }
}

/// apiVersion, kind and namespace as the server would set them; Secret `stringData` folded
/// into `data`.
fn normalize(def: &ResourceDef, key: &Key, obj: &mut Value) {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["name"] = json!(key.1);
    if def.namespaced {
        obj["metadata"]["namespace"] = json!(key.0);
    } else if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    if def.plural == "secrets" && obj.get("stringData").is_some() {
        fold_string_data(obj);
    }
}

fn fold_string_data(obj: &mut Value) {
    if let Ok(mut secret) = serde_json::from_value::<Secret>(obj.clone()) {
        if let Some(strings) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in strings {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
        if let Ok(value) = serde_json::to_value(&secret) {
            *obj = value;
        }
    }
}

fn now() -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap_or(Value::Null)
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static ResourceDef {
        find_def("", "v1", "pods").unwrap()
    }

    fn pod(name: &str, ip: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"podIP": ip}})
    }

    #[test]
    fn writes_bump_versions_and_noop_writes_do_not() {
        let mut s = State::new(true);
        let a = s.create(pods(), "ns", pod("a", "10.0.0.1")).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1001");
        assert_eq!(a["metadata"]["namespace"], "ns");
        assert_eq!(a["kind"], "Pod");
        let same = s
            .patch(
                pods(),
                "ns",
                "a",
                &json!({"status": {"podIP": "10.0.0.1"}}),
                PatchKind::Merge,
            )
            .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "1001");
        let moved = s
            .patch(
                pods(),
                "ns",
                "a",
                &json!({"status": {"podIP": "10.0.0.2"}}),
                PatchKind::Merge,
            )
            .unwrap();
        assert_eq!(moved["metadata"]["resourceVersion"], "1002");
        assert_eq!(moved["metadata"]["uid"], a["metadata"]["uid"]);
        assert_eq!(
            s.create(pods(), "ns", pod("a", "x")).unwrap_err().reason,
            "AlreadyExists"
        );
        let mut stale = pod("a", "10.0.0.3");
        stale["metadata"]["resourceVersion"] = json!("1001");
        assert_eq!(s.replace(pods(), "ns", "a", stale).unwrap_err().code, 409);
        assert_eq!(
            s.delete(pods(), "ns", "a").unwrap()["metadata"]["resourceVersion"],
            "1003"
        );
        assert_eq!(s.get(pods(), "ns", "a").unwrap_err().code, 404);
    }

    #[test]
    fn watch_resumes_from_history_until_compacted() {
        let mut s = State::new(true);
        s.create(pods(), "ns", pod("a", "1")).unwrap();
        s.create(pods(), "other", pod("b", "2")).unwrap();
        s.create(pods(), "ns", pod("c", "3")).unwrap();
        let w = s
            .watch(pods(), Some("ns"), &FieldSelector::default(), Some(1001))
            .unwrap();
        assert_eq!(w.initial.len(), 1, "only c: newer than 1001 and in ns");
        let w = s
            .watch(pods(), None, &FieldSelector::default(), None)
            .unwrap();
        assert_eq!(w.initial.len(), 3);
        assert_eq!(w.from, 1003);
        s.compact();
        assert_eq!(
            s.watch(pods(), None, &FieldSelector::default(), Some(1001))
                .err()
                .unwrap()
                .code,
            410
        );
        assert!(
            s.watch(pods(), None, &FieldSelector::default(), Some(1003))
                .is_ok()
        );
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let secrets = find_def("", "v1", "secrets").unwrap();
        let mut s = State::new(true);
        let got = s
            .create(
                secrets,
                "ns",
                json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(got["data"]["k"], "dg==");
        assert!(got.get("stringData").is_none());
    }
}
