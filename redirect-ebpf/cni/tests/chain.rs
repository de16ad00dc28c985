//! `mesh_cni::chain` against sample node CNI configurations (`testdata/`): the plugin is
//! chained into the file the runtime uses, exactly once, idempotently, and removed cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mesh_cni::chain::{
    self, ChainError, InstallOptions, PLUGIN_TYPE, install_with_report, uninstall_with_report,
};
use serde_json::Value;
use test_case::test_case;

const SOCKET: &str = "/var/run/mesh-cni/agent.sock";

/// A node: a copy of one sample directory as its CNI conf dir, an empty bin dir, and a fake
/// plugin binary.
struct Node {
    _tmp: tempfile::TempDir,
    conf: PathBuf,
    bin: PathBuf,
    binary: PathBuf,
}

impl Node {
    fn new(sample: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("net.d");
        let bin = tmp.path().join("bin");
        fs::create_dir_all(&conf).unwrap();
        fs::create_dir_all(&bin).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(sample);
        for entry in fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), conf.join(entry.file_name())).unwrap();
        }
        let binary = tmp.path().join("mesh-cni-build");
        fs::write(&binary, b"\x7fELF plugin v1").unwrap();
        Node {
            _tmp: tmp,
            conf,
            bin,
            binary,
        }
    }

    fn opts(&self, socket: &str) -> InstallOptions {
        InstallOptions {
            conf_dir: self.conf.clone(),
            bin_dir: self.bin.clone(),
            agent_socket: socket.into(),
            plugin_binary: self.binary.clone(),
        }
    }

    /// Every file of the conf dir and its bytes.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(&self.conf)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.conf.join(name)).unwrap()).unwrap()
    }
}

fn types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

fn ours(list: &Value) -> Vec<&Value> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == PLUGIN_TYPE)
        .collect()
}

#[test_case("bridge", "10-containerd-net.conflist", &["bridge", "portmap"]; "bridge conflist")]
#[test_case("calico", "10-calico.conflist", &["calico", "portmap", "bandwidth"]; "calico")]
#[test_case("cilium", "05-cilium.conflist", &["cilium-cni"]; "cilium")]
fn conflist_install_is_idempotent_and_uninstall_restores(
    sample: &str,
    primary: &str,
    original: &[&str],
) {
    let node = Node::new(sample);
    let before = node.files();
    let original_json = node.json(primary);

    let report = install_with_report(&node.opts(SOCKET)).unwrap();
    assert_eq!(report.config, node.conf.join(primary));
    assert!(report.config_changed && report.binary_changed);

    let list = node.json(primary);
    let mut expected: Vec<String> = original.iter().map(|s| s.to_string()).collect();
    expected.push(PLUGIN_TYPE.into());
    assert_eq!(
        types(&list),
        expected,
        "appended last, after the primary plugin"
    );
    assert_eq!(ours(&list)[0]["agent_socket"], SOCKET);
    // Everything else of the file is preserved.
    let mut stripped = list.clone();
    assert!(chain::remove_plugin(&mut stripped));
    assert_eq!(stripped, original_json);
    // Only the primary file changed; non-configuration files are untouched.
    let after = node.files();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        if name != primary {
            assert_eq!(&after[name], bytes, "{name} must not change");
        }
    }
    let installed = node.bin.join(PLUGIN_TYPE);
    assert_eq!(
        fs::read(&installed).unwrap(),
        fs::read(&node.binary).unwrap()
    );
    assert_eq!(
        fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // Idempotent: a second install writes nothing.
    let snapshot = node.files();
    let again = install_with_report(&node.opts(SOCKET)).unwrap();
    assert!(!again.config_changed && !again.binary_changed, "{again:?}");
    assert_eq!(node.files(), snapshot);

    // Uninstall: the plugin list is the original again, the binary is gone; twice is fine.
    let rewritten = uninstall_with_report(&node.conf, &node.bin).unwrap();
    assert_eq!(rewritten, [node.conf.join(primary)]);
    assert_eq!(node.json(primary), original_json);
    assert!(!installed.exists());
    assert!(
        uninstall_with_report(&node.conf, &node.bin)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        node.files().keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}

#[test]
fn conf_is_converted_to_a_conflist() {
    let node = Node::new("bridge-conf");
    let original = node.json("10-bridge.conf");
    let loopback = fs::read(node.conf.join("99-loopback.conf")).unwrap();

    let report = install_with_report(&node.opts(SOCKET)).unwrap();
    assert_eq!(report.config, node.conf.join("10-bridge.conflist"));
    assert!(
        !node.conf.join("10-bridge.conf").exists(),
        "the .conf is replaced"
    );
    // The converted list is still the lexically first configuration.
    assert_eq!(
        chain::primary_config(&node.conf).unwrap(),
        node.conf.join("10-bridge.conflist")
    );
    let list = node.json("10-bridge.conflist");
    assert_eq!(list["cniVersion"], original["cniVersion"]);
    assert_eq!(list["name"], original["name"]);
    assert_eq!(types(&list), ["bridge", PLUGIN_TYPE]);
    assert_eq!(list["plugins"][0]["ipam"], original["ipam"]);
    assert!(list["plugins"][0].get("name").is_none());
    assert_eq!(
        fs::read(node.conf.join("99-loopback.conf")).unwrap(),
        loopback
    );

    let again = install_with_report(&node.opts(SOCKET)).unwrap();
    assert!(!again.config_changed);

    chain::uninstall(&node.conf, &node.bin).unwrap();
    let list = node.json("10-bridge.conflist");
    assert_eq!(types(&list), ["bridge"]);
    let mut expected = original.as_object().unwrap().clone();
    expected.remove("name");
    expected.remove("cniVersion");
    assert_eq!(list["plugins"][0], Value::Object(expected));
}

#[test]
fn conversion_never_overwrites_another_conflist() {
    let node = Node::new("bridge-conf");
    let other = br#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]}"#;
    fs::write(node.conf.join("10-bridge.conflist"), other).unwrap();
    let before = node.files();
    let err = chain::install(&node.opts(SOCKET)).unwrap_err();
    assert!(matches!(err, ChainError::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("10-bridge.conflist"), "{err}");
    assert_eq!(node.files(), before, "nothing written");
}

#[test]
fn a_changed_socket_updates_the_entry_in_place() {
    let node = Node::new("calico");
    chain::install(&node.opts(SOCKET)).unwrap();
    let report = install_with_report(&node.opts("/run/other.sock")).unwrap();
    assert!(report.config_changed);
    let list = node.json("10-calico.conflist");
    assert_eq!(ours(&list).len(), 1);
    assert_eq!(ours(&list)[0]["agent_socket"], "/run/other.sock");
    assert_eq!(types(&list).last().unwrap(), PLUGIN_TYPE);
}

#[test]
fn a_rewritten_primary_config_gets_the_entry_back() {
    // Primary plugins (Calico, Cilium) rewrite their file on restart, dropping our entry.
    let node = Node::new("cilium");
    chain::install(&node.opts(SOCKET)).unwrap();
    let original = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/cilium/05-cilium.conflist");
    fs::copy(original, node.conf.join("05-cilium.conflist")).unwrap();
    let report = install_with_report(&node.opts(SOCKET)).unwrap();
    assert!(report.config_changed && !report.binary_changed);
    assert_eq!(
        types(&node.json("05-cilium.conflist")),
        ["cilium-cni", PLUGIN_TYPE]
    );
}

#[test]
fn a_new_binary_is_installed_over_the_old() {
    let node = Node::new("bridge");
    chain::install(&node.opts(SOCKET)).unwrap();
    fs::write(&node.binary, b"\x7fELF plugin v2").unwrap();
    let report = install_with_report(&node.opts(SOCKET)).unwrap();
    assert!(report.binary_changed && !report.config_changed);
    assert_eq!(
        fs::read(node.bin.join(PLUGIN_TYPE)).unwrap(),
        b"\x7fELF plugin v2"
    );
}

#[test]
fn permissions_of_the_config_are_kept() {
    let node = Node::new("calico");
    let path = node.conf.join("10-calico.conflist");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    chain::install(&node.opts(SOCKET)).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary files are left behind.
    assert!(
        node.files().keys().all(|n| !n.starts_with('.')),
        "{:?}",
        node.files().keys()
    );
}

#[test]
fn empty_or_missing_config_is_an_error_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("plugin");
    fs::write(&binary, b"x").unwrap();
    let conf = tmp.path().join("net.d");
    fs::create_dir(&conf).unwrap();
    fs::write(conf.join("README"), b"not a config").unwrap();
    let opts = InstallOptions {
        conf_dir: conf.clone(),
        bin_dir: tmp.path().to_path_buf(),
        agent_socket: SOCKET.into(),
        plugin_binary: binary,
    };
    let err = chain::install(&opts).unwrap_err();
    assert!(matches!(err, ChainError::NoPrimaryConfig { .. }), "{err}");
    assert!(
        err.to_string().contains(&conf.display().to_string()),
        "{err}"
    );

    fs::write(conf.join("10-broken.conflist"), b"{not json").unwrap();
    let err = chain::install(&opts).unwrap_err();
    assert!(matches!(err, ChainError::Json { .. }), "{err}");
    assert!(err.to_string().contains("10-broken.conflist"), "{err}");
    assert_eq!(
        fs::read(conf.join("10-broken.conflist")).unwrap(),
        b"{not json"
    );
    // Uninstall skips what is not JSON and still succeeds.
    chain::uninstall(&conf, tmp.path()).unwrap();
}

#[test]
fn uninstall_of_a_missing_directory_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    chain::uninstall(&tmp.path().join("absent"), &tmp.path().join("absent-bin")).unwrap();
}
