//! Inserting this plugin into the node's CNI configuration as a chained plugin, and removing
//! it again (skeleton: the interface only; filled in by the chaining work).

use std::path::{Path, PathBuf};

/// What `mesh-cni install` needs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The node's CNI configuration directory (e.g. `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The node's CNI binary directory (e.g. `/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The agent's CNI event socket written into the plugin's config.
    pub agent_socket: PathBuf,
    /// The plugin binary to copy into `bin_dir` (normally the running executable).
    pub plugin_binary: PathBuf,
}

/// Errors of install/uninstall.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Not implemented yet.
    #[error("CNI chaining is not implemented yet")]
    Unimplemented,
}

/// Installs the binary and chains the plugin into the primary CNI config (idempotent).
pub fn install(_opts: &InstallOptions) -> Result<(), ChainError> {
    Err(ChainError::Unimplemented)
}

/// Removes the plugin from every CNI config in `conf_dir` and its binary from `bin_dir`.
pub fn uninstall(_conf_dir: &Path, _bin_dir: &Path) -> Result<(), ChainError> {
    Err(ChainError::Unimplemented)
}
