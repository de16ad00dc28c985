//! Shared test helpers: root check (fails loudly), network namespaces, the real mesh-cni
//! binary, a ztunnel-side ZDS client, and one bounded `eventually`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: each test binary uses a subset; a panic is a test failure"
)]

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redirect_agent::zds::{SeqpacketConn, decode_request, encode_ack};
use xds_proto::workload::zds::workload_request::Payload;

/// How long anything may take to happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Panics (never skips) when not root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (network namespaces, nftables); run it as root"
    );
}

/// Polls `f` until it holds or [`PATIENCE`] runs out.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside a netns.
pub fn in_ns(ns: &Path, program: &str, args: &[&str]) -> String {
    let mut full = vec![format!("--net={}", ns.display()), program.to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    sh("nsenter", &full)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace with `lo` up and a veth `eth0` holding `ip/24`; deleted on
/// drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    pub ip: IpAddr,
}

impl Netns {
    pub fn new(ip: &str) -> Self {
        let name = format!(
            "ra-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        let path = PathBuf::from(format!("/var/run/netns/{name}"));
        let ns = Netns {
            name,
            path,
            ip: ip.parse().unwrap(),
        };
        let path = &ns.path;
        in_ns(path, "ip", &["link", "set", "lo", "up"]);
        // Both ends of the pair stay inside the namespace (no dummy module here).
        in_ns(
            path,
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ],
        );
        in_ns(
            path,
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        in_ns(path, "ip", &["link", "set", "eth0p", "up"]);
        in_ns(path, "ip", &["link", "set", "eth0", "up"]);
        ns
    }

    pub fn fd(&self) -> OwnedFd {
        std::fs::File::open(&self.path).unwrap().into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The `mesh-cni` binary (built by `cargo test -p redirect-agent -p mesh-cni`, or
/// `cargo build -p mesh-cni`), next to this test's target dir.
pub fn mesh_cni_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> → target/debug/mesh-cni
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("mesh-cni"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p mesh-cni, or test with -p mesh-cni)",
        bin.display()
    );
    bin
}

/// Runs the real plugin for a pod. Returns (success, stdout).
pub fn run_cni(
    command: &str,
    socket: &Path,
    netns: &Path,
    pod: (&str, &str, &str),
    ips: &[&str],
) -> (bool, String) {
    let (namespace, name, uid) = pod;
    let ips_json: Vec<String> = ips
        .iter()
        .map(|ip| format!(r#"{{"address":"{ip}/24"}}"#))
        .collect();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"mesh-cni","agent_socket":"{}","prevResult":{{"cniVersion":"1.0.0","ips":[{}]}}}}"#,
        socket.display(),
        ips_json.join(",")
    );
    let mut child = Command::new(mesh_cni_bin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("sandbox-{uid}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ztunnel side of ZDS.
pub struct Ztunnel(pub SeqpacketConn);

impl Ztunnel {
    /// Connects and says hello.
    pub async fn connect(path: &Path) -> Self {
        let z = Ztunnel(SeqpacketConn::connect(path).unwrap());
        z.0.send(&[0x08, 0x01], &[]).await.unwrap();
        z
    }

    /// The next message from the agent.
    pub async fn next(&self) -> (Payload, Vec<OwnedFd>) {
        let (data, fds) = tokio::time::timeout(PATIENCE, self.0.recv_with_fds())
            .await
            .expect("no ZDS message from the agent in time")
            .unwrap()
            .expect("agent closed the ZDS connection");
        (decode_request(&data).unwrap(), fds)
    }

    pub async fn ack(&self, error: &str) {
        self.0.send(&encode_ack(error), &[]).await.unwrap();
    }

    /// Acks the whole snapshot; returns (uid, netns fd) of its Adds.
    pub async fn take_snapshot(&self) -> Vec<(String, Option<OwnedFd>)> {
        let mut out = Vec::new();
        loop {
            let (p, mut fds) = self.next().await;
            self.ack("").await;
            match p {
                Payload::Add(a) => out.push((a.uid, fds.pop())),
                Payload::Keep(k) => out.push((k.uid, None)),
                Payload::SnapshotSent(_) => return out,
                other => panic!("unexpected in snapshot: {other:?}"),
            }
        }
    }
}

/// (device, inode) of a netns fd or path: equal means same netns.
pub fn ns_id(fd: &OwnedFd) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::File::from(fd.try_clone().unwrap())
        .metadata()
        .unwrap();
    (m.dev(), m.ino())
}
