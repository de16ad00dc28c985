//! Readiness (`:15021/healthz/ready`, reference §15.4): ready once every registered start-up
//! task (initial configuration, listeners, ...) has finished.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use tokio::sync::watch;

use crate::http_server::{self, Response};

/// The set of start-up tasks still pending. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Bumped on every change, so tasks can wait for another task to finish.
    changed: Arc<watch::Sender<()>>,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            pending: Arc::default(),
            changed: Arc::new(watch::Sender::new(())),
        }
    }
}

/// A pending task; ready when dropped.
#[derive(Debug)]
#[must_use = "the task is ready as soon as the guard is dropped"]
pub struct BlockReady {
    readiness: Readiness,
    name: String,
}

impl Readiness {
    /// A fresh tracker with nothing pending (ready).
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Registers a pending task named `name` until the returned guard is dropped.
    pub fn register(&self, name: &str) -> BlockReady {
        if let Ok(mut p) = self.pending.lock() {
            *p.entry(name.to_string()).or_default() += 1;
        }
        self.changed.send_replace(());
        BlockReady {
            readiness: self.clone(),
            name: name.to_string(),
        }
    }

    /// The names of the pending tasks, sorted.
    pub fn pending(&self) -> Vec<String> {
        match self.pending.lock() {
            Ok(p) => p.keys().cloned().collect(),
            Err(_) => vec!["readiness state poisoned".to_string()],
        }
    }

    /// Whether nothing is pending.
    pub fn is_ready(&self) -> bool {
        self.pending().is_empty()
    }

    /// Completes once no task named `name` is pending (at once if none is).
    pub async fn wait_done(&self, name: &str) {
        let mut changes = self.changed.subscribe();
        loop {
            let pending = match self.pending.lock() {
                Ok(p) => p.contains_key(name),
                Err(_) => false,
            };
            if !pending {
                return;
            }
            // The sender lives in `self`: it cannot close while we wait.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        if let Ok(mut p) = self.readiness.pending.lock()
            && let Some(n) = p.get_mut(&self.name)
        {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.name);
            }
        }
        self.readiness.changed.send_replace(());
    }
}

/// The readiness port's HTTP routes.
pub struct ReadinessService(pub Readiness);

impl http_server::Service for ReadinessService {
    fn handle(&self, req: &http::request::Parts) -> Response {
        if req.uri.path() != "/healthz/ready" {
            return http_server::not_found();
        }
        if req.method != Method::GET {
            return http_server::method_not_allowed();
        }
        let pending = self.0.pending();
        if pending.is_empty() {
            http_server::text(StatusCode::OK, "ready\n")
        } else {
            http_server::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not ready, pending: {}\n", pending.join(", ")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_guard_dropped() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let a = r.register("proxy");
        let b = r.register("state manager");
        let b2 = r.register("state manager");
        assert_eq!(r.pending(), ["proxy", "state manager"]);
        drop(b);
        assert_eq!(r.pending(), ["proxy", "state manager"]);
        drop((a, b2));
        assert!(r.is_ready());
    }

    #[tokio::test]
    async fn wait_done_wakes_when_the_task_finishes() {
        let r = Readiness::new();
        r.wait_done("state manager").await;
        let block = r.register("state manager");
        let other = r.register("proxy");
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait_done("state manager").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(block);
        waiter.await.unwrap();
        drop(other);
    }
}
