//! What every registry (Kubernetes or local files) produces: a complete, immutable snapshot
//! of the Kubernetes objects the control plane reads. Translation and the servers only ever
//! see snapshots, so both registries run exactly the same code downstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

use crate::crd::{AuthorizationPolicy, PeerAuthentication};

/// `(namespace, name)`.
pub type Key = (String, String);

/// Every object the control plane reads, keyed by namespace and name.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods.
    pub pods: BTreeMap<Key, Pod>,
    /// Services.
    pub services: BTreeMap<Key, Service>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// `security.istio.io/v1` AuthorizationPolicies.
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    /// `security.istio.io/v1` PeerAuthentications.
    pub peer_authentications: BTreeMap<Key, PeerAuthentication>,
}

/// A registry's output: the latest snapshot, replaced whole on every change.
pub type SnapshotRx = watch::Receiver<Arc<Snapshot>>;
