//! `LOCAL_XDS_PATH`: Istio ztunnel's local YAML config (workloads, services, policies).
//!
//! The schema is Istio ztunnel's `LocalConfig` (reference §16.2), so a file written for
//! Istio's ztunnel works here: top-level `workloads`, `services` and `policies`, camelCase
//! keys, unknown keys rejected. The serde shapes live in `schema` and never leave this
//! module; they are converted fallibly into the `state` types, and every conversion error
//! names the resource and the field.
//!
//! Start-up loads the file once with [`load_file`] (a bad file fails start-up); [`watch`]
//! then polls the file and republishes it whenever it changes, keeping the last good state
//! when a new version is invalid or the file disappears.
//!
//! Workloads without a `uid` get `<clusterId>//v1/Pod/<namespace>/<name>` (cluster id
//! defaults to `Kubernetes`), the shape Istio's local config uses for pods.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch as signal;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::{ProxyState, StateStore};

mod schema;
#[cfg(test)]
mod tests;

/// Files larger than this are refused rather than parsed (a runaway generator should not
/// take the proxy down with it).
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The shortest poll interval [`watch`] uses, whatever it is given.
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// Why a local config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read (missing, permissions, ...).
    #[error("reading local config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("local config {path} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The content of a file is invalid.
    #[error("local config {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: Box<LocalConfigError>,
    },
    /// The document is empty (or only comments). Refused so that a file caught half
    /// written never wipes the state.
    #[error("the document is empty")]
    Empty,
    /// Not YAML, or not the schema (unknown or misspelled keys, wrong types).
    #[error("{0}")]
    Syntax(#[source] serde_yaml::Error),
    /// A resource has a bad field value.
    #[error("{resource}: field `{field}`: {reason}")]
    Invalid {
        /// The resource, e.g. `workload default/local` or `workloads[2]`.
        resource: String,
        /// The field path inside the resource, e.g. `workloadIps[0]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Two resources have the same key.
    #[error("{kind} {key} is defined more than once")]
    Duplicate {
        /// `workload`, `service` or `policy`.
        kind: &'static str,
        /// The uid, `namespace/hostname` or `namespace/name`.
        key: String,
    },
}

/// Parses a local config document and builds the state it describes.
pub fn parse(yaml: &str) -> Result<ProxyState, LocalConfigError> {
    let config = schema::LocalConfig::from_yaml(yaml)?;
    let resources = config.into_state()?;
    Ok(ProxyState::build(
        resources.workloads,
        resources.services,
        resources.policies,
    ))
}

/// Reads and parses the local config at `path`. Every error names the path.
pub fn load_file(path: &Path) -> Result<ProxyState, LocalConfigError> {
    let size = std::fs::metadata(path)
        .map_err(|source| read_error(path, source))?
        .len();
    check_size(path, size)?;
    let text = std::fs::read_to_string(path).map_err(|source| read_error(path, source))?;
    parse_file(path, &text)
}

/// Counters of the local config watcher.
#[derive(Debug)]
pub struct LocalConfigMetrics {
    /// New file versions published to the store.
    pub applied: AtomicU64,
    /// File versions refused (invalid, unreadable or missing); the last good state stayed.
    pub rejected: AtomicU64,
    outcomes: signal::Sender<u64>,
}

impl Default for LocalConfigMetrics {
    fn default() -> Self {
        LocalConfigMetrics {
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            outcomes: signal::channel(0).0,
        }
    }
}

impl LocalConfigMetrics {
    /// A receiver that changes after every applied or rejected file version.
    pub fn subscribe(&self) -> signal::Receiver<u64> {
        self.outcomes.subscribe()
    }

    fn record(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.outcomes.send_modify(|n| *n += 1);
    }
}

/// Polls `path` every `poll` (at least [`MIN_POLL`]) until `shutdown`, reloading it when
/// its metadata (mtime, ctime, size, inode) changes.
///
/// A valid new version is published to `store` (and logged as `local config applied` with
/// the store `version`); content identical to what the store already holds is not
/// republished. An invalid or missing file is logged as a warning, counted in
/// `metrics.rejected`, and the last good state keeps serving. The file is also checked
/// once when the task starts, which catches a change made after the caller's initial load.
pub async fn watch(
    path: PathBuf,
    store: Arc<StateStore>,
    poll: Duration,
    shutdown: CancellationToken,
    metrics: Arc<LocalConfigMetrics>,
) {
    let poll = poll.max(MIN_POLL);
    let mut seen = Stamp::of(&path).await;
    reload(&path, &store, &metrics).await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                debug!(path = %path.display(), "local config watcher stopped");
                return;
            }
            () = tokio::time::sleep(poll) => {}
        }
        let now = Stamp::of(&path).await;
        if now != seen {
            seen = now;
            reload(&path, &store, &metrics).await;
        }
    }
}

/// What the watcher compares between polls.
#[derive(Debug, PartialEq, Eq)]
enum Stamp {
    Present {
        modified: Option<SystemTime>,
        changed: (i64, i64),
        size: u64,
        inode: u64,
    },
    Missing(io::ErrorKind),
}

impl Stamp {
    async fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        match tokio::fs::metadata(path).await {
            Ok(meta) => Stamp::Present {
                modified: meta.modified().ok(),
                changed: (meta.ctime(), meta.ctime_nsec()),
                size: meta.len(),
                inode: meta.ino(),
            },
            Err(e) => Stamp::Missing(e.kind()),
        }
    }
}

async fn reload(path: &Path, store: &StateStore, metrics: &LocalConfigMetrics) {
    match load_file_async(path).await {
        Ok(state) => {
            if same_content(&state, &store.snapshot()) {
                debug!(path = %path.display(), "local config unchanged");
                return;
            }
            let (workloads, services, policies) = (
                state.workloads.len(),
                state.services.len(),
                state.policies.len(),
            );
            store.publish(state);
            metrics.record(&metrics.applied);
            info!(
                version = store.version(),
                path = %path.display(),
                workloads,
                services,
                policies,
                "local config applied"
            );
        }
        Err(error) => {
            metrics.record(&metrics.rejected);
            warn!(%error, path = %path.display(),
                "local config rejected; keeping the last good state");
        }
    }
}

async fn load_file_async(path: &Path) -> Result<ProxyState, LocalConfigError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|source| read_error(path, source))?
        .len();
    check_size(path, size)?;
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| read_error(path, source))?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<ProxyState, LocalConfigError> {
    parse(text).map_err(|source| LocalConfigError::File {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

fn check_size(path: &Path, size: u64) -> Result<(), LocalConfigError> {
    if size > MAX_FILE_BYTES {
        return Err(LocalConfigError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_FILE_BYTES,
        });
    }
    Ok(())
}

fn read_error(path: &Path, source: io::Error) -> LocalConfigError {
    LocalConfigError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether two snapshots describe the same resources (indexes follow from those).
fn same_content(a: &ProxyState, b: &ProxyState) -> bool {
    a.workloads == b.workloads && a.services == b.services && a.policies == b.policies
}
