//! Inserting this plugin into the node's CNI configuration as a chained plugin, and removing
//! it again.
//!
//! The container runtime (containerd, CRI-O) uses the lexically first `*.conf`, `*.conflist`
//! or `*.json` file of its CNI configuration directory; [`primary_config`] picks the same
//! file. [`install`] copies the plugin binary into the CNI binary directory and appends a
//! `{"type": "mesh-cni", "agent_socket": ...}` entry to the end of that file's `plugins`
//! list, so the plugin runs after the primary network plugin and sees its `prevResult`. A
//! single-plugin `.conf` is converted to a `.conflist` first (the `.conf` is removed, so the
//! runtime keeps picking the same network). Everything is idempotent: running `install`
//! again changes nothing, and an existing entry with a different socket is updated in place.
//! [`uninstall`] removes every entry of ours from every configuration file and deletes the
//! binary. Files are replaced atomically (write a temporary file in the same directory,
//! fsync, rename), keeping their permissions, so the runtime never reads a partial file.
//!
//! The JSON edits are pure functions on [`serde_json::Value`] ([`insert_plugin`],
//! [`remove_plugin`], [`conf_to_conflist`]) so they are tested without a filesystem.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The plugin's `type` in a CNI configuration (also the binary's name in the bin dir).
pub const PLUGIN_TYPE: &str = "mesh-cni";
/// The plugin's configuration key naming the node agent's CNI event socket.
pub const AGENT_SOCKET_KEY: &str = "agent_socket";
/// Extensions the runtime reads from the CNI configuration directory.
pub const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

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

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The primary configuration file now holding our entry (after any `.conf` conversion).
    pub config: PathBuf,
    /// Whether that file was written (false: our entry was already there, unchanged).
    pub config_changed: bool,
    /// Whether the binary was copied (false: an identical copy was already there).
    pub binary_changed: bool,
}

/// Errors of install/uninstall.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The directory holds no CNI configuration yet (the primary network plugin has not
    /// written one): retry later.
    #[error("no CNI configuration (*.conf, *.conflist, *.json) in {}", dir.display())]
    NoPrimaryConfig {
        /// The configuration directory.
        dir: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not JSON.
    #[error("parsing CNI configuration {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration file is JSON but not a usable network configuration.
    #[error("CNI configuration {}: {reason}", path.display())]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ChainError + 'a {
    move |source| ChainError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Our plugin's entry in a `plugins` list.
pub fn plugin_entry(agent_socket: &Path) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        AGENT_SOCKET_KEY: agent_socket.to_string_lossy(),
    })
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins_mut(conflist: &mut Value) -> Result<&mut Vec<Value>, String> {
    let obj = conflist
        .as_object_mut()
        .ok_or("a network configuration list must be a JSON object")?;
    match obj.get_mut("plugins") {
        Some(Value::Array(plugins)) => Ok(plugins),
        Some(_) => Err("\"plugins\" must be an array".into()),
        None => Err("no \"plugins\" list".into()),
    }
}

/// Adds `plugin` (see [`plugin_entry`]) at the end of the `plugins` list of a network
/// configuration list. If an entry of ours is already present, the first one is replaced by
/// `plugin` in place and any further ones are dropped. Returns whether anything changed.
pub fn insert_plugin(conflist: &mut Value, plugin: Value) -> Result<bool, String> {
    let plugins = plugins_mut(conflist)?;
    if plugins.is_empty() {
        return Err("the \"plugins\" list is empty (no primary plugin to chain after)".into());
    }
    match plugins.iter().position(is_ours) {
        None => {
            plugins.push(plugin);
            Ok(true)
        }
        Some(first) => {
            let mut changed = plugins[first] != plugin;
            plugins[first] = plugin;
            let before = plugins.len();
            let mut index = 0;
            plugins.retain(|p| {
                let keep = index <= first || !is_ours(p);
                index += 1;
                keep
            });
            changed |= plugins.len() != before;
            Ok(changed)
        }
    }
}

/// Removes every entry of ours from a network configuration list's `plugins`. Returns
/// whether anything was removed. A value without a `plugins` list is left alone.
pub fn remove_plugin(conflist: &mut Value) -> bool {
    match plugins_mut(conflist) {
        Ok(plugins) => {
            let before = plugins.len();
            plugins.retain(|p| !is_ours(p));
            plugins.len() != before
        }
        Err(_) => false,
    }
}

/// Converts a single-plugin network configuration (`.conf`) into a list: `cniVersion` and
/// `name` move to the list, everything else stays in the one plugin entry.
pub fn conf_to_conflist(conf: &Value) -> Result<Value, String> {
    let obj = conf
        .as_object()
        .ok_or("a network configuration must be a JSON object")?;
    if obj.contains_key("plugins") {
        // Already a list in a `.conf` file (some installers do this): keep it.
        return Ok(conf.clone());
    }
    if !obj.get("type").is_some_and(Value::is_string) {
        return Err("a network configuration needs a \"type\"".into());
    }
    let mut plugin: Map<String, Value> = obj.clone();
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.remove(key) {
            list.insert(key.to_string(), v);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    Ok(Value::Object(list))
}

fn has_config_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
}

/// Every CNI configuration file of `conf_dir` (regular files with a configuration
/// extension, not hidden), sorted by file name as the runtime sorts them.
pub fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, ChainError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(conf_dir).map_err(io_err("reading directory", conf_dir))? {
        let entry = entry.map_err(io_err("reading directory", conf_dir))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let file_type = entry.file_type().map_err(io_err("inspecting", &path))?;
        // Symlinks count if they point at a file (some installers link their config).
        let is_file = file_type.is_file() || (file_type.is_symlink() && path.is_file());
        if is_file && !hidden && has_config_extension(&path) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The configuration file the runtime uses: the lexically first in `conf_dir`.
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, ChainError> {
    config_files(conf_dir)?
        .into_iter()
        .next()
        .ok_or_else(|| ChainError::NoPrimaryConfig {
            dir: conf_dir.to_path_buf(),
        })
}

fn read_json(path: &Path) -> Result<Value, ChainError> {
    let bytes = fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ChainError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// renamed over `path`. `mode` is applied to the new file (Unix permissions).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ChainError> {
    use std::os::unix::fs::PermissionsExt;

    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden and without a configuration extension: the runtime never reads it.
    // Unique per process and call: installers in different pods may share a pid number.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.mesh-cni-tmp-{}-{nanos}",
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(bytes).map_err(io_err("writing", &tmp))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("setting permissions of", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here is not worth failing the install.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn file_mode(path: &Path, default: u32) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default)
}

fn to_pretty(path: &Path, value: &Value) -> Result<Vec<u8>, ChainError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| ChainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Chains our plugin into the primary configuration of `conf_dir` (converting a `.conf` to
/// a `.conflist`). Returns the file holding our entry and whether it was written.
pub fn chain_into_primary(
    conf_dir: &Path,
    agent_socket: &Path,
) -> Result<(PathBuf, bool), ChainError> {
    let primary = primary_config(conf_dir)?;
    let original = read_json(&primary)?;
    let invalid = |reason: String| ChainError::InvalidConfig {
        path: primary.clone(),
        reason,
    };
    let is_list_file = primary.extension().and_then(|e| e.to_str()) == Some("conflist");
    let is_list_value = original.get("plugins").is_some();
    let (target, mut list) = if is_list_file || is_list_value {
        (primary.clone(), original)
    } else {
        let list = conf_to_conflist(&original).map_err(&invalid)?;
        let target = primary.with_extension("conflist");
        if target.exists() {
            // Never overwrite another network's configuration.
            return Err(invalid(format!(
                "converting it to a list would replace the existing {}",
                target.display()
            )));
        }
        (target, list)
    };
    let changed = insert_plugin(&mut list, plugin_entry(agent_socket)).map_err(invalid)?;
    let converted = target != primary;
    if changed || converted {
        let mode = file_mode(&primary, 0o644);
        write_atomic(&target, &to_pretty(&target, &list)?, mode)?;
        if converted {
            fs::remove_file(&primary).map_err(io_err("removing the converted", &primary))?;
        }
    }
    Ok((target, changed || converted))
}

/// Copies `source` to `bin_dir/mesh-cni` (mode 0755) unless an identical file is there.
/// Returns whether it was copied.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<bool, ChainError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(source).map_err(io_err("reading the plugin binary", source))?;
    if fs::read(&target).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    write_atomic(&target, &bytes, 0o755)?;
    Ok(true)
}

/// Installs the binary and chains the plugin into the primary CNI config (idempotent).
pub fn install(opts: &InstallOptions) -> Result<(), ChainError> {
    install_with_report(opts).map(|_| ())
}

/// [`install`], telling what changed.
///
/// The binary goes first, so the runtime never finds our entry without the binary.
pub fn install_with_report(opts: &InstallOptions) -> Result<InstallReport, ChainError> {
    let binary_changed = install_binary(&opts.plugin_binary, &opts.bin_dir)?;
    let (config, config_changed) = chain_into_primary(&opts.conf_dir, &opts.agent_socket)?;
    Ok(InstallReport {
        config,
        config_changed,
        binary_changed,
    })
}

/// Removes the plugin from every CNI config in `conf_dir` and its binary from `bin_dir`.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<(), ChainError> {
    uninstall_with_report(conf_dir, bin_dir).map(|_| ())
}

/// [`uninstall`], returning the configuration files rewritten.
///
/// Idempotent: nothing to remove is not an error. Files that are not JSON are skipped (they
/// cannot hold our entry, and are not ours to judge). A configuration converted from `.conf` stays a `.conflist` (with the original plugin only),
/// which the runtime reads the same way.
pub fn uninstall_with_report(conf_dir: &Path, bin_dir: &Path) -> Result<Vec<PathBuf>, ChainError> {
    let mut rewritten = Vec::new();
    // The configuration first, so the runtime never finds our entry without the binary.
    if conf_dir.is_dir() {
        for path in config_files(conf_dir)? {
            let Ok(mut value) = read_json(&path) else {
                continue;
            };
            if remove_plugin(&mut value) {
                write_atomic(&path, &to_pretty(&path, &value)?, file_mode(&path, 0o644))?;
                rewritten.push(path);
            }
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &binary)(e)),
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(plugins: Value) -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": plugins})
    }

    #[test]
    fn insert_appends_once() {
        let mut v = list(json!([{"type": "bridge"}, {"type": "portmap"}]));
        let entry = plugin_entry(Path::new("/s"));
        assert_eq!(insert_plugin(&mut v, entry.clone()), Ok(true));
        assert_eq!(insert_plugin(&mut v, entry.clone()), Ok(false));
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2], entry);
    }

    #[test]
    fn insert_updates_in_place_and_dedups() {
        let mut v = list(json!([
            {"type": "bridge"},
            {"type": "mesh-cni", "agent_socket": "/old"},
            {"type": "portmap"},
            {"type": "mesh-cni", "agent_socket": "/old"}
        ]));
        assert_eq!(
            insert_plugin(&mut v, plugin_entry(Path::new("/new"))),
            Ok(true)
        );
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "mesh-cni", "portmap"]);
        assert_eq!(v["plugins"][1]["agent_socket"], "/new");
    }

    #[test]
    fn insert_rejects_unusable_lists() {
        for bad in [
            json!([]),
            json!({"plugins": {}}),
            json!({"type": "bridge"}),
            list(json!([])),
        ] {
            let mut v = bad.clone();
            assert!(
                insert_plugin(&mut v, plugin_entry(Path::new("/s"))).is_err(),
                "{bad}"
            );
            assert_eq!(v, bad, "unchanged on error");
        }
    }

    #[test]
    fn remove_is_idempotent() {
        let mut v = list(json!([{"type": "bridge"}, {"type": "mesh-cni"}]));
        assert!(remove_plugin(&mut v));
        assert!(!remove_plugin(&mut v));
        assert_eq!(v, list(json!([{"type": "bridge"}])));
        let mut not_a_list = json!({"type": "bridge"});
        assert!(!remove_plugin(&mut not_a_list));
    }

    #[test]
    fn conf_conversion() {
        let conf =
            json!({"cniVersion": "0.3.1", "name": "net", "type": "bridge", "bridge": "cni0"});
        let v = conf_to_conflist(&conf).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "0.3.1", "name": "net", "plugins": [{"type": "bridge", "bridge": "cni0"}]})
        );
        assert!(conf_to_conflist(&json!({"name": "x"})).is_err());
        assert!(conf_to_conflist(&json!(["x"])).is_err());
    }
}
