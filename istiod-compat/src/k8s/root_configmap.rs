//! ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every enrolled namespace and in the
//! control plane's own namespace (where the node proxies and agents run: ztunnel mounts it
//! to verify istiod-compat's serving certificate), so they can read the mesh's trust anchor.
//!
//! Written with server-side apply (field manager `istiod-compat`, forced): creating and
//! updating are one idempotent call, and an unchanged ConfigMap is a no-op on the server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::K8sError;
use crate::model::{Snapshot, SnapshotRx};

/// Name of the root-certificate ConfigMap.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its data key.
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
/// Namespace label enrolling a namespace in the ambient mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Its enrolling value.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Field manager of our server-side applies.
const FIELD_MANAGER: &str = "istiod-compat";
/// Label istiod puts on the ConfigMaps it owns.
const ISTIO_CONFIG_LABEL: &str = "istio.io/config";

/// Enrolled (`istio.io/dataplane-mode=ambient`), non-terminating namespaces of `snapshot`.
pub fn enrolled_namespaces(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .namespaces
        .iter()
        .filter(|(_, ns)| is_enrolled(ns) && ns.metadata.deletion_timestamp.is_none())
        .map(|(name, _)| name.clone())
        .collect()
}

fn is_enrolled(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .is_some_and(|v| v == DATAPLANE_MODE_AMBIENT)
}

/// Applies `istio-ca-root-cert` with `root_pem` in every enrolled namespace of `snapshot`.
///
/// Every namespace is attempted; returns how many were applied, or an error naming the
/// namespaces that failed. Namespaces that are not enrolled are left alone (existing
/// ConfigMaps there are not deleted).
pub async fn publish_root_configmaps(
    client: &Client,
    snapshot: &Snapshot,
    root_pem: &str,
) -> Result<usize, K8sError> {
    apply_all(client, &enrolled_namespaces(snapshot), root_pem).await
}

async fn apply_all(
    client: &Client,
    namespaces: &BTreeSet<String>,
    root_pem: &str,
) -> Result<usize, K8sError> {
    let mut failed = Vec::new();
    let mut first_error = None;
    for namespace in namespaces {
        match apply_one(client, namespace, root_pem).await {
            Ok(()) => debug!(namespace, "root certificate ConfigMap applied"),
            Err(err) => {
                warn!(namespace, error = %err, "root certificate ConfigMap not applied");
                failed.push(namespace.clone());
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        None => Ok(namespaces.len()),
        Some(source) => Err(K8sError::RootConfigMaps {
            namespaces: failed,
            source,
        }),
    }
}

async fn apply_one(client: &Client, namespace: &str, root_pem: &str) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                ISTIO_CONFIG_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CONFIGMAP_KEY.to_string(),
            root_pem.to_string(),
        )])),
        ..Default::default()
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(ROOT_CONFIGMAP, &params, &Patch::Apply(&cm))
        .await
        .map(|_| ())
}

/// Keeps the ConfigMaps up to date until `shutdown`: applies to every enrolled namespace
/// and to each of `always` (the control plane's own namespace) at start, then to newly
/// enrolled ones on each snapshot; failed namespaces are retried
/// with backoff (1 s doubling to 1 min). Everything is re-applied every `resync` in case
/// someone edited or deleted a ConfigMap.
pub async fn run_root_configmaps(
    client: Client,
    mut snapshots: SnapshotRx,
    root_pem: String,
    always: BTreeSet<String>,
    resync: Duration,
    shutdown: CancellationToken,
) {
    const MIN_RETRY: Duration = Duration::from_secs(1);
    const MAX_RETRY: Duration = Duration::from_secs(60);
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut retry = MIN_RETRY;
    let mut next_resync = tokio::time::Instant::now() + resync;
    loop {
        let mut enrolled = enrolled_namespaces(&snapshots.borrow_and_update());
        enrolled.extend(always.iter().cloned());
        done.retain(|ns| enrolled.contains(ns));
        let todo: BTreeSet<String> = enrolled.difference(&done).cloned().collect();
        let mut wait = None;
        if !todo.is_empty() {
            let failed = match apply_all(&client, &todo, &root_pem).await {
                Ok(n) => {
                    info!(namespaces = n, "root certificate ConfigMaps published");
                    Vec::new()
                }
                Err(K8sError::RootConfigMaps { namespaces, .. }) => namespaces,
                Err(_) => todo.iter().cloned().collect(),
            };
            done.extend(todo.into_iter().filter(|ns| !failed.contains(ns)));
            if failed.is_empty() {
                retry = MIN_RETRY;
            } else {
                wait = Some(retry);
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
        let retry_at = wait.map(|w| tokio::time::Instant::now() + w);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = sleep_until_opt(retry_at) => {}
            _ = tokio::time::sleep_until(next_resync) => {
                done.clear();
                next_resync = tokio::time::Instant::now() + resync;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, mode: Option<&str>, terminating: bool) -> (String, Namespace) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: mode.map(|m| BTreeMap::from([(DATAPLANE_MODE_LABEL.into(), m.into())])),
                deletion_timestamp: terminating.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        (name.into(), ns)
    }

    #[test]
    fn only_ambient_live_namespaces_are_enrolled() {
        let snapshot = Snapshot {
            namespaces: BTreeMap::from([
                ns("a", Some("ambient"), false),
                ns("b", Some("none"), false),
                ns("c", None, false),
                ns("d", Some("ambient"), true),
            ]),
            ..Default::default()
        };
        assert_eq!(
            enrolled_namespaces(&snapshot),
            BTreeSet::from(["a".to_string()])
        );
    }
}
