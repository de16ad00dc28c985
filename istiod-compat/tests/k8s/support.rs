//! Shared harness: a fake apiserver and a running registry publishing into a receiver.

use std::sync::Arc;
use std::time::Duration;

use istiod_compat::k8s::fake::{FakeApiServer, expect_snapshot};
use istiod_compat::k8s::{InitialSync, K8sError, Registry, RegistryConfig, RegistryStats};
use istiod_compat::model::{Snapshot, SnapshotRx};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test waits for. Generous: kube's watch backoff starts at
/// 800 ms and doubles, and the machine may be busy.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Enrolment label.
pub const AMBIENT: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// A registry running against a fake apiserver; stopped on drop.
pub struct Harness {
    pub fake: FakeApiServer,
    pub rx: SnapshotRx,
    pub stats: Arc<RegistryStats>,
    pub sync: InitialSync,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), K8sError>>>,
}

impl Harness {
    /// Starts a registry (default timing) on `fake`.
    pub fn start(fake: FakeApiServer) -> Self {
        Self::start_with(fake, RegistryConfig::default())
    }

    /// Starts a registry with explicit timing on `fake`.
    pub fn start_with(fake: FakeApiServer, config: RegistryConfig) -> Self {
        let registry = Registry::with_config(fake.client(), config);
        let stats = registry.stats();
        let sync = registry.initial_sync();
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(registry.run(tx, shutdown.clone()));
        Harness {
            fake,
            rx,
            stats,
            sync,
            shutdown,
            task: Some(task),
        }
    }

    /// Waits for the initial sync and returns the first snapshot.
    pub async fn synced(&mut self) -> Arc<Snapshot> {
        let done = tokio::time::timeout(PATIENCE, self.sync.wait())
            .await
            .expect("initial sync within patience");
        assert!(done, "registry stopped before the initial sync");
        self.rx.borrow_and_update().clone()
    }

    /// Waits for a snapshot satisfying `pred`.
    pub async fn expect(
        &mut self,
        what: &str,
        pred: impl FnMut(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        expect_snapshot(&mut self.rx, PATIENCE, what, pred).await
    }

    /// Stops the registry and returns its result.
    pub async fn stop(mut self) -> Result<(), K8sError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("registry stops promptly")
            .expect("registry task does not panic")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `(namespace, name)` key.
pub fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}
