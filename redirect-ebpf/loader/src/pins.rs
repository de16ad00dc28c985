//! Pin-dir layout and file-system checks (bpffs, cgroup2).

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

use crate::{LoadError, NetnsCookie};

/// The cgroup programs: (link pin name, program function name in redirect.c).
pub(crate) const CGROUP_LINKS: [(&str, &str); 4] = [
    ("connect4", "redir_connect4"),
    ("connect6", "redir_connect6"),
    ("sockops", "redir_sockops"),
    ("getsockopt", "redir_getsockopt"),
];

/// The sk_lookup program function name in redirect.c.
pub(crate) const SK_LOOKUP_PROGRAM: &str = "redir_sk_lookup";

/// Prefix of the per-netns sk_lookup link pins.
pub(crate) const SK_LOOKUP_PREFIX: &str = "sk_lookup-";

pub(crate) fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub(crate) fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

pub(crate) fn map_pin(pin_dir: &Path, map: &str) -> PathBuf {
    maps_dir(pin_dir).join(map)
}

pub(crate) fn cgroup_link_pin(pin_dir: &Path, link: &str) -> PathBuf {
    links_dir(pin_dir).join(link)
}

pub(crate) fn sk_lookup_link_pin(pin_dir: &Path, cookie: NetnsCookie) -> PathBuf {
    links_dir(pin_dir).join(format!("{SK_LOOKUP_PREFIX}{}", cookie.0))
}

/// Fails unless `pin_dir` (or, if it does not exist yet, its nearest existing ancestor) is on
/// a bpffs; then creates `pin_dir/{maps,links}`.
pub(crate) fn prepare_pin_dir(pin_dir: &Path) -> Result<(), LoadError> {
    let mut checked = pin_dir;
    while !checked.exists() {
        checked = checked.parent().unwrap_or(Path::new("/"));
    }
    let fs = statfs(checked).map_err(|e| LoadError::Io {
        what: "statfs",
        path: checked.to_path_buf(),
        source: io::Error::from(e),
    })?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        return Err(LoadError::NotBpffs {
            pin_dir: pin_dir.to_path_buf(),
            checked: checked.to_path_buf(),
        });
    }
    for dir in [maps_dir(pin_dir), links_dir(pin_dir)] {
        std::fs::create_dir_all(&dir).map_err(|source| LoadError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Fails unless `path` is a directory on cgroup2.
pub(crate) fn check_cgroup2(path: &Path) -> Result<(), LoadError> {
    let not_cgroup2 = || LoadError::NotCgroup2 {
        path: path.to_path_buf(),
    };
    if !path.is_dir() {
        return Err(not_cgroup2());
    }
    let fs = statfs(path).map_err(|e| LoadError::Io {
        what: "statfs",
        path: path.to_path_buf(),
        source: io::Error::from(e),
    })?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(not_cgroup2());
    }
    Ok(())
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
