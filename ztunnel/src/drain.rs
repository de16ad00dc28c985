//! Graceful shutdown: stop accepting, let open connections finish until a deadline, then
//! close whatever is left.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every listener and connection task.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// Cancelled when listeners must stop accepting (and HBONE servers send GOAWAY).
    pub stop_accepting: CancellationToken,
    /// Cancelled when the deadline passed: remaining connections are closed.
    pub force_close: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished before the deadline.
    Completed,
    /// The deadline passed and the rest were closed.
    Forced,
}

impl Drain {
    /// A fresh drain handle.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Stops accepting, waits up to `deadline` for connections, then forces the rest closed.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.stop_accepting.cancel();
        self.tasks.close();
        let outcome = match tokio::time::timeout(deadline, self.tasks.wait()).await {
            Ok(()) => DrainOutcome::Completed,
            Err(_) => DrainOutcome::Forced,
        };
        self.force_close.cancel();
        // Forced tasks end at their next poll; give them a bounded moment to log.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn completes_when_tasks_finish() {
        let d = Drain::new();
        let stop = d.stop_accepting.clone();
        d.tasks.spawn(async move { stop.cancelled().await });
        assert_eq!(
            d.drain(Duration::from_secs(5)).await,
            DrainOutcome::Completed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forces_after_deadline() {
        let d = Drain::new();
        let force = d.force_close.clone();
        d.tasks.spawn(async move { force.cancelled().await });
        assert_eq!(d.drain(Duration::from_secs(5)).await, DrainOutcome::Forced);
        assert!(d.tasks.is_empty());
    }
}
