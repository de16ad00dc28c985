//! One file's YAML (or JSON) document stream → Kubernetes objects, dispatched on
//! `apiVersion`/`kind`.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodCondition, PodIP, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::FilesError;
use crate::crd::{AuthorizationPolicy, PeerAuthentication};
use crate::model::Snapshot;

/// An object read from a file.
#[derive(Debug, Clone)]
pub enum Object {
    /// `v1` Namespace.
    Namespace(Box<Namespace>),
    /// `v1` Node.
    Node(Box<Node>),
    /// `v1` Pod (with the file defaults applied, see [`pod_defaults`]).
    Pod(Box<Pod>),
    /// `v1` Service.
    Service(Box<Service>),
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// `security.istio.io/v1` (or `v1beta1`) AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// `security.istio.io/v1` (or `v1beta1`) PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
}

impl Object {
    fn describe(&self) -> (&'static str, &ObjectMeta) {
        match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Node(o) => ("Node", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::AuthorizationPolicy(o) => ("AuthorizationPolicy", &o.metadata),
            Object::PeerAuthentication(o) => ("PeerAuthentication", &o.metadata),
        }
    }
}

/// A parsed file: its objects in order, and warnings (unknown kinds).
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Objects, in document order.
    pub objects: Vec<Object>,
    /// Non-fatal problems (skipped documents).
    pub warnings: Vec<String>,
}

/// Parses a document stream. Empty and comment-only documents are skipped; `kind: List`
/// documents are expanded; unknown kinds are skipped with a warning. Any other problem (bad
/// YAML, a known kind that does not deserialize, a missing name) fails the whole file, so a
/// half-read file never replaces a good one.
pub fn parse_documents(path: &Path, text: &str) -> Result<Parsed, FilesError> {
    let mut parsed = Parsed::default();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| FilesError::Yaml {
            path: path.to_owned(),
            document: index,
            source,
        })?;
        add_value(path, index, value, &mut parsed, 0)?;
    }
    Ok(parsed)
}

fn invalid(path: &Path, document: usize, reason: impl Into<String>) -> FilesError {
    FilesError::Invalid {
        path: path.to_owned(),
        document,
        reason: reason.into(),
    }
}

fn add_value(
    path: &Path,
    index: usize,
    value: Value,
    parsed: &mut Parsed,
    depth: usize,
) -> Result<(), FilesError> {
    let mut map = match value {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => return Err(invalid(path, index, "a document must be a mapping")),
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let api_version =
        text(map.get("apiVersion")).ok_or_else(|| invalid(path, index, "missing apiVersion"))?;
    let kind = text(map.get("kind")).ok_or_else(|| invalid(path, index, "missing kind"))?;

    let known = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            if depth > 0 {
                return Err(invalid(path, index, "nested List"));
            }
            let items = match map.remove("items") {
                Some(Value::Sequence(items)) => items,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(invalid(path, index, "List items must be a sequence")),
            };
            for item in items {
                add_value(path, index, item, parsed, depth + 1)?;
            }
            return Ok(());
        }
        ("v1", k @ ("Namespace" | "Node" | "Pod" | "Service")) => k,
        ("discovery.k8s.io/v1", k @ "EndpointSlice") => k,
        (
            "security.istio.io/v1" | "security.istio.io/v1beta1",
            k @ ("AuthorizationPolicy" | "PeerAuthentication"),
        ) => {
            // One Rust type serves both versions (same fields).
            map.insert("apiVersion".into(), "security.istio.io/v1".into());
            k
        }
        _ => {
            parsed.warnings.push(format!(
                "{}: document {index}: unsupported {api_version} {kind}; skipped",
                path.display()
            ));
            return Ok(());
        }
    };
    let value = Value::Mapping(map);
    let err = |source: serde_yaml::Error| FilesError::Object {
        path: path.to_owned(),
        document: index,
        kind: kind.clone(),
        source,
    };
    let object = match known {
        "Namespace" => Object::Namespace(de(value).map_err(err)?),
        "Node" => Object::Node(de(value).map_err(err)?),
        "Pod" => Object::Pod(Box::new(pod_defaults(*de(value).map_err(err)?))),
        "Service" => Object::Service(de(value).map_err(err)?),
        "EndpointSlice" => Object::EndpointSlice(de(value).map_err(err)?),
        "AuthorizationPolicy" => Object::AuthorizationPolicy(de(value).map_err(err)?),
        _ => Object::PeerAuthentication(de(value).map_err(err)?),
    };
    push(path, index, object, parsed)
}

fn de<T: DeserializeOwned>(value: Value) -> Result<Box<T>, serde_yaml::Error> {
    serde_yaml::from_value(value).map(Box::new)
}

/// Checks the name and gives namespaced objects the `default` namespace when they have none
/// (as kubectl does), so the snapshot key and the object agree.
fn push(
    path: &Path,
    index: usize,
    mut object: Object,
    parsed: &mut Parsed,
) -> Result<(), FilesError> {
    let cluster_scoped = matches!(object, Object::Namespace(_) | Object::Node(_));
    let meta = match &mut object {
        Object::Namespace(o) => &mut o.metadata,
        Object::Node(o) => &mut o.metadata,
        Object::Pod(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::AuthorizationPolicy(o) => &mut o.metadata,
        Object::PeerAuthentication(o) => &mut o.metadata,
    };
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(invalid(path, index, "metadata.name is required"));
    }
    if cluster_scoped {
        meta.namespace = None;
    } else if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".to_owned());
    }
    parsed.objects.push(object);
    Ok(())
}

/// Demo files may leave out what the kubelet would fill in: a pod without `status.phase` is
/// `Running`, and a running pod without a `Ready` condition is Ready. `status.podIP` alone
/// is enough for its addresses.
pub fn pod_defaults(mut pod: Pod) -> Pod {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    let phase = status.phase.get_or_insert_with(|| "Running".to_owned());
    let running = phase == "Running";
    if status.pod_ips.as_ref().is_none_or(Vec::is_empty)
        && let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty())
    {
        status.pod_ips = Some(vec![PodIP { ip }]);
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if running && !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(PodCondition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            ..PodCondition::default()
        });
    }
    pod
}

/// Builds a snapshot from objects in order; a later object with the same kind, namespace and
/// name replaces an earlier one (with a warning).
pub fn build_snapshot(objects: impl IntoIterator<Item = Object>) -> (Snapshot, Vec<String>) {
    let mut snapshot = Snapshot::default();
    let mut warnings = Vec::new();
    for object in objects {
        let (kind, meta) = object.describe();
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let key = (namespace.clone(), name.clone());
        let replaced = match object {
            Object::Namespace(o) => snapshot.namespaces.insert(name.clone(), *o).is_some(),
            Object::Node(o) => snapshot.nodes.insert(name.clone(), *o).is_some(),
            Object::Pod(o) => snapshot.pods.insert(key, *o).is_some(),
            Object::Service(o) => snapshot.services.insert(key, *o).is_some(),
            Object::EndpointSlice(o) => snapshot.endpoint_slices.insert(key, *o).is_some(),
            Object::AuthorizationPolicy(o) => {
                snapshot.authorization_policies.insert(key, *o).is_some()
            }
            Object::PeerAuthentication(o) => {
                snapshot.peer_authentications.insert(key, *o).is_some()
            }
        };
        if replaced {
            let full = if namespace.is_empty() {
                name
            } else {
                format!("{namespace}/{name}")
            };
            warnings.push(format!("duplicate {kind} {full}: the later one wins"));
        }
    }
    (snapshot, warnings)
}
