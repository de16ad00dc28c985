//! Where the eBPF programs cannot load, the real `redirect-agent` binary stops at start-up with
//! an error naming what is missing (a capability, cgroup v2, a bpffs mount) and the nftables
//! fallback, and leaves nothing pinned behind.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{require_root, sh};
use redirect_agent::config::{detect_cgroup2, env};

const AGENT: &str = env!("CARGO_BIN_EXE_redirect-agent");
const BPFFS: &str = "/sys/fs/bpf";

fn ensure_bpffs() {
    let is_bpffs = sh("stat", &["-f", "-c", "%T", BPFFS]).trim() == "bpf_fs";
    if !is_bpffs {
        sh("mount", &["-t", "bpf", "bpf", BPFFS]);
    }
}

/// A scratch directory anyone may write (the unprivileged run needs it too).
fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("agent-start-{name}-"))
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs the agent (optionally as `nobody`, without any capability) and returns its output.
fn run_agent(work: &Path, cgroup: &Path, pin_dir: &Path, unprivileged: bool) -> Output {
    let registry = work.join("registry");
    std::fs::create_dir_all(&registry).unwrap();
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            AGENT,
        ]);
        c
    } else {
        Command::new(AGENT)
    };
    cmd.env_clear()
        .env(env::NODE_NAME, "node1")
        .env(env::REDIRECT_MODE, "ebpf")
        .env(env::REGISTRY, "files")
        .env(env::LOCAL_DIR, &registry)
        .env(env::STATE_DIR, work.join("state"))
        .env(env::ZDS_SOCKET, work.join("zds.sock"))
        .env(env::CNI_EVENT_SOCKET, work.join("cni.sock"))
        .env(env::READINESS_ADDR, "127.0.0.1:0")
        .env(env::CGROUP_PATH, cgroup)
        .env(env::BPF_PIN_DIR, pin_dir);
    cmd.output().expect("running redirect-agent")
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent must refuse to start; stderr:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "start-up error must mention {needle:?}; stderr:\n{stderr}"
        );
    }
}

fn pinned(pin_dir: &Path) -> Vec<PathBuf> {
    walk(pin_dir)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}

#[test]
fn without_capabilities_the_error_names_them_and_the_fallback() {
    require_root();
    ensure_bpffs();
    let work = scratch("nocaps");
    let pin_dir = Path::new(BPFFS).join(format!("agent-start-nocaps-{}", std::process::id()));
    std::fs::create_dir_all(&pin_dir).unwrap();
    std::fs::set_permissions(&pin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run_agent(work.path(), &detect_cgroup2(), &pin_dir, true);
    let left = pinned(&pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    assert_fails_with(
        &out,
        &[
            "permission denied",
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "REDIRECT_MODE=nftables",
        ],
    );
    assert!(left.is_empty(), "nothing may stay pinned: {left:?}");
}

#[test]
fn a_cgroup_path_that_is_not_cgroup2_is_named() {
    require_root();
    ensure_bpffs();
    let work = scratch("nocgroup");
    let pin_dir = Path::new(BPFFS).join(format!("agent-start-nocg-{}", std::process::id()));
    let out = run_agent(work.path(), work.path(), &pin_dir, false);
    let left = pinned(&pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    assert_fails_with(
        &out,
        &["is not a cgroup2 directory", "REDIRECT_MODE=nftables"],
    );
    assert!(left.is_empty(), "nothing may stay pinned: {left:?}");
}

#[test]
fn a_pin_dir_outside_bpffs_is_named() {
    require_root();
    let work = scratch("nobpffs");
    let pin_dir = work.path().join("pins");
    let out = run_agent(work.path(), &detect_cgroup2(), &pin_dir, false);
    assert_fails_with(&out, &["is not on a bpffs", "mount -t bpf bpf"]);
}
