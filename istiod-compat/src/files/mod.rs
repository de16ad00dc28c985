//! The local-files registry (the embedded default): a directory of Kubernetes YAML files
//! read into a [`Snapshot`], and re-read whenever it changes.
//!
//! - Files: the regular files directly in the directory (symlinks followed, so a mounted
//!   ConfigMap works) named `*.yaml`, `*.yml` or `*.json`; names starting with `.` are
//!   skipped. Files are applied in name order; a later object with the same kind, namespace
//!   and name wins (with a warning).
//! - Contents: multi-document YAML; each document is a Namespace, Node, Pod, Service
//!   (`v1`), EndpointSlice (`discovery.k8s.io/v1`), AuthorizationPolicy or PeerAuthentication
//!   (`security.istio.io/v1` or `v1beta1`), or a `v1` `List` of them. Other kinds are logged
//!   and skipped; empty or comment-only documents are ignored. Namespaced objects without a
//!   namespace go to `default`.
//! - Pods may leave out their status except `status.podIP` (or `podIPs`): phase defaults to
//!   Running and a running pod without a Ready condition is Ready ([`parse::pod_defaults`]).
//! - Errors: [`load_dir`] (start-up) fails on the first unreadable or invalid file. [`run`]
//!   logs such a file with its path and the error, counts it ([`FilesStats`]) and keeps that
//!   file's last good contents, so the rest of the directory still applies.

mod parse;
mod watch;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

use crate::model::Snapshot;

pub use parse::{Object, Parsed, build_snapshot, parse_documents, pod_defaults};
pub use watch::DirState;

/// Errors reading the directory or one of its files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The directory could not be listed.
    #[error("reading directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{path}: document {document}: invalid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (from 0).
        document: usize,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document of a supported kind does not deserialize.
    #[error("{path}: document {document}: invalid {kind}: {source}")]
    Object {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (from 0).
        document: usize,
        /// Its kind.
        kind: String,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is structurally wrong (no kind, no name, not a mapping...).
    #[error("{path}: document {document}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (from 0).
        document: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Counters of a running registry (for logs and metrics).
#[derive(Debug, Default)]
pub struct FilesStats {
    parse_errors: AtomicU64,
    reloads: AtomicU64,
    files: AtomicU64,
}

impl FilesStats {
    /// Files (or directory listings) that failed to read or parse, counted once per change.
    pub fn parse_errors(&self) -> u64 {
        self.parse_errors.load(Ordering::Relaxed)
    }

    /// Snapshots published.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Files currently tracked.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub(crate) fn add_parse_error(&self) {
        self.parse_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the directory once (start-up): every file must read and parse.
pub fn load_dir(dir: &Path) -> Result<Snapshot, FilesError> {
    let mut objects = Vec::new();
    for path in watch::list(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| FilesError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let parsed = parse_documents(&path, &text)?;
        for w in &parsed.warnings {
            tracing::warn!(target: "files", "{w}");
        }
        objects.extend(parsed.objects);
    }
    let (snapshot, warnings) = build_snapshot(objects);
    for w in &warnings {
        tracing::warn!(target: "files", dir = %dir.display(), "{w}");
    }
    Ok(snapshot)
}

/// A local-files registry with its counters.
#[derive(Debug, Clone)]
pub struct FilesRegistry {
    dir: PathBuf,
    stats: Arc<FilesStats>,
}

impl FilesRegistry {
    /// A registry over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FilesRegistry {
            dir: dir.into(),
            stats: Arc::default(),
        }
    }

    /// Its counters (shared with the running task).
    pub fn stats(&self) -> Arc<FilesStats> {
        self.stats.clone()
    }

    /// Publishes the directory's snapshot once (at the first successful scan), then again
    /// after every change, checking every `poll`, until `shutdown`. A directory that cannot
    /// be listed is logged and counted once per distinct error, and nothing is published
    /// (a remounted ConfigMap briefly disappears; receivers keep their last snapshot).
    pub async fn run(
        self,
        tx: tokio_watch::Sender<Arc<Snapshot>>,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        let mut state = DirState::default();
        let mut first = true;
        loop {
            let mut current = std::mem::take(&mut state);
            let dir = self.dir.clone();
            let stats = self.stats.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                let changed = current.scan(&dir, &stats);
                (current, changed)
            })
            .await;
            let (current, changed) = match scanned {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(target: "files", error = %e, "directory scan task failed");
                    return;
                }
            };
            // The first successful scan always publishes; a directory that cannot be listed
            // never replaces what receivers have (e.g. what `load_dir` read at start-up).
            if changed == Some(true) || (changed.is_some() && first) {
                let (snapshot, warnings) = current.snapshot();
                for w in &warnings {
                    tracing::warn!(target: "files", dir = %self.dir.display(), "{w}");
                }
                tx.send_replace(Arc::new(snapshot));
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .files
                    .store(current.file_count() as u64, Ordering::Relaxed);
                tracing::info!(
                    target: "files",
                    dir = %self.dir.display(),
                    files = current.file_count(),
                    "published snapshot"
                );
                first = false;
            }
            state = current;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Runs a [`FilesRegistry`] over `dir` (see [`FilesRegistry::run`]).
pub async fn run(
    dir: impl Into<PathBuf>,
    tx: tokio_watch::Sender<Arc<Snapshot>>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    FilesRegistry::new(dir).run(tx, poll, shutdown).await;
}
