//! Pods reported by the CNI plugin, one JSON file per pod uid in the state directory, so an
//! agent restart still knows every pod on the node (writes are atomic: tmp file + rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the agent remembers of a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod uid (the key; ZDS uses it too).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// Sandbox container id.
    pub container_id: String,
    /// Addresses from the CNI result (CIDR notation); may be empty.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("state dir: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A uid that cannot be a file name.
    #[error(
        "pod uid {0:?} is not usable as a file name (want [A-Za-z0-9._-], not starting with '.')"
    )]
    BadUid(String),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

const SUFFIX: &str = ".json";

fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && !uid.starts_with('.')
        && uid.len() <= 253
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl StateStore {
    /// Opens (creating it, mode 0700) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(StateStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, uid: &str) -> Result<PathBuf, StateError> {
        if !valid_uid(uid) {
            return Err(StateError::BadUid(uid.to_string()));
        }
        Ok(self.dir.join(format!("{uid}{SUFFIX}")))
    }

    /// Writes (replaces) a pod's record atomically.
    pub fn save(&self, pod: &PodRecord) -> Result<(), StateError> {
        let path = self.path(&pod.uid)?;
        let tmp = self.dir.join(format!(".{}{SUFFIX}.tmp", pod.uid));
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { op, path, source }
        };
        let bytes = serde_json::to_vec_pretty(pod)
            .map_err(|e| io("encoding", &path)(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into", &path))
    }

    /// Forgets a pod (absent is fine).
    pub fn remove(&self, uid: &str) -> Result<(), StateError> {
        let path = self.path(uid)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
                op: "removing",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every record. A file that does not read or parse is logged and skipped (and left for
    /// inspection); the directory itself must be readable.
    pub fn load(&self) -> Result<BTreeMap<String, PodRecord>, StateError> {
        let read_dir = std::fs::read_dir(&self.dir).map_err(|source| StateError::Io {
            op: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = BTreeMap::new();
        for entry in read_dir {
            let entry = entry.map_err(|source| StateError::Io {
                op: "listing",
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(SUFFIX) {
                continue;
            }
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(rec) if format!("{}{SUFFIX}", rec.uid) == name => {
                    out.insert(rec.uid.clone(), rec);
                }
                Ok(rec) => {
                    tracing::warn!(path = %path.display(), uid = rec.uid, "state file name does not match its uid; skipped")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = e, "unreadable state file; skipped")
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "ns".into(),
            netns: "/var/run/netns/x".into(),
            container_id: "c".into(),
            ips: vec!["10.0.0.2/24".into()],
        }
    }

    #[test]
    fn save_load_remove_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state")).unwrap();
        store.save(&rec("a")).unwrap();
        store.save(&rec("b")).unwrap();
        let mut changed = rec("a");
        changed.ips.clear();
        store.save(&changed).unwrap();
        // A fresh store (agent restart) sees the same records; no tmp files remain.
        let again = StateStore::open(dir.path().join("state")).unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["a"], changed);
        assert_eq!(loaded["b"], rec("b"));
        let names: Vec<_> = std::fs::read_dir(again.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        again.remove("a").unwrap();
        again.remove("a").unwrap();
        assert_eq!(again.load().unwrap().keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn bad_uid_and_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(
                matches!(store.save(&rec(bad)), Err(StateError::BadUid(_))),
                "{bad}"
            );
        }
        std::fs::write(dir.path().join("zzz.json"), b"{not json").unwrap();
        store.save(&rec("ok")).unwrap();
        assert_eq!(store.load().unwrap().len(), 1);
    }
}
