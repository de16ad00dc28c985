//! Host facilities the ambient harness uses: cgroup2 and bpffs mounts, cgroup clean-up,
//! HTTP probes inside a netns, and the netfilter listings.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::super::{NETNS_PREFIX, Node, OrPanic, PATIENCE, eventually};
use super::{BPFFS, BPFFS_MOUNT};

/// `GET path` on `addr` from inside the node's netns: `(status, body)`.
pub fn http_get(node: &Node, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let raw = node.run_in(|| -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {head}")))?;
    Ok((status, body.to_owned()))
}

/// `nft list ruleset` and `iptables-save` run in `netns` (None: this process's own netns,
/// the real host): their combined output.
pub fn netfilter_rules(netns: Option<&Path>) -> String {
    let mut text = String::new();
    let listings: [&[&str]; 2] = [&["nft", "list", "ruleset"], &["iptables-save"]];
    for args in listings {
        let mut cmd = Command::new("nsenter");
        match netns {
            Some(path) => cmd.arg(format!("--net={}", path.display())),
            // This process's own netns: the real host.
            None => cmd.arg("--net=/proc/self/ns/net"),
        };
        let out: Output = cmd
            .arg("--")
            .args(args)
            .output()
            .or_panic(|| format!("running {args:?} (apt packages nftables, iptables)"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text
}

/// The cgroup v2 directory process `pid` belongs to (from `/proc/<pid>/cgroup`).
pub fn cgroup_of(pid: u32) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .or_panic(|| format!("reading /proc/{pid}/cgroup"));
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("process {pid} has no cgroup v2 entry: {text}"));
    cgroup2_mount().join(relative.trim_start_matches('/'))
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on
/// a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .or_panic(|| "reading /proc/self/mountinfo".to_owned());
    let mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    let preferred = [
        Path::new("/sys/fs/cgroup"),
        Path::new("/sys/fs/cgroup/unified"),
    ];
    preferred
        .iter()
        .find(|p| mounts.iter().any(|m| m == *p))
        .map(|p| p.to_path_buf())
        .or_else(|| mounts.first().cloned())
        .unwrap_or_else(|| panic!("no cgroup2 filesystem is mounted (the eBPF capture needs one)"))
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|line| {
            let mut left = line
                .split(" - ")
                .next()
                .unwrap_or_default()
                .split_whitespace();
            let right = line.split(" - ").nth(1).unwrap_or_default();
            left.nth(4) == Some(BPFFS) && right.starts_with("bpf ")
        })
    })
}

/// Mounts bpffs at /sys/fs/bpf unless it already is.
pub(super) fn mount_bpffs() {
    BPFFS_MOUNT.call_once(|| {
        if bpffs_mounted() {
            return;
        }
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf", BPFFS])
            .output()
            .or_panic(|| "running mount -t bpf".to_owned());
        // Another process may have mounted it meanwhile.
        assert!(
            out.status.success() || bpffs_mounted(),
            "mount -t bpf bpf {BPFFS} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Kills the processes left in `dir` and its sub-cgroups (all started by this harness),
/// then removes the cgroups, deepest first.
pub(super) fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let procs = || fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    eventually(PATIENCE, || procs().trim().is_empty());
    if let Err(err) = fs::remove_dir(dir) {
        eprintln!("ambient harness: removing cgroup {}: {err}", dir.display());
    }
}

/// Removes cgroups and pin directories of dead earlier runs (`ztt-<pid>-…`).
pub(super) fn cleanup_stale_ambient() {
    let dead = |name: &str| {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            return false;
        };
        rest.split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let stale = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| dead(&e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for dir in stale(&cgroup2_mount()) {
        remove_cgroup_tree(&dir);
    }
    for dir in stale(Path::new(BPFFS)) {
        let _ = fs::remove_dir_all(dir);
    }
}
