//! Which pods on this node are enrolled: istiod-compat's enrollment decision
//! ([`istiod_compat::translate::workload::enrollment`]) over either the local-files registry
//! (istiod-compat's `files` module) or Kubernetes watchers (Pods on this node + Namespaces).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use istiod_compat::model::Snapshot;
use istiod_compat::translate::workload::{Enrollment, enrollment};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Service account when the pod names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// An enrolled pod as the source sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPod {
    /// `metadata.uid`, when the source has one (files may leave it out).
    pub uid: Option<String>,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
}

/// The enrolled pods of this node, by `(namespace, name)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrolled {
    /// The pods.
    pub pods: BTreeMap<(String, String), EnrolledPod>,
}

impl Enrolled {
    /// The enrolled pod matching a CNI-reported pod (by namespace and name, and by uid when
    /// the source knows it: a recreated pod with the same name is a different pod).
    pub fn matching(&self, namespace: &str, name: &str, uid: &str) -> Option<&EnrolledPod> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .filter(|p| p.uid.as_deref().is_none_or(|u| u == uid))
    }

    /// Enrollment of every pod in `snapshot` scheduled on `node` (or not scheduled at all,
    /// as in a hand-written files registry).
    pub fn from_snapshot(snapshot: &Snapshot, node: &str) -> Enrolled {
        let mut pods = BTreeMap::new();
        for ((ns, name), pod) in &snapshot.pods {
            let spec = pod.spec.as_ref();
            if spec
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n != node)
            {
                continue;
            }
            if enrollment(pod, snapshot.namespaces.get(ns)) != Enrollment::Ambient {
                continue;
            }
            let service_account = spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
            pods.insert(
                (ns.clone(), name.clone()),
                EnrolledPod {
                    uid: pod.metadata.uid.clone(),
                    service_account,
                },
            );
        }
        Enrolled { pods }
    }
}

/// Errors starting a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The files registry directory could not be read at start-up.
    #[error("files registry: {0}")]
    Files(#[from] istiod_compat::files::FilesError),
    /// No Kubernetes client (in-cluster config / kubeconfig).
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The watchers stopped before their initial list.
    #[error("kubernetes watchers ended before the initial sync")]
    NoInitialSync,
}

/// Starts the files source: reads `dir` now (errors are fatal), then re-reads it every
/// `poll` until `shutdown`, publishing the enrolled set whenever it changes.
pub fn files(
    dir: PathBuf,
    node: String,
    poll: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<Enrolled>>, SourceError> {
    let initial = istiod_compat::files::load_dir(&dir)?;
    let (out_tx, out_rx) = watch::channel(Arc::new(Enrolled::from_snapshot(&initial, &node)));
    let (snap_tx, mut snap_rx) = watch::channel(Arc::new(initial));
    tokio::spawn(istiod_compat::files::run(dir, snap_tx, poll, shutdown));
    tokio::spawn(async move {
        while snap_rx.changed().await.is_ok() {
            let snapshot = snap_rx.borrow_and_update().clone();
            publish(&out_tx, Enrolled::from_snapshot(&snapshot, &node));
        }
    });
    Ok(out_rx)
}

fn publish(tx: &watch::Sender<Arc<Enrolled>>, next: Enrolled) {
    tx.send_if_modified(|cur| {
        if **cur == next {
            false
        } else {
            *cur = Arc::new(next);
            true
        }
    });
}

/// Starts the Kubernetes source with `client`: watches this node's Pods (field selector
/// `spec.nodeName=<node>`) and all Namespaces; returns after both initial lists.
pub async fn kubernetes(
    client: Client,
    node: String,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<Enrolled>>, SourceError> {
    kubernetes_watch(client, node, true, shutdown).await
}

/// [`kubernetes`], with the server-side Pod filter optional (`field_selector: false` watches
/// every Pod; other nodes' pods are still ignored, client-side).
pub async fn kubernetes_watch(
    client: Client,
    node: String,
    field_selector: bool,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<Enrolled>>, SourceError> {
    let (changed_tx, mut changed_rx) = mpsc::channel::<bool>(16);
    let mut pods_cfg = watcher::Config::default();
    if field_selector {
        pods_cfg = pods_cfg.fields(&format!("spec.nodeName={node}"));
    }
    let pods = spawn_reflector(
        Api::<Pod>::all(client.clone()),
        pods_cfg,
        changed_tx.clone(),
        shutdown.clone(),
    );
    let namespaces = spawn_reflector(
        Api::<Namespace>::all(client),
        watcher::Config::default(),
        changed_tx,
        shutdown.clone(),
    );
    // Both stores complete their first list before anything is published.
    pods.wait_until_ready()
        .await
        .map_err(|_| SourceError::NoInitialSync)?;
    namespaces
        .wait_until_ready()
        .await
        .map_err(|_| SourceError::NoInitialSync)?;
    let snapshot = |pods: &Store<Pod>, namespaces: &Store<Namespace>| {
        let mut s = Snapshot::default();
        for ns in namespaces.state() {
            if let Some(name) = ns.metadata.name.clone() {
                s.namespaces.insert(name, (*ns).clone());
            }
        }
        for pod in pods.state() {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if let Some(name) = pod.metadata.name.clone() {
                s.pods.insert((ns, name), (*pod).clone());
            }
        }
        s
    };
    let (tx, rx) = watch::channel(Arc::new(Enrolled::from_snapshot(
        &snapshot(&pods, &namespaces),
        &node,
    )));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                c = changed_rx.recv() => if c.is_none() { return },
            }
            publish(
                &tx,
                Enrolled::from_snapshot(&snapshot(&pods, &namespaces), &node),
            );
        }
    });
    Ok(rx)
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    changed: mpsc::Sender<bool>,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                )) => {
                    let _ = changed.send(true).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch error (retrying)")
                }
                None => return,
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use istiod_compat::k8s::fake::FakeApiServer;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn ns(name: &str, ambient: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: ambient.then(|| {
                    BTreeMap::from([("istio.io/dataplane-mode".into(), "ambient".into())])
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(namespace: &str, name: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some("sa".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn next(rx: &mut watch::Receiver<Arc<Enrolled>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("no enrollment change in time")
            .unwrap();
        rx.borrow_and_update()
            .pods
            .keys()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect()
    }

    /// The Kubernetes source against the in-repo fake apiserver through a real kube client.
    #[tokio::test]
    async fn kubernetes_source_follows_namespace_and_pod_changes() {
        let api = FakeApiServer::start().await.unwrap();
        api.apply(&ns("mesh", true));
        api.apply(&pod("mesh", "a", "node1"));
        api.apply(&pod("mesh", "elsewhere", "node2"));
        let shutdown = CancellationToken::new();
        let mut rx = kubernetes(api.client(), "node1".into(), shutdown.clone())
            .await
            .unwrap();
        let initial: Vec<_> = rx.borrow_and_update().pods.keys().cloned().collect();
        assert_eq!(initial, vec![("mesh".to_string(), "a".to_string())]);
        // The uid is the apiserver's (the fake assigns its own).
        let uid = api
            .get::<Pod>("mesh", "a")
            .and_then(|p| p.metadata.uid)
            .unwrap();
        let enrolled = rx.borrow().clone();
        assert_eq!(
            enrolled
                .matching("mesh", "a", &uid)
                .unwrap()
                .service_account,
            "sa"
        );
        assert!(enrolled.matching("mesh", "a", "another-uid").is_none());

        api.apply(&ns("mesh", false));
        assert!(next(&mut rx).await.is_empty());
        // Another node's pod, applied before `b`: by the time `b` arrives it would have too.
        api.apply(&pod("mesh", "late-elsewhere", "node2"));
        let mut labelled = pod("mesh", "b", "node1");
        labelled.metadata.labels = Some(BTreeMap::from([(
            "istio.io/dataplane-mode".into(),
            "ambient".into(),
        )]));
        api.apply(&labelled);
        assert_eq!(next(&mut rx).await, vec!["mesh/b"]);
        api.delete::<Pod>("mesh", "b");
        assert!(next(&mut rx).await.is_empty());
        shutdown.cancel();

        // The apiserver filtered: other nodes' pods never reached the agent at all.
        let delivered: Vec<String> = api
            .deliveries()
            .into_iter()
            .filter(|d| d.resource == "pods")
            .map(|d| format!("{} {}", d.event, d.name))
            .collect();
        assert!(delivered.contains(&"LIST a".to_string()), "{delivered:?}");
        assert!(delivered.contains(&"ADDED b".to_string()), "{delivered:?}");
        assert!(
            delivered.contains(&"DELETED b".to_string()),
            "{delivered:?}"
        );
        assert!(
            !delivered.iter().any(|d| d.contains("elsewhere")),
            "{delivered:?}"
        );
        let pod_requests: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.resource == "pods")
            .collect();
        assert!(!pod_requests.is_empty());
        for r in &pod_requests {
            assert!(
                r.query.contains("fieldSelector=spec.nodeName%3Dnode1") && r.status == 200,
                "{r:?}"
            );
        }
    }

    fn snapshot(yaml: &str) -> Snapshot {
        let parsed =
            istiod_compat::files::parse_documents(std::path::Path::new("t.yaml"), yaml).unwrap();
        istiod_compat::files::build_snapshot(parsed.objects).0
    }

    #[test]
    fn enrollment_by_namespace_label_pod_label_and_node() {
        let s = snapshot(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: mesh, uid: uid-a}
spec: {nodeName: n1, serviceAccountName: sleep, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, namespace: mesh, labels: {istio.io/dataplane-mode: none}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: plain}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: other-node, namespace: mesh}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.5}
"#,
        );
        let e = Enrolled::from_snapshot(&s, "n1");
        let keys: Vec<_> = e.pods.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
        assert_eq!(keys, vec!["mesh/a", "plain/b"]);
        assert_eq!(
            e.pods[&("mesh".into(), "a".into())].service_account,
            "sleep"
        );
        assert_eq!(
            e.pods[&("plain".into(), "b".into())].service_account,
            "default"
        );
        assert!(e.matching("mesh", "a", "uid-a").is_some());
        assert!(e.matching("mesh", "a", "uid-other").is_none());
        assert!(e.matching("plain", "b", "anything").is_some());
        assert!(e.matching("plain", "c", "x").is_none());
    }
}
