//! [`CertManager`]: one certificate per identity, fetched once, refreshed in the background at
//! half of its lifetime, with exponential backoff on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use mesh_core::Identity;
use rand::Rng;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;

use super::x509::{self, LeafInfo};
use super::{CertificateSource, IdentityError, WorkloadCertificate};

/// At most this many fetches (CSRs) run at once across all identities.
const MAX_CONCURRENT_FETCHES: usize = 8;
/// First retry delay after a failed fetch.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Retry delays never exceed this.
const BACKOFF_MAX: Duration = Duration::from_secs(150);
/// Each delay is multiplied by a random factor in `1 ± BACKOFF_JITTER`.
const BACKOFF_JITTER: f64 = 0.2;

/// Caches one [`WorkloadCertificate`] per identity and keeps it fresh.
///
/// The first [`fetch_certificate`](Self::fetch_certificate) for an identity starts a
/// background task that owns the fetching: concurrent callers wait for its result instead of
/// issuing their own, and it renews the certificate at half its lifetime until
/// [`forget`](Self::forget) or drop.
pub struct CertManager {
    source: Arc<dyn CertificateSource>,
    clock: Clock,
    fetch_permits: Arc<Semaphore>,
    entries: Mutex<HashMap<Identity, Entry>>,
}

/// The manager's record of one identity.
struct Entry {
    state: watch::Receiver<CertState>,
    task: AbortHandle,
}

/// What callers see for one identity.
#[derive(Clone)]
pub(crate) enum CertState {
    /// The first fetch is in flight.
    Initializing,
    /// A certificate is held (a refresh may be failing in the background).
    Available(Arc<WorkloadCertificate>),
    /// No valid certificate; the last fetch error. Retries continue with backoff.
    Unavailable(Arc<IdentityError>),
}

/// Where "now" comes from. Tests anchor the wall clock to tokio's (pausable) clock so that
/// certificate validity moves with `tokio::time`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Clock {
    /// `SystemTime::now()`.
    System,
    /// Wall time at `base`, advanced by tokio time elapsed since `mono`.
    #[cfg(test)]
    Tokio {
        base: SystemTime,
        mono: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio time (paused in tests), starting at the current wall time.
    #[cfg(test)]
    pub(crate) fn tokio() -> Self {
        Clock::Tokio {
            base: SystemTime::now(),
            mono: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            #[cfg(test)]
            Clock::Tokio { base, mono } => *base + mono.elapsed(),
        }
    }
}

/// One identity's certificates, as served in the admin `config_dump`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDump {
    /// The SPIFFE identity.
    pub identity: Identity,
    /// `Initializing`, `Available` or `Unavailable: <last error>`.
    pub state: String,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<CertDump>,
    /// Trust roots.
    pub root_certs: Vec<CertDump>,
}

/// One certificate in a [`CertificateDump`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDump {
    /// PEM encoding.
    pub pem: String,
    /// Serial number, lowercase hex.
    pub serial_number: String,
    /// Start of validity, RFC 3339.
    pub valid_from: String,
    /// End of validity, RFC 3339.
    pub expiration_time: String,
}

impl CertDump {
    fn new(der: &CertificateDer<'_>) -> Self {
        let pem = x509::pem_certificate(der);
        match LeafInfo::parse(der) {
            Ok(info) => CertDump {
                pem,
                serial_number: info.serial,
                valid_from: x509::rfc3339(info.not_before),
                expiration_time: x509::rfc3339(info.not_after),
            },
            // A dump must not fail because one certificate is odd; show what we have.
            Err(reason) => CertDump {
                pem,
                serial_number: format!("unparseable: {reason}"),
                valid_from: String::new(),
                expiration_time: String::new(),
            },
        }
    }
}

impl CertManager {
    /// A manager fetching from `source`.
    pub fn new(source: Arc<dyn CertificateSource>) -> Arc<CertManager> {
        Self::with_clock(source, Clock::System)
    }

    pub(crate) fn with_clock(source: Arc<dyn CertificateSource>, clock: Clock) -> Arc<CertManager> {
        Arc::new(CertManager {
            source,
            clock,
            fetch_permits: Arc::new(Semaphore::new(MAX_CONCURRENT_FETCHES)),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The current certificate for `id`, waiting for the first fetch if needed.
    ///
    /// Errors when no valid certificate is held (the last fetch error is the source); the
    /// background task keeps retrying, so a later call may succeed.
    pub async fn fetch_certificate(
        &self,
        id: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let mut state = self.subscribe(id)?;
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                CertState::Available(cert) => {
                    return if self.clock.now() < cert.not_after {
                        Ok(cert)
                    } else {
                        Err(IdentityError::Expired {
                            identity: id.clone(),
                            not_after: x509::rfc3339(cert.not_after),
                        })
                    };
                }
                CertState::Unavailable(source) => {
                    return Err(IdentityError::Unavailable {
                        identity: id.clone(),
                        source,
                    });
                }
                CertState::Initializing => {}
            }
            // The sender lives in the refresh task: gone means forgotten.
            if state.changed().await.is_err() {
                return Err(IdentityError::Forgotten(id.clone()));
            }
        }
    }

    /// Stops refreshing `id` and drops its certificate. Callers still waiting get
    /// [`IdentityError::Forgotten`].
    pub fn forget(&self, id: &Identity) {
        let removed = self.lock().remove(id);
        if let Some(entry) = removed {
            entry.task.abort();
            tracing::debug!(identity = %id, "certificate forgotten");
        }
    }

    /// A snapshot of every managed identity, sorted by identity.
    pub fn dump(&self) -> Vec<CertificateDump> {
        let mut states: Vec<(Identity, CertState)> = self
            .lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.state.borrow().clone()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
            .into_iter()
            .map(|(identity, state)| match state {
                CertState::Initializing => CertificateDump {
                    identity,
                    state: "Initializing".into(),
                    cert_chain: Vec::new(),
                    root_certs: Vec::new(),
                },
                CertState::Unavailable(err) => CertificateDump {
                    identity,
                    state: format!("Unavailable: {err}"),
                    cert_chain: Vec::new(),
                    root_certs: Vec::new(),
                },
                CertState::Available(cert) => CertificateDump {
                    identity,
                    state: "Available".into(),
                    cert_chain: cert.chain.iter().map(CertDump::new).collect(),
                    root_certs: cert.roots.iter().map(CertDump::new).collect(),
                },
            })
            .collect()
    }

    /// The state channel of `id`, starting its refresh task on first use.
    pub(crate) fn subscribe(
        &self,
        id: &Identity,
    ) -> Result<watch::Receiver<CertState>, IdentityError> {
        let mut entries = self.lock();
        match entries.get(id) {
            Some(entry) if !entry.task.is_finished() => return Ok(entry.state.clone()),
            // The refresh loop never returns, so a finished task panicked (a buggy source):
            // start a new one rather than leaving the identity dead.
            Some(_) => tracing::warn!(identity = %id, "certificate refresh task died; restarting"),
            None => {}
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| IdentityError::NoRuntime {
                identity: id.clone(),
                reason: e.to_string(),
            })?;
        let (tx, rx) = watch::channel(CertState::Initializing);
        let refresher = Refresher {
            source: self.source.clone(),
            clock: self.clock,
            permits: self.fetch_permits.clone(),
            id: id.clone(),
            state: tx,
        };
        let task = runtime.spawn(refresher.run()).abort_handle();
        entries.insert(
            id.clone(),
            Entry {
                state: rx.clone(),
                task,
            },
        );
        Ok(rx)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries.values() {
            entry.task.abort();
        }
    }
}

/// The background task of one identity.
struct Refresher {
    source: Arc<dyn CertificateSource>,
    clock: Clock,
    permits: Arc<Semaphore>,
    id: Identity,
    state: watch::Sender<CertState>,
}

impl Refresher {
    async fn run(self) {
        let mut backoff = Backoff::default();
        // Set after a certificate that is not yet valid (CA clock ahead of ours): the first
        // one is refreshed at once, repeated ones back off instead of spinning.
        let mut premature = false;
        loop {
            let result = self.fetch_once().await;
            let now = self.clock.now();
            let delay = match result {
                Ok(cert) if now < cert.not_before => {
                    tracing::warn!(
                        identity = %self.id,
                        not_before = %x509::rfc3339(cert.not_before),
                        "certificate not yet valid (clock skew?); refreshing early"
                    );
                    self.state
                        .send_replace(CertState::Available(Arc::new(cert)));
                    if std::mem::replace(&mut premature, true) {
                        backoff.next_delay()
                    } else {
                        Duration::ZERO
                    }
                }
                Ok(cert) => {
                    premature = false;
                    backoff.reset();
                    let refresh_at = refresh_time(&cert);
                    tracing::debug!(
                        identity = %self.id,
                        serial = %cert.serial,
                        refresh_at = %x509::rfc3339(refresh_at),
                        "certificate fetched"
                    );
                    self.state
                        .send_replace(CertState::Available(Arc::new(cert)));
                    refresh_at.duration_since(now).unwrap_or(Duration::ZERO)
                }
                Err(err) => self.on_failure(err, now, backoff.next_delay()),
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// One fetch, within the global concurrency limit. A certificate that is already expired
    /// counts as a failure.
    async fn fetch_once(&self) -> Result<WorkloadCertificate, IdentityError> {
        // The semaphore is never closed; if it were, fetching unthrottled is the right fallback.
        let _permit = self.permits.acquire().await.ok();
        let cert = self.source.fetch(&self.id).await?;
        if self.clock.now() >= cert.not_after {
            return Err(IdentityError::Expired {
                identity: self.id.clone(),
                not_after: x509::rfc3339(cert.not_after),
            });
        }
        Ok(cert)
    }

    /// Keeps a still-valid certificate (retrying no later than its expiry), otherwise
    /// publishes the error. Returns the delay before the next attempt.
    fn on_failure(&self, err: IdentityError, now: SystemTime, retry: Duration) -> Duration {
        let remaining = match &*self.state.borrow() {
            CertState::Available(cert) => cert.not_after.duration_since(now).ok(),
            _ => None,
        };
        match remaining {
            Some(remaining) if !remaining.is_zero() => {
                let delay = retry.min(remaining);
                tracing::warn!(
                    identity = %self.id,
                    error = %err,
                    retry_in = ?delay,
                    "certificate refresh failed; keeping the current certificate"
                );
                delay
            }
            _ => {
                tracing::warn!(
                    identity = %self.id,
                    error = %err,
                    retry_in = ?retry,
                    "certificate fetch failed; no valid certificate"
                );
                self.state
                    .send_replace(CertState::Unavailable(Arc::new(err)));
                retry
            }
        }
    }
}

/// When to renew: halfway through the validity period.
fn refresh_time(cert: &WorkloadCertificate) -> SystemTime {
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or(Duration::ZERO);
    cert.not_before + lifetime / 2
}

/// Exponential backoff: 500 ms, ×2 per failure, capped at 150 s, ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        let factor = rand::rng().random_range(1.0 - BACKOFF_JITTER..=1.0 + BACKOFF_JITTER);
        base.mul_f64(factor).min(BACKOFF_MAX)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
