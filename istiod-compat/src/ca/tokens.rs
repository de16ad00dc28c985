//! [`FileTokenAuthenticator`]: bearer tokens listed in a YAML file (the local-files mode's
//! stand-in for Kubernetes TokenReview), re-read whenever the file changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tracing::{info, warn};

use super::auth::{AuthError, Authenticator, BoxFuture, Caller};

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("reading token file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid token list.
    #[error("token file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One entry of `tokens.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenEntry {
    token: String,
    namespace: String,
    service_account: String,
    #[serde(default)]
    node: Option<String>,
}

/// What identifies a version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    entries: Arc<Vec<TokenEntry>>,
}

/// Authenticates bearer tokens against a YAML list:
///
/// ```yaml
/// - token: "s3cr3t-node-1"
///   namespace: istio-system
///   serviceAccount: ztunnel
///   node: node-1
/// - token: "s3cr3t-echo"
///   namespace: default
///   serviceAccount: echo
/// ```
///
/// The file is checked on every request and re-read when it changed; a change that does not
/// parse is logged and the previous list keeps serving. An unknown token is
/// [`AuthError::Invalid`].
#[derive(Debug)]
pub struct FileTokenAuthenticator {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl FileTokenAuthenticator {
    /// Reads `path`; it must exist and be valid.
    pub fn load(path: &Path) -> Result<FileTokenAuthenticator, TokenFileError> {
        let loaded = read(path)?;
        info!(path = %path.display(), tokens = loaded.entries.len(), "token file loaded");
        Ok(FileTokenAuthenticator {
            path: path.to_path_buf(),
            loaded: Mutex::new(loaded),
        })
    }

    /// The current entries, re-reading the file if it changed.
    fn entries(&self) -> Arc<Vec<TokenEntry>> {
        let mut loaded = match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match stamp(&self.path) {
            Ok(now) if now == loaded.stamp => {}
            Ok(_) => match read(&self.path) {
                Ok(fresh) => {
                    info!(path = %self.path.display(), tokens = fresh.entries.len(), "token file reloaded");
                    *loaded = fresh;
                }
                Err(e) => {
                    warn!(error = %e, "token file changed but is unusable; keeping the previous tokens");
                    // Do not re-parse the same bad version on every request.
                    if let Ok(now) = stamp(&self.path) {
                        loaded.stamp = now;
                    }
                }
            },
            Err(e) => {
                warn!(error = %e, "token file unreadable; keeping the previous tokens");
            }
        }
        loaded.entries.clone()
    }
}

impl Authenticator for FileTokenAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            let entries = self.entries();
            // Every entry is compared, in constant time per entry, so timing does not tell
            // how much of a token matched.
            let mut found: Option<&TokenEntry> = None;
            for entry in entries.iter() {
                if constant_time_eq(entry.token.as_bytes(), token.as_bytes()) {
                    found = Some(entry);
                }
            }
            found
                .map(|e| Caller {
                    namespace: e.namespace.clone(),
                    service_account: e.service_account.clone(),
                    node: e.node.clone(),
                })
                .ok_or_else(|| AuthError::Invalid("unknown token".into()))
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn stamp(path: &Path) -> Result<Stamp, TokenFileError> {
    let meta = std::fs::metadata(path).map_err(|source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Stamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

fn read(path: &Path) -> Result<Loaded, TokenFileError> {
    // Stamp first: a write racing with the read is seen as a change on the next request.
    let stamp = stamp(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| TokenFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let entries: Vec<TokenEntry> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?
    };
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        if e.token.is_empty() || e.namespace.is_empty() || e.service_account.is_empty() {
            return Err(invalid(format!(
                "entry {i}: token, namespace and serviceAccount must be non-empty"
            )));
        }
        if e.node.as_deref() == Some("") {
            return Err(invalid(format!(
                "entry {i}: node must be non-empty when set"
            )));
        }
        if !seen.insert(e.token.as_str()) {
            return Err(invalid(format!(
                "entry {i} ({}/{}): the same token is listed twice",
                e.namespace, e.service_account
            )));
        }
    }
    Ok(Loaded {
        stamp,
        entries: Arc::new(entries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = "\
- token: node-1-token
  namespace: istio-system
  serviceAccount: ztunnel
  node: node-1
- token: echo-token
  namespace: default
  serviceAccount: echo
";

    #[tokio::test]
    async fn authenticates_listed_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, TOKENS).unwrap();
        let auth = FileTokenAuthenticator::load(&path).unwrap();
        assert_eq!(
            auth.authenticate("node-1-token").await.unwrap(),
            Caller {
                namespace: "istio-system".into(),
                service_account: "ztunnel".into(),
                node: Some("node-1".into()),
            }
        );
        assert_eq!(auth.authenticate("echo-token").await.unwrap().node, None);
        assert!(matches!(
            auth.authenticate("nope").await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate("").await,
            Err(AuthError::Missing)
        ));
    }

    #[tokio::test]
    async fn rereads_on_change_and_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, TOKENS).unwrap();
        let auth = FileTokenAuthenticator::load(&path).unwrap();

        // Replaced (new inode, as editors and kubelet do): the new list applies at once.
        let tmp = dir.path().join("tokens.yaml.new");
        std::fs::write(
            &tmp,
            "- {token: fresh, namespace: default, serviceAccount: other}\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(auth.authenticate("echo-token").await.is_err());
        assert_eq!(
            auth.authenticate("fresh").await.unwrap().service_account,
            "other"
        );

        // A broken version is ignored.
        let tmp = dir.path().join("tokens.yaml.bad");
        std::fs::write(&tmp, "- {token: x}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(auth.authenticate("fresh").await.is_ok());

        // So is a vanished file.
        std::fs::remove_file(&path).unwrap();
        assert!(auth.authenticate("fresh").await.is_ok());
    }

    #[test]
    fn invalid_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        for bad in [
            "- {token: '', namespace: a, serviceAccount: b}",
            "- {token: t, namespace: a, serviceAccount: b}\n- {token: t, namespace: c, serviceAccount: d}",
            "- {token: t, namespace: a, serviceAccount: b, node: ''}",
            "- {token: t, namespace: a, serviceAccount: b, extra: 1}",
            "not a list",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = FileTokenAuthenticator::load(&path).unwrap_err();
            assert!(err.to_string().contains("tokens.yaml"), "{bad}: {err}");
        }
        let err = FileTokenAuthenticator::load(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(matches!(err, TokenFileError::Io { .. }));
    }
}
