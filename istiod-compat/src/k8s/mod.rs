//! The Kubernetes registry: watches the objects the control plane reads and publishes them as
//! whole [`Snapshot`](crate::model::Snapshot)s, plus the few writes istiod makes to the API
//! (TokenReview, the self-signed CA Secret, the root-certificate ConfigMaps).
//!
//! - [`registry`]: one kube-runtime `watcher` → `reflector` store per watched kind
//!   (Namespaces, Nodes, Pods, Services, EndpointSlices, AuthorizationPolicies,
//!   PeerAuthentications); a debounced task turns the stores into snapshots once every
//!   initial list is complete. Entry point: [`run`] (or [`Registry`] for stats and the
//!   initial-sync signal).
//! - [`auth`]: [`TokenReviewAuthenticator`], the Kubernetes [`Authenticator`](crate::ca::auth::Authenticator).
//! - [`ca_secret`]: [`load_or_create_ca_secret`] (plug-in `cacerts` or self-signed
//!   `istio-ca-secret`).
//! - [`root_configmap`]: [`publish_root_configmaps`] / [`run_root_configmaps`] keep
//!   `istio-ca-root-cert` in enrolled namespaces.
//! - `fake` (feature `testing`): an in-process fake apiserver for tests, driven by the real
//!   `kube::Client`.

pub mod auth;
pub mod ca_secret;
#[cfg(feature = "testing")]
pub mod fake;
pub mod registry;
pub mod root_configmap;
mod watch;

pub use auth::TokenReviewAuthenticator;
pub use ca_secret::{CaSecret, CaSource, load_or_create_ca_secret};
pub use registry::{InitialSync, Kind, Registry, RegistryConfig, RegistryStats, run};
pub use root_configmap::{publish_root_configmaps, run_root_configmaps};

/// Errors of the Kubernetes registry and helpers.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {op} {what}: {source}")]
    Api {
        /// The operation (`get`, `create`, `apply`, ...).
        op: &'static str,
        /// What it was applied to (`secret istio-system/istio-ca-secret`).
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A CA Secret exists but cannot be used; it is never overwritten.
    #[error("CA secret {namespace}/{name} is unusable: {reason}")]
    InvalidCaSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating the self-signed root failed.
    #[error("generating the self-signed CA root: {0}")]
    GenerateRoot(#[source] rcgen::Error),
    /// Some root-certificate ConfigMaps could not be written (the others were).
    #[error("root certificate ConfigMap not published in {} namespace(s) ({}): {source}", .namespaces.len(), .namespaces.join(", "))]
    RootConfigMaps {
        /// Namespaces that failed.
        namespaces: Vec<String>,
        /// The first failure.
        #[source]
        source: kube::Error,
    },
    /// A watch task ended unexpectedly (panic or a stream that should never end).
    #[error("watch task for {kind} ended unexpectedly: {reason}")]
    WatchTaskEnded {
        /// The watched kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

impl K8sError {
    pub(crate) fn api(op: &'static str, what: impl Into<String>, source: kube::Error) -> Self {
        K8sError::Api {
            op,
            what: what.into(),
            source,
        }
    }
}

/// HTTP status code of a Kubernetes API error, if the error is an API status.
pub(crate) fn api_status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
