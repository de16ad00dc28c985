//! Shared (in-pod) mode (reference §3.1-3.3, §17): the ZDS client, which connects to the node
//! agent's SOCK_SEQPACKET socket, says hello and then follows the agent's requests, and the
//! per-pod proxies it starts and drains.
//!
//! The client connects only once the state manager is ready (first xDS sync, or the local
//! config loaded), reconnects forever with a 10 ms → 15 s backoff, and holds the readiness
//! task [`READINESS_TASK`] until the snapshot of the current connection was received and no
//! pod is pending.

pub mod manager;
pub mod netns;
pub mod packet;
pub mod protocol;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::drain::DrainOutcome;
use crate::readiness::{BlockReady, Readiness};
use manager::{PodsView, ProxyManager};
use netns::InpodNetns;
use packet::{RecvError, ZdsSocket};
use protocol::{ClientProtocol, Step};

/// The readiness task held until the ZDS snapshot arrived and no pod is pending.
pub const READINESS_TASK: &str = "workload proxy manager";
/// The readiness task the client waits for before connecting (xDS / local config).
pub const STATE_TASK: &str = "state manager";
/// First reconnect delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How often pods whose proxy failed to start are retried.
pub const RETRY_PENDING: Duration = Duration::from_secs(5);

/// The running ZDS client.
pub struct InpodHandle {
    stop: CancellationToken,
    task: JoinHandle<DrainOutcome>,
    pods: PodsView,
}

impl InpodHandle {
    /// The pods served (for `/config_dump` and tests).
    pub fn pods(&self) -> PodsView {
        self.pods.clone()
    }

    /// Stops the client and drains every pod proxy gracefully within `deadline` (set when
    /// the client was started).
    pub async fn shutdown(self) -> DrainOutcome {
        self.stop.cancel();
        self.task.await.unwrap_or(DrainOutcome::Forced)
    }
}

/// Starts the ZDS client for the agent socket `uds`. Pods drain within `deadline` at
/// shutdown.
pub fn spawn(
    uds: PathBuf,
    manager: ProxyManager,
    readiness: Readiness,
    deadline: Duration,
) -> InpodHandle {
    let stop = CancellationToken::new();
    let pods = manager.view();
    let block = readiness.register(READINESS_TASK);
    let client = Client {
        uds,
        manager,
        readiness,
        block: Some(block),
    };
    let task = tokio::spawn(client.run(stop.clone(), deadline));
    InpodHandle { stop, task, pods }
}

struct Client {
    uds: PathBuf,
    manager: ProxyManager,
    readiness: Readiness,
    block: Option<BlockReady>,
}

impl Client {
    async fn run(mut self, stop: CancellationToken, deadline: Duration) -> DrainOutcome {
        tokio::select! {
            () = self.readiness.wait_done(STATE_TASK) => {}
            () = stop.cancelled() => return self.manager.shutdown(deadline).await,
        }
        info!(uds = %self.uds.display(), "ZDS client starting");
        let mut backoff = BACKOFF_INITIAL;
        while !stop.is_cancelled() {
            match ZdsSocket::connect(&self.uds) {
                Ok(sock) => {
                    backoff = BACKOFF_INITIAL;
                    info!(uds = %self.uds.display(), "connected to the node agent");
                    let result = self.serve(&sock, &stop).await;
                    self.set_ready(false);
                    match result {
                        Ok(()) => break,
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "ZDS connection ended; reconnecting")
                        }
                    }
                }
                Err(e) => debug!(error = %e, ?backoff, "node agent not reachable"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        info!("ZDS client stopped; draining pod proxies");
        self.manager.shutdown(deadline).await
    }

    fn set_ready(&mut self, ready: bool) {
        match (ready, self.block.is_some()) {
            (true, true) => {
                self.block = None;
                info!("ZDS snapshot applied, no pod pending: ready");
            }
            (false, false) => self.block = Some(self.readiness.register(READINESS_TASK)),
            _ => {}
        }
    }

    /// Serves one connection until it fails (`Err`) or `stop` (`Ok`).
    async fn serve(&mut self, sock: &ZdsSocket, stop: &CancellationToken) -> anyhow::Result<()> {
        sock.send(&protocol::hello())
            .await
            .context("sending ZdsHello")?;
        let mut proto = ClientProtocol::new();
        let mut retry =
            tokio::time::interval_at(tokio::time::Instant::now() + RETRY_PENDING, RETRY_PENDING);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let datagram = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = retry.tick() => {
                    if self.manager.pending() > 0 {
                        let left = self.manager.retry_pending();
                        self.set_ready(proto.snapshot_done() && left == 0);
                    }
                    continue;
                }
                d = sock.recv() => d,
            };
            let datagram = match datagram {
                Ok(d) => d,
                Err(e @ (RecvError::Truncated | RecvError::ControlTruncated)) => {
                    let error = e.to_string();
                    let _ = sock.send(&protocol::ack(&error)).await;
                    bail!("protocol error: {error}");
                }
                Err(e) => return Err(e.into()),
            };
            let (answer, fatal) = match proto.on_request(&datagram.bytes, datagram.fds) {
                Step::Add { uid, info, netns } => match InpodNetns::new(netns) {
                    Ok(netns) => match self.manager.add(&uid, info, netns) {
                        Ok(()) => (String::new(), None),
                        Err(e) => (format!("starting the proxy of pod {uid}: {e}"), None),
                    },
                    Err(e) => (format!("pod {uid}: bad netns fd: {e}"), None),
                },
                Step::Keep { uid } => {
                    debug!(uid, "keep");
                    (String::new(), None)
                }
                Step::DelBeforeSnapshot { uid } => {
                    self.manager.forget_pending(&uid);
                    (String::new(), None)
                }
                Step::Del { uid } => {
                    self.manager.del(&uid);
                    (String::new(), None)
                }
                Step::Reconcile { seen } => {
                    info!(pods = seen.len(), "ZDS snapshot received");
                    self.manager.reconcile(&seen);
                    (String::new(), None)
                }
                Step::Reject { error } => (error.clone(), Some(error)),
            };
            if !answer.is_empty() {
                warn!(error = %answer, "nack");
            }
            sock.send(&protocol::ack(&answer))
                .await
                .context("sending an ack")?;
            if let Some(error) = fatal {
                bail!("protocol error: {error}");
            }
            self.set_ready(proto.snapshot_done() && self.manager.pending() == 0);
        }
    }
}
