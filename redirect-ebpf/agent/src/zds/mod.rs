//! The ZDS server (reference §3.2): the agent listens on a SOCK_SEQPACKET socket, ztunnel
//! connects, says `ZdsHello{V1}`, gets the snapshot one message at a time (each acked within
//! [`ACK_TIMEOUT`]), `SnapshotSent`, and from then on a stream of Add / Del.
//!
//! [`ZdsHub`] holds the pods ztunnel must run proxies for and the live connections:
//! Adds go to the newest connection that finished its snapshot (and are queued to the ones
//! still receiving theirs), Dels go to every connection. Results come back to the agent as
//! [`ZdsEvent`]s.

pub mod packet;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use packet::{SeqpacketConn, SeqpacketListener};
pub use wire::{WorkloadInfo, decode_ack, decode_hello, decode_request, encode_ack};

/// Deadline for each ack (and for the hello).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many accepts per second (as istio-cni).
pub const ACCEPTS_PER_SECOND: u32 = 5;

/// A pod as ztunnel sees it.
#[derive(Debug, Clone)]
pub struct ZdsPod {
    /// Pod uid.
    pub uid: String,
    /// Name, namespace, service account.
    pub info: WorkloadInfo,
    /// The pod's netns; `None` sends `KeepWorkload` in snapshots (the agent lost the fd).
    pub netns: Option<Arc<OwnedFd>>,
}

/// A connection id (increasing: a larger id is a newer connection).
pub type ConnId = u64;

/// What the hub tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZdsEvent {
    /// A connection finished its snapshot; `acked` are the uids ztunnel accepted.
    Ready {
        /// The connection.
        conn: ConnId,
        /// ztunnel's pid (SO_PEERCRED).
        pid: i32,
        /// Uids acked in the snapshot.
        acked: Vec<String>,
    },
    /// The answer to an [`ZdsHub::add`] sent on `conn`: `Ok(pid)` or why not.
    AddResult {
        /// The pod.
        uid: String,
        /// The connection it went to.
        conn: ConnId,
        /// ztunnel's pid when acked; the nack text or failure otherwise.
        result: Result<i32, String>,
    },
    /// A connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

/// Where [`ZdsEvent`]s go.
pub type EventSink = Arc<dyn Fn(ZdsEvent) + Send + Sync>;

/// What [`ZdsHub::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddDispatch {
    /// Sent to this connection; an [`ZdsEvent::AddResult`] follows.
    Sent(ConnId),
    /// No ztunnel is connected: the pod is in the next snapshot.
    NoProxy,
}

/// Counters.
#[derive(Debug, Default)]
pub struct ZdsStats {
    acks: AtomicU64,
    nacks: AtomicU64,
    connections: AtomicU64,
}

impl ZdsStats {
    /// Acks received (snapshot or stream).
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }
    /// Nacks received (snapshot or stream).
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Cmd {
    Add { pod: ZdsPod },
    Del { uid: String },
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    pid: i32,
    ready: bool,
    tx: mpsc::UnboundedSender<Cmd>,
}

#[derive(Debug, Default)]
struct HubState {
    pods: BTreeMap<String, ZdsPod>,
    conns: Vec<Conn>,
    next_id: ConnId,
}

/// The pods and the connections (cheap to clone).
#[derive(Clone)]
pub struct ZdsHub {
    state: Arc<Mutex<HubState>>,
    events: EventSink,
    stats: Arc<ZdsStats>,
}

impl std::fmt::Debug for ZdsHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdsHub").finish_non_exhaustive()
    }
}

impl ZdsHub {
    /// A hub reporting to `events`.
    pub fn new(events: EventSink) -> Self {
        ZdsHub {
            state: Arc::default(),
            events,
            stats: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock leaves consistent data (every update is one
        // statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters.
    pub fn stats(&self) -> Arc<ZdsStats> {
        self.stats.clone()
    }

    /// Records `pod` (it is in every later snapshot) and sends it to the newest ready
    /// connection; connections still in their snapshot get it afterwards. Every connection
    /// it is sent to reports an [`ZdsEvent::AddResult`].
    pub fn add(&self, pod: ZdsPod) -> AddDispatch {
        let mut st = self.lock();
        st.pods.insert(pod.uid.clone(), pod.clone());
        let newest = st.conns.iter().rev().find(|c| c.ready).map(|c| c.id);
        for c in &st.conns {
            if !c.ready || Some(c.id) == newest {
                // A send error means the connection task is ending; it reports Closed.
                let _ = c.tx.send(Cmd::Add { pod: pod.clone() });
            }
        }
        newest.map_or(AddDispatch::NoProxy, AddDispatch::Sent)
    }

    /// Forgets `uid` and sends `DelWorkload` to every connection.
    pub fn del(&self, uid: &str) {
        let mut st = self.lock();
        st.pods.remove(uid);
        for c in &st.conns {
            let _ = c.tx.send(Cmd::Del {
                uid: uid.to_string(),
            });
        }
    }

    /// Whether `uid` is in the snapshot set.
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().pods.contains_key(uid)
    }

    /// The newest connection that finished its snapshot: `(id, pid)`.
    pub fn newest(&self) -> Option<(ConnId, i32)> {
        self.lock()
            .conns
            .iter()
            .rev()
            .find(|c| c.ready)
            .map(|c| (c.id, c.pid))
    }

    /// Connections: `(id, pid, ready)`.
    pub fn connections(&self) -> Vec<(ConnId, i32, bool)> {
        self.lock()
            .conns
            .iter()
            .map(|c| (c.id, c.pid, c.ready))
            .collect()
    }

    fn register(&self, pid: i32) -> (ConnId, Vec<ZdsPod>, mpsc::UnboundedReceiver<Cmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.conns.push(Conn {
            id,
            pid,
            ready: false,
            tx,
        });
        (id, st.pods.values().cloned().collect(), rx)
    }

    fn set_ready(&self, id: ConnId) {
        if let Some(c) = self.lock().conns.iter_mut().find(|c| c.id == id) {
            c.ready = true;
        }
    }

    fn unregister(&self, id: ConnId) {
        self.lock().conns.retain(|c| c.id != id);
    }

    /// Serves ztunnel connections on `listener` until `shutdown`.
    pub async fn serve(self, listener: SeqpacketListener, shutdown: CancellationToken) {
        let min_gap = Duration::from_secs(1) / ACCEPTS_PER_SECOND;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            if let Some(last) = last {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(last + min_gap) => {}
                }
            }
            let conn = tokio::select! {
                () = shutdown.cancelled() => return,
                c = listener.accept() => c,
            };
            last = Some(tokio::time::Instant::now());
            match conn {
                Ok(conn) => {
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let hub = self.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move { hub.handle(conn, shutdown).await });
                }
                Err(e) => tracing::warn!(error = %e, "zds: accept failed"),
            }
        }
    }

    async fn handle(self, conn: SeqpacketConn, shutdown: CancellationToken) {
        let pid = match conn.peer_pid() {
            Ok(pid) => pid,
            Err(e) => {
                tracing::warn!(error = %e, "zds: SO_PEERCRED failed; dropping connection");
                return;
            }
        };
        match tokio::time::timeout(ACK_TIMEOUT, conn.recv()).await {
            Ok(Ok(Some(d))) => match wire::decode_hello(&d.data) {
                Ok(()) if d.fds == 0 => {}
                Ok(()) => {
                    tracing::warn!(pid, "zds: hello carried fds; dropping connection");
                    return;
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "zds: bad hello; dropping connection");
                    return;
                }
            },
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(pid, error = %e, "zds: reading hello");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    pid,
                    "zds: no hello within {ACK_TIMEOUT:?}; dropping connection"
                );
                return;
            }
        }
        let (id, snapshot, mut rx) = self.register(pid);
        tracing::info!(
            conn = id,
            pid,
            pods = snapshot.len(),
            "zds: ztunnel connected; sending snapshot"
        );
        let result = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            r = self.run_conn(id, pid, &conn, snapshot, &mut rx) => r,
        };
        self.unregister(id);
        match result {
            Ok(()) => tracing::info!(conn = id, pid, "zds: connection closed"),
            Err(e) => tracing::warn!(conn = id, pid, error = %e, "zds: connection dropped"),
        }
        // Adds that will never be answered: the agent retries them.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Add { pod } = cmd {
                (self.events)(ZdsEvent::AddResult {
                    uid: pod.uid,
                    conn: id,
                    result: Err("ztunnel connection closed".into()),
                });
            }
        }
        (self.events)(ZdsEvent::Closed { conn: id });
    }

    async fn run_conn(
        &self,
        id: ConnId,
        pid: i32,
        conn: &SeqpacketConn,
        snapshot: Vec<ZdsPod>,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(), String> {
        let mut acked = Vec::new();
        for pod in snapshot {
            let res = match &pod.netns {
                Some(fd) => self.request(conn, &wire::add(&pod), Some(fd)).await,
                None => self.request(conn, &wire::keep(&pod.uid), None).await,
            };
            match res? {
                Ok(()) => acked.push(pod.uid),
                Err(nack) => tracing::warn!(
                    conn = id,
                    uid = pod.uid,
                    error = nack,
                    "zds: snapshot entry nacked"
                ),
            }
        }
        if let Err(nack) = self.request(conn, &wire::snapshot_sent(), None).await? {
            return Err(format!("SnapshotSent nacked: {nack}"));
        }
        self.set_ready(id);
        tracing::info!(conn = id, pid, acked = acked.len(), "zds: snapshot done");
        (self.events)(ZdsEvent::Ready {
            conn: id,
            pid,
            acked,
        });
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                // ztunnel never speaks unsolicited: readable means closed or misbehaving.
                d = conn.recv() => return match d {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("unsolicited message from ztunnel".into()),
                    Err(e) => Err(format!("reading: {e}")),
                },
            };
            let Some(cmd) = cmd else { return Ok(()) };
            match cmd {
                Cmd::Add { pod } => {
                    let Some(fd) = &pod.netns else {
                        tracing::warn!(uid = pod.uid, "zds: Add without netns skipped");
                        continue;
                    };
                    let res = self.request(conn, &wire::add(&pod), Some(fd)).await;
                    let outcome = match &res {
                        Ok(Ok(())) => Ok(pid),
                        Ok(Err(nack)) => Err(format!("nack: {nack}")),
                        Err(e) => Err(e.clone()),
                    };
                    if let Err(e) = &outcome {
                        tracing::warn!(conn = id, uid = pod.uid, error = e, "zds: add failed");
                    }
                    (self.events)(ZdsEvent::AddResult {
                        uid: pod.uid,
                        conn: id,
                        result: outcome,
                    });
                    // A nack keeps the connection; a broken connection ends it.
                    res?.ok();
                }
                Cmd::Del { uid } => match self.request(conn, &wire::del(&uid), None).await? {
                    Ok(()) => tracing::debug!(conn = id, uid, "zds: del acked"),
                    Err(nack) => tracing::warn!(conn = id, uid, error = nack, "zds: del nacked"),
                },
            }
        }
    }

    /// Sends one request and waits for its ack: `Ok(Ok(()))` ack, `Ok(Err(text))` nack,
    /// `Err` when the connection is unusable.
    async fn request(
        &self,
        conn: &SeqpacketConn,
        msg: &[u8],
        fd: Option<&Arc<OwnedFd>>,
    ) -> Result<Result<(), String>, String> {
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        tokio::time::timeout(ACK_TIMEOUT, conn.send(msg, &fds))
            .await
            .map_err(|_| format!("send not done within {ACK_TIMEOUT:?}"))?
            .map_err(|e| format!("sending: {e}"))?;
        let reply = tokio::time::timeout(ACK_TIMEOUT, conn.recv())
            .await
            .map_err(|_| format!("no ack within {ACK_TIMEOUT:?}"))?
            .map_err(|e| format!("reading ack: {e}"))?
            .ok_or_else(|| "connection closed while waiting for an ack".to_string())?;
        if reply.fds != 0 {
            return Err("ack carried file descriptors".into());
        }
        let ack = wire::decode_ack(&reply.data)?;
        if ack.is_ok() {
            self.stats.acks.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(nack) = &ack {
            self.stats.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = nack, "zds: nack");
        }
        Ok(ack)
    }
}

/// Binds the ZDS socket at `path` (stale socket removed).
pub fn bind(path: &Path) -> std::io::Result<SeqpacketListener> {
    SeqpacketListener::bind(path)
}
