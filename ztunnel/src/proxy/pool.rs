//! The HBONE connection pool (reference §6).
//!
//! Connections are shared per [`WorkloadKey`]. Rules:
//! - **One dial per key at a time.** A per-key async mutex serializes dials; requests that
//!   queued behind a dial re-check the pool when they get the mutex. If that dial failed,
//!   they all get its error ([`HboneError::Dial`]) instead of dialing again one by one; the
//!   next request after that dials afresh.
//! - **Reuse.** A request takes a stream slot on a ready pooled connection with free
//!   capacity (`min(max_streams_per_connection, H2Client::max_streams())`). A connection
//!   whose in-use count reaches its max leaves the pool; it closes once its streams end.
//! - **Health.** Connections that are not ready (GOAWAY, error, keepalive failure, driver
//!   ended) are discarded at checkout and never handed out.
//! - **Idle eviction.** A connection not checked out for `idle_timeout` is dropped from the
//!   pool; in-flight streams keep working and the connection closes after them.
//! - **Locking.** The std mutex guarding the map is held only for short, non-async
//!   sections. No lock is held across a handshake except the per-key dial mutex.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use mesh_core::Identity;
use tokio::time::Instant;

use crate::identity::BoxFuture;
use crate::proxy::hbone::{ActiveStreamGuard, H2Client, H2Stream, HboneError};

/// What makes two HBONE connections interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    /// The source workload identity (our client certificate).
    pub src_id: Identity,
    /// The identities the peer certificate may carry (any one of them).
    pub dst_id: Vec<Identity>,
    /// The TCP destination, e.g. `podIP:15008` or `waypointIP:15008`: the server checks
    /// that the L3 destination matches the authority.
    pub dst: SocketAddr,
    /// The downstream client IP: the source is spoofed, so it is part of the connection.
    pub src: IpAddr,
}

/// Opens a new HBONE connection for a key (TCP + TLS + HTTP/2 handshake).
pub trait Connector: Send + Sync + 'static {
    /// Dials `key.dst` as `key.src_id`, verifying the peer against `key.dst_id`.
    fn connect<'a>(&'a self, key: &'a WorkloadKey) -> BoxFuture<'a, Result<H2Client, HboneError>>;
}

/// A pool of HBONE connections shared per [`WorkloadKey`]. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_streams", &self.inner.max_streams)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("pooled_connections", &self.pooled_connections())
            .finish()
    }
}

struct PoolInner {
    connector: Arc<dyn Connector>,
    max_streams: usize,
    idle_timeout: Duration,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    keys: HashMap<WorkloadKey, KeyEntry>,
    /// Whether an idle-eviction task is running (it stops when the pool is empty).
    reaper_running: bool,
}

struct KeyEntry {
    conns: Vec<PooledConnection>,
    /// Held while dialing for this key.
    dial: Arc<tokio::sync::Mutex<()>>,
    /// Completed dial attempts for this key.
    dial_attempts: u64,
    /// The error of the latest attempt, if it failed.
    last_dial_error: Option<Arc<HboneError>>,
}

struct PooledConnection {
    client: H2Client,
    last_checkout: Instant,
}

/// A stream slot taken on a connection.
type Checkout = (H2Client, ActiveStreamGuard);

impl Pool {
    /// A pool dialing with `connector`, opening at most `max_streams_per_connection`
    /// streams per connection, and dropping connections unused for `idle_timeout`
    /// (`POOL_UNUSED_RELEASE_TIMEOUT`, 5 min by default).
    pub fn new(
        connector: Arc<dyn Connector>,
        max_streams_per_connection: u32,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                connector,
                max_streams: (max_streams_per_connection as usize).max(1),
                idle_timeout,
                state: Mutex::new(PoolState::default()),
            }),
        }
    }

    /// Opens a CONNECT stream for `req` on a pooled connection for `key`, dialing one if
    /// needed. Returns the 200 response head and the stream; a non-200 answer is
    /// [`HboneError::Status`].
    pub async fn send_request(
        &self,
        key: &WorkloadKey,
        req: http::Request<()>,
    ) -> Result<(http::response::Parts, H2Stream), HboneError> {
        let (client, slot) = self.checkout(key).await?;
        client.connect_reserved(slot, req).await
    }

    /// Connections currently held by the pool (all keys), for metrics and tests.
    pub fn pooled_connections(&self) -> usize {
        self.inner
            .lock()
            .keys
            .values()
            .map(|entry| entry.conns.len())
            .sum()
    }

    async fn checkout(&self, key: &WorkloadKey) -> Result<Checkout, HboneError> {
        let max_streams = self.inner.max_streams;
        let (dial, attempts_seen) = {
            let mut state = self.inner.lock();
            if let Some(entry) = state.keys.get_mut(key)
                && let Some(found) = entry.try_checkout(max_streams)
            {
                return Ok(found);
            }
            let entry = state.keys.entry(key.clone()).or_insert_with(KeyEntry::new);
            (entry.dial.clone(), entry.dial_attempts)
        };

        let _dialing = dial.lock().await;
        {
            let mut state = self.inner.lock();
            if let Some(entry) = state.keys.get_mut(key) {
                if let Some(found) = entry.try_checkout(max_streams) {
                    return Ok(found);
                }
                if entry.dial_attempts != attempts_seen
                    && let Some(error) = &entry.last_dial_error
                {
                    // The dial we queued behind failed: share its error.
                    let error = HboneError::Dial {
                        dst: key.dst,
                        source: error.clone(),
                    };
                    state.forget_if_unused(key);
                    return Err(error);
                }
            }
        }

        tracing::debug!(dst = %key.dst, "dialing new HBONE connection");
        let result = self.inner.connector.connect(key).await;

        let mut state = self.inner.lock();
        let state = &mut *state;
        let entry = state
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyEntry::with_dial(dial.clone()));
        entry.dial_attempts += 1;
        match result {
            Ok(client) => {
                entry.last_dial_error = None;
                let limit = max_streams.min(client.max_streams());
                // The dialer always gets a slot; h2 queues the stream if the peer allows
                // none right now.
                let (slot, in_use) = match client.try_reserve(limit) {
                    Some(reserved) => reserved,
                    None => client
                        .try_reserve(usize::MAX)
                        .ok_or(HboneError::ConnectionClosed)?,
                };
                if in_use < limit {
                    entry.conns.push(PooledConnection {
                        client: client.clone(),
                        last_checkout: Instant::now(),
                    });
                    if !state.reaper_running {
                        state.reaper_running = true;
                        tokio::spawn(reap_idle(Arc::downgrade(&self.inner)));
                    }
                }
                Ok((client, slot))
            }
            Err(error) => {
                tracing::debug!(dst = %key.dst, %error, "HBONE dial failed");
                let error = Arc::new(error);
                entry.last_dial_error = Some(error.clone());
                state.forget_if_unused(key);
                Err(HboneError::Dial {
                    dst: key.dst,
                    source: error,
                })
            }
        }
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent even if a holder panicked: every section is a few
        // plain field updates.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyEntry {
    fn new() -> KeyEntry {
        KeyEntry::with_dial(Arc::new(tokio::sync::Mutex::new(())))
    }

    fn with_dial(dial: Arc<tokio::sync::Mutex<()>>) -> KeyEntry {
        KeyEntry {
            conns: Vec::new(),
            dial,
            dial_attempts: 0,
            last_dial_error: None,
        }
    }

    /// Takes a stream slot on a ready connection with free capacity, newest first. Drops
    /// connections that are not ready or full; removes the one it picks if that fills it.
    fn try_checkout(&mut self, max_streams: usize) -> Option<Checkout> {
        while let Some(conn) = self.conns.last_mut() {
            if !conn.client.poll_ready_now() {
                tracing::debug!("dropping pooled HBONE connection that is no longer ready");
                self.conns.pop();
                continue;
            }
            let limit = max_streams.min(conn.client.max_streams());
            let Some((slot, in_use)) = conn.client.try_reserve(limit) else {
                // Full (the peer lowered its limit): it leaves the pool.
                self.conns.pop();
                continue;
            };
            if in_use >= limit {
                return self.conns.pop().map(|conn| (conn.client, slot));
            }
            conn.last_checkout = Instant::now();
            return Some((conn.client.clone(), slot));
        }
        None
    }
}

impl PoolState {
    /// Forgets `key` if it has no connections and nobody but the caller holds its dial
    /// mutex (the caller's clone and the map's own make two).
    fn forget_if_unused(&mut self, key: &WorkloadKey) {
        if let Some(entry) = self.keys.get(key)
            && entry.conns.is_empty()
            && Arc::strong_count(&entry.dial) <= 2
        {
            self.keys.remove(key);
        }
    }

    /// Drops connections idle since before `now - idle_timeout` and keys left with nothing.
    /// Returns when the next connection becomes idle, or `None` if the pool is empty.
    fn evict_idle(&mut self, now: Instant, idle_timeout: Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        self.keys.retain(|key, entry| {
            entry.conns.retain_mut(|conn| {
                let expires = conn.last_checkout + idle_timeout;
                if expires <= now {
                    tracing::debug!(dst = %key.dst, "evicting idle HBONE connection");
                    return false;
                }
                if !conn.client.poll_ready_now() {
                    return false;
                }
                next = Some(next.map_or(expires, |n| n.min(expires)));
                true
            });
            // Keep keys with connections, or with a dial in progress or queued.
            !entry.conns.is_empty() || Arc::strong_count(&entry.dial) > 1
        });
        next
    }
}

/// Evicts idle connections until the pool is empty or dropped.
async fn reap_idle(pool: Weak<PoolInner>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.idle_timeout) else {
        return;
    };
    // Nothing in the pool was checked out before now, so nothing expires sooner.
    let mut wake = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let mut state = inner.lock();
        match state.evict_idle(Instant::now(), idle_timeout) {
            Some(next) => wake = next,
            None => {
                state.reaper_running = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
