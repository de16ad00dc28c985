//! Tracks live inbound connections so a policy change can close the ones it no longer allows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::rbac::RbacConnection;
use crate::state::StateStore;

/// The live-connection table is shrunk only above this capacity.
const SHRINK_ABOVE: usize = 1024;

#[derive(Debug)]
struct Tracked {
    conn: RbacConnection,
    workload_uid: String,
    revoke: CancellationToken,
}

/// The registry of authorized, live inbound connections.
#[derive(Debug, Default)]
pub struct ConnectionManager {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Tracked>>,
    revoked: AtomicU64,
}

/// Keeps a connection registered; dropping it unregisters.
#[derive(Debug)]
pub struct ConnectionGuard {
    id: u64,
    manager: Arc<ConnectionManager>,
    /// Cancelled when a policy change revokes the connection.
    pub revoked: CancellationToken,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.manager.live.lock() {
            live.remove(&self.id);
            // After a wave of connections closed, give the table's memory back (a map
            // never shrinks by itself; 10,000 entries keep ~4 MiB).
            if live.capacity() > SHRINK_ABOVE && live.len() < live.capacity() / 8 {
                let keep = live.len() * 2;
                live.shrink_to(keep);
            }
        }
    }
}

impl ConnectionManager {
    /// Registers a connection to workload `workload_uid` (before its RBAC check, so no
    /// policy change between check and registration is missed).
    pub fn register(
        self: &Arc<Self>,
        conn: RbacConnection,
        workload_uid: String,
    ) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoke = CancellationToken::new();
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                id,
                Tracked {
                    conn,
                    workload_uid,
                    revoke: revoke.clone(),
                },
            );
        }
        ConnectionGuard {
            id,
            manager: self.clone(),
            revoked: revoke,
        }
    }

    /// Number of tracked connections.
    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many connections policy changes have closed so far.
    pub fn revoked_total(&self) -> u64 {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Re-checks every live connection against the current state; revokes the denied ones.
    /// Returns how many were revoked.
    pub fn recheck(&self, store: &StateStore) -> usize {
        let state = store.snapshot();
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        let mut revoked = 0;
        for t in live.values() {
            if t.revoke.is_cancelled() {
                continue;
            }
            let decision = match state.workloads.get(&t.workload_uid) {
                Some(w) => state.assert_rbac(w, &t.conn).map_err(|e| e.to_string()),
                None => Err("destination workload removed".to_string()),
            };
            if let Err(reason) = decision {
                info!(
                    target: "access", direction = "inbound",
                    src.addr = %t.conn.src,
                    dst.addr = %t.conn.dst,
                    src.identity = t.conn.src_identity.as_ref().map(|i| i.to_string()),
                    error = "connection closed due to policy change",
                    reason = %reason,
                    "connection revoked"
                );
                t.revoke.cancel();
                revoked += 1;
            }
        }
        self.revoked.fetch_add(revoked as u64, Ordering::Relaxed);
        revoked
    }

    /// Re-checks on every state change until `stop`.
    pub async fn watch(self: Arc<Self>, store: Arc<StateStore>, stop: CancellationToken) {
        let mut changes = store.subscribe();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                res = changes.changed() => if res.is_err() { return },
            }
            self.recheck(&store);
        }
    }
}
