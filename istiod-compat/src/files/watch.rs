//! Change detection for the directory: per-file fingerprints (size, mtime, inode, device)
//! and the last good parse of every file.
//!
//! File timestamps are coarse (a kernel tick), so a same-size rewrite within one tick keeps
//! the fingerprint. As git does for its index ("racy" entries), a file modified within the
//! last [`RACY_WINDOW`] is re-read on every scan and compared by content hash until it has
//! been quiet for longer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{FilesError, FilesStats, Object, parse_documents};
use crate::model::Snapshot;

/// How recent a modification must be for the file to be re-read on every scan.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The files [`super::load_dir`] and [`DirState::scan`] read, in name order.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let read_dir = |source| FilesError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let wanted = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        if name.starts_with('.') || !wanted {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: ConfigMap volumes are symlinks into a hidden directory.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        Fingerprint {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
            device,
        }
    }

    fn racy(&self, now: SystemTime) -> bool {
        match self.modified {
            // A timestamp in the future counts as recent too.
            Some(m) => now.duration_since(m).map_or(true, |age| age < RACY_WINDOW),
            None => true,
        }
    }
}

#[derive(Debug, Clone)]
struct FileState {
    fingerprint: Fingerprint,
    content: Option<String>,
    /// The objects of the last version that parsed; `None` if none ever did.
    last_good: Option<Vec<Object>>,
}

/// The registry's view of the directory.
#[derive(Debug, Clone, Default)]
pub struct DirState {
    files: BTreeMap<PathBuf, FileState>,
    last_dir_error: Option<String>,
}

impl DirState {
    /// Files tracked.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Re-scans `dir`: `Some(changed)`, where `changed` says whether the directory's objects
    /// may have changed (a file with good contents was added, changed or removed), or `None`
    /// when the directory cannot be listed (the state is kept). Problems are logged and
    /// counted.
    pub fn scan(&mut self, dir: &Path, stats: &FilesStats) -> Option<bool> {
        let paths = match list(dir) {
            Ok(paths) => {
                self.last_dir_error = None;
                paths
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_dir_error.as_ref() != Some(&text) {
                    tracing::warn!(target: "files", error = %text, "keeping the last snapshot");
                    stats.add_parse_error();
                    self.last_dir_error = Some(text);
                }
                return None;
            }
        };
        let now = SystemTime::now();
        let mut changed = false;
        self.files.retain(|p, state| {
            let keep = paths.contains(p);
            if !keep {
                tracing::info!(target: "files", path = %p.display(), "file removed");
                changed |= state.last_good.is_some();
            }
            keep
        });
        for path in paths {
            changed |= self.scan_file(&path, now, stats);
        }
        Some(changed)
    }

    fn scan_file(&mut self, path: &Path, now: SystemTime, stats: &FilesStats) -> bool {
        let fingerprint = match std::fs::metadata(path) {
            Ok(meta) => Fingerprint::of(&meta),
            // Removed between listing and now: the next scan drops it.
            Err(_) => return false,
        };
        let known = self.files.get(path);
        let unchanged = known.is_some_and(|s| s.fingerprint == fingerprint);
        if unchanged && !fingerprint.racy(now) {
            return false;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(source) => {
                if !unchanged {
                    let e = FilesError::ReadFile {
                        path: path.to_owned(),
                        source,
                    };
                    tracing::warn!(target: "files", path = %path.display(), error = %e, "keeping the file's last good version");
                    stats.add_parse_error();
                    self.remember(path, fingerprint, None, None);
                }
                return false;
            }
        };
        if known.is_some_and(|s| s.content.as_deref() == Some(text.as_str())) {
            if let Some(state) = self.files.get_mut(path) {
                state.fingerprint = fingerprint;
            }
            return false;
        }
        match parse_documents(path, &text) {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    tracing::warn!(target: "files", "{w}");
                }
                tracing::info!(target: "files", path = %path.display(), objects = parsed.objects.len(), "file loaded");
                self.remember(path, fingerprint, Some(text), Some(parsed.objects));
                true
            }
            Err(e) => {
                tracing::warn!(target: "files", path = %path.display(), error = %e, "keeping the file's last good version");
                stats.add_parse_error();
                self.remember(path, fingerprint, Some(text), None);
                false
            }
        }
    }

    /// Records a new fingerprint (and content); `objects` replaces the last good version
    /// only when the new content parsed.
    fn remember(
        &mut self,
        path: &Path,
        fingerprint: Fingerprint,
        content: Option<String>,
        objects: Option<Vec<Object>>,
    ) {
        let state = self
            .files
            .entry(path.to_owned())
            .or_insert_with(|| FileState {
                fingerprint,
                content: None,
                last_good: None,
            });
        state.fingerprint = fingerprint;
        state.content = content;
        if objects.is_some() {
            state.last_good = objects;
        }
    }

    /// The snapshot of every file's last good version (files in name order), with the
    /// warnings of merging them.
    pub fn snapshot(&self) -> (Snapshot, Vec<String>) {
        super::build_snapshot(
            self.files
                .values()
                .filter_map(|s| s.last_good.as_ref())
                .flatten()
                .cloned(),
        )
    }
}
