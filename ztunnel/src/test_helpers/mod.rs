//! Test helpers (feature `testing`): never part of a production build.

pub mod ca;
pub mod grpc;
pub mod inprocess;
pub mod netns;
pub mod pki;
pub mod xds;
pub mod zds;

/// The wire types, for tests that build control-plane resources.
pub use xds_proto;

use std::time::Duration;

use crate::state::{ProxyState, StateStore};

/// How long the waiting helpers wait before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until the published state satisfies `pred` (woken by each publish, no polling);
/// fails the test after [`PATIENCE`].
pub async fn wait_state(store: &StateStore, what: &str, pred: impl Fn(&ProxyState) -> bool) {
    let mut changes = store.subscribe();
    let wait = async {
        loop {
            if pred(&store.snapshot()) {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    if tokio::time::timeout(PATIENCE, wait).await.is_err() {
        panic!("timed out waiting for the state: {what}");
    }
}

/// Polls `check` every 10 ms until it holds; fails the test after [`PATIENCE`]. Only for
/// conditions nothing signals (counters, readiness).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
