//! One watched kind: kube-runtime `watcher` (with kube's default backoff) → trim → `reflector`
//! store, reporting store changes, initial syncs and errors to the registry.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::registry::{Kind, Shared};

/// Annotation `kubectl apply` leaves on every object: a full copy of the object, never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Watches one kind until `shutdown`; returns the kind so the registry knows which task ended.
pub(crate) async fn run_kind<K>(
    kind: Kind,
    api: Api<K>,
    writer: Writer<K>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Kind
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim::<K>)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return kind,
            next = stream.next() => next,
        };
        match next {
            // The store swaps in the complete list at InitDone (first sync and every re-list).
            Some(Ok(watcher::Event::InitDone)) => shared.synced(kind),
            Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => shared.changed(kind),
            // Buffered by the store until InitDone: nothing visible changed yet.
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Err(err)) => shared.watch_error(kind, &err),
            // A watcher stream never ends on its own; the registry reports it.
            None => return kind,
        }
    }
}

/// Drops what the control plane never reads but can be large: managed fields and the
/// last-applied copy of the object.
fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Whether a watch error is a 404: for a CRD, "not installed".
pub(crate) fn is_not_found(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => super::api_status_code(e) == Some(404),
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

/// Whether a watch error is the routine "resource version too old" (410) that makes the
/// watcher re-list.
pub(crate) fn is_gone(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            super::api_status_code(e) == Some(410)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;

    #[test]
    fn trim_drops_managed_fields_and_last_applied_only() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.to_string(), "{}".to_string()),
                    ("keep".to_string(), "me".to_string()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        trim(&mut pod);
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(
            pod.metadata.annotations,
            Some(BTreeMap::from([("keep".to_string(), "me".to_string())]))
        );
    }

    #[test]
    fn classifies_not_found_and_gone() {
        let status = |code| {
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed()
        };
        let nf = watcher::Error::InitialListFailed(kube::Error::Api(status(404)));
        assert!(is_not_found(&nf));
        assert!(!is_gone(&nf));
        let gone = watcher::Error::WatchError(status(410));
        assert!(is_gone(&gone));
        assert!(!is_not_found(&gone));
        let other = watcher::Error::InitialListFailed(kube::Error::Api(status(500)));
        assert!(!is_not_found(&other) && !is_gone(&other));
    }
}
