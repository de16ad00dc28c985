//! Istio's plug-in CA directory: which files exist, reading them, and creating a self-signed
//! root there exactly once even when several processes start together.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::ca::{CaMaterial, generate_root};
use crate::{CA_CERT, CA_KEY, CERT_CHAIN, CaError, LOCK_FILE, ROOT_CERT};

/// Paths of the plug-in CA files in one directory.
pub(crate) struct CaFiles {
    dir: PathBuf,
}

/// What a CA directory holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirState {
    /// `ca-cert.pem` and `ca-key.pem` exist.
    Complete,
    /// None of the CA files exists: a root may be created.
    Empty,
    /// Some CA files exist, but not both required ones.
    Incomplete {
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
}

impl CaFiles {
    pub(crate) fn new(dir: &Path) -> Self {
        CaFiles {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn state(&self) -> Result<DirState, CaError> {
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for name in [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN] {
            let path = self.path(name);
            let exists = path.try_exists().map_err(|source| CaError::Io {
                action: "checking",
                path,
                source,
            })?;
            match (exists, name == CA_CERT || name == CA_KEY) {
                (true, _) => present.push(name),
                (false, true) => missing.push(name),
                (false, false) => {}
            }
        }
        Ok(if missing.is_empty() {
            DirState::Complete
        } else if present.is_empty() {
            DirState::Empty
        } else {
            DirState::Incomplete { present, missing }
        })
    }

    /// The error for a directory that is not complete.
    fn incomplete(&self, state: DirState) -> Result<(), CaError> {
        match state {
            DirState::Complete => Ok(()),
            DirState::Empty => Err(CaError::IncompleteCaDir {
                dir: self.dir.clone(),
                present: Vec::new(),
                missing: vec![CA_CERT, CA_KEY],
            }),
            DirState::Incomplete { present, missing } => Err(CaError::IncompleteCaDir {
                dir: self.dir.clone(),
                present,
                missing,
            }),
        }
    }

    /// Reads a file; `Ok(None)` if it does not exist.
    fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CaError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, CaError> {
        let path = self.path(name);
        fs::read(&path).map_err(|source| CaError::Io {
            action: "reading",
            path,
            source,
        })
    }

    /// Reads a complete directory's files.
    pub(crate) fn read_material(&self) -> Result<CaMaterial, CaError> {
        self.incomplete(self.state()?)?;
        Ok(CaMaterial {
            ca_cert: self.read(CA_CERT)?,
            ca_key: self.read(CA_KEY)?,
            root_cert: self.read_optional(ROOT_CERT)?,
            cert_chain: self.read_optional(CERT_CHAIN)?,
        })
    }

    /// Creates a self-signed root unless another process did (or does) so first.
    pub(crate) fn create_root_if_empty(&self, trust_domain: &str) -> Result<(), CaError> {
        fs::create_dir_all(&self.dir).map_err(|source| CaError::Io {
            action: "creating",
            path: self.dir.clone(),
            source,
        })?;
        let lock_path = self.path(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| CaError::Io {
                action: "opening lock file",
                path: lock_path.clone(),
                source,
            })?;
        // Blocks until no other process (or thread) is creating; released when `lock` drops,
        // including when a process dies mid-way.
        lock.lock().map_err(|source| CaError::Io {
            action: "locking",
            path: lock_path,
            source,
        })?;
        match self.state()? {
            DirState::Empty => {
                let root = generate_root(trust_domain)?;
                // Key first: a crash in between leaves a key without certificate, reported as
                // an incomplete directory rather than a certificate we cannot sign with.
                self.publish(CA_KEY, root.key_pem.as_bytes(), 0o600)?;
                self.publish(CA_CERT, root.cert_pem.as_bytes(), 0o644)?;
                self.sync_dir()?;
                tracing::info!(dir = %self.dir.display(), trust_domain, "created self-signed mesh root");
                Ok(())
            }
            state => self.incomplete(state),
        }
    }

    /// Writes `name` atomically: a private temp file in the same directory, fsync, rename.
    fn publish(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), CaError> {
        let target = self.path(name);
        let tmp = self.path(&format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::rng().next_u64()
        ));
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io {
                action,
                path,
                source,
            }
        };
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            file.write_all(contents).map_err(io_err("writing", &tmp))?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            fs::rename(&tmp, &target).map_err(io_err("renaming into", &target))
        })();
        if result.is_err() {
            // Best effort: the temp file is garbage either way.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn sync_dir(&self) -> Result<(), CaError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| CaError::Io {
                action: "syncing",
                path: self.dir.clone(),
                source,
            })
    }
}
