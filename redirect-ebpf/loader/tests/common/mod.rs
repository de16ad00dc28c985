//! Fixture for the program tests: a fresh cgroup, a pin dir on bpffs, netns, and
//! `redirect-ebpf-probe` child processes placed in a netns and (optionally) the cgroup.
//! Everything is removed on drop, also when the test panics.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use redirect_ebpf::{LoaderConfig, Redirector};

const PROBE: &str = env!("CARGO_BIN_EXE_redirect-ebpf-probe");
const CGROUP2_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];
const BPFFS: &str = "/sys/fs/bpf";
/// How long to wait for a child's line before failing the test.
const PATIENCE: Duration = Duration::from_secs(15);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails the test unless running as root: these tests load BPF programs and create netns
/// and cgroups. They never skip.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "redirect-ebpf program tests need root (BPF, cgroups, netns): run `sudo -E cargo test -p redirect-ebpf`"
        );
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_fs(path: &str, magic: nix::sys::statfs::FsType) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == magic)
}

/// The cgroup2 mount point (hybrid layout: /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> &'static str {
    CGROUP2_CANDIDATES
        .into_iter()
        .find(|p| is_fs(p, nix::sys::statfs::CGROUP2_SUPER_MAGIC))
        .expect("no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

/// Mounts bpffs at /sys/fs/bpf unless it already is.
pub fn ensure_bpffs() {
    if !is_fs(BPFFS, nix::sys::statfs::BPF_FS_MAGIC) {
        run("mount", &["-t", "bpf", "bpf", BPFFS]);
    }
}

/// A named network namespace (`ip netns add`).
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    pub fn file(&self) -> File {
        File::open(&self.path).expect("open netns")
    }
}

/// What a probe client printed.
#[derive(Debug, Default)]
pub struct ClientResult {
    pub local: Option<String>,
    pub peer: Option<String>,
    /// The `from=` of the listener that answered.
    pub served_by: Option<String>,
    /// The `local=` the answering listener saw.
    pub served_local: Option<String>,
    pub error: Option<String>,
}

/// A probe listener child.
pub struct Listener {
    pub pid: u32,
    pub addr: String,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    /// The next `ACCEPTED` line as key → value.
    pub fn accepted(&self) -> std::collections::HashMap<String, String> {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("listener {} accepted nothing", self.addr));
        assert!(
            line.starts_with("ACCEPTED "),
            "unexpected listener line: {line}"
        );
        kv(&line)
    }
}

fn kv(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Fixture {
    pub id: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    netns: Vec<Netns>,
    children: Vec<Child>,
}

impl Fixture {
    pub fn new() -> Self {
        require_root();
        ensure_bpffs();
        let id = format!(
            "rt{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let cgroup = Path::new(cgroup2_root()).join(format!("redirect-test-{id}"));
        std::fs::create_dir(&cgroup).expect("create test cgroup");
        let pin_dir = Path::new(BPFFS).join(format!("redirect-test-{id}"));
        Self {
            id,
            cgroup,
            pin_dir,
            netns: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn config(&self) -> LoaderConfig {
        LoaderConfig::new(&self.cgroup, &self.pin_dir)
    }

    pub fn load(&self) -> Redirector {
        Redirector::load(&self.config()).unwrap_or_else(|e| panic!("load: {e}"))
    }

    /// A new netns with lo up.
    pub fn netns(&mut self, suffix: &str) -> Netns {
        let name = format!("{}{suffix}", self.id);
        run("ip", &["netns", "add", &name]);
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        self.netns.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between `a` and `b` with the given CIDR addresses.
    pub fn veth(&self, a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
        a.ip(&[
            "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
        ]);
        for addr in a_addrs {
            a.ip(&["addr", "add", addr, "dev", "va"]);
        }
        for addr in b_addrs {
            b.ip(&["addr", "add", addr, "dev", "vb"]);
        }
        a.ip(&["link", "set", "va", "up"]);
        b.ip(&["link", "set", "vb", "up"]);
    }

    /// `redirect-ebpf-probe <args>` in `ns`, in the test cgroup when `in_cgroup`.
    fn spawn_probe(
        &mut self,
        ns: &Netns,
        in_cgroup: bool,
        args: &[&str],
    ) -> (u32, mpsc::Receiver<String>) {
        let procs = self.cgroup.join("cgroup.procs");
        let script = if in_cgroup {
            format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display())
        } else {
            "exec \"$0\" \"$@\"".to_string()
        };
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path.display()))
            .args(["--", "sh", "-c", &script, PROBE])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn probe");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.children.push(child);
        (pid, rx)
    }

    /// Starts a probe listener and waits until it listens.
    pub fn listen(&mut self, ns: &Netns, in_cgroup: bool, addr: &str, extra: &[&str]) -> Listener {
        let mut args = vec!["listen", addr, "--count", "100"];
        args.extend_from_slice(extra);
        let (pid, lines) = self.spawn_probe(ns, in_cgroup, &args);
        let first = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("listener on {addr} did not start"));
        assert!(
            first.starts_with("LISTENING "),
            "listener on {addr}: {first}"
        );
        Listener {
            pid,
            addr: first.trim_start_matches("LISTENING ").to_string(),
            lines,
        }
    }

    /// Runs a probe client to completion.
    pub fn connect(
        &mut self,
        ns: &Netns,
        in_cgroup: bool,
        addr: &str,
        extra: &[&str],
    ) -> ClientResult {
        let mut args = vec!["connect", addr];
        args.extend_from_slice(extra);
        let (_, lines) = self.spawn_probe(ns, in_cgroup, &args);
        let mut result = ClientResult::default();
        while let Ok(line) = lines.recv_timeout(PATIENCE) {
            if let Some(rest) = line.strip_prefix("CONNECTED ") {
                let kv = kv(rest);
                result.local = kv.get("local").cloned();
                result.peer = kv.get("peer").cloned();
            } else if let Some(rest) = line.strip_prefix("RECEIVED ") {
                let kv = kv(rest);
                result.served_by = kv.get("from").cloned();
                result.served_local = kv.get("local").cloned();
            } else if let Some(rest) = line.strip_prefix("ERROR ") {
                result.error = Some(rest.to_string());
            }
        }
        result
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = Redirector::uninstall(&self.config()) {
            eprintln!("uninstall {}: {e}", self.pin_dir.display());
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        }
        if let Err(e) = std::fs::remove_dir(&self.cgroup) {
            eprintln!("removing {}: {e}", self.cgroup.display());
        }
    }
}
