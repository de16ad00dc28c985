//! The nftables fallback in a real network namespace: the table appears inside the pod netns
//! only, outbound TCP really lands on 127.0.0.1:15001, and unenroll removes everything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use common::{Netns, in_ns, require_root, sh};
use redirect_agent::redirect::{NftRedirection, PodNet, Redirection};

/// Runs `f` on a thread that entered `ns` (setns affects only that thread).
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let fd = ns.fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn nft_rules_in_pod_netns_only_and_outbound_capture_works() {
    require_root();
    let host_before = sh("nft", &["list", "ruleset"]);
    let ns = Netns::new("10.77.0.2");
    let fd = ns.fd();
    let ips = [ns.ip];
    let pod = PodNet {
        uid: "uid-nft",
        netns_path: &ns.path,
        netns: Some(fd.as_fd()),
        ips: &ips,
    };
    let mut r = NftRedirection::new();
    r.set_node_addresses(&["10.77.0.1".parse().unwrap()])
        .unwrap();
    r.enroll(&pod).unwrap();
    // Idempotent (agent restart re-enrolls).
    r.enroll(&pod).unwrap();

    let rules = in_ns(&ns.path, "nft", &["list", "ruleset"]);
    assert!(rules.contains("table inet mesh_redirect"), "{rules}");
    assert!(rules.contains("redirect to :15001"), "{rules}");
    assert!(rules.contains("redirect to :15006"), "{rules}");
    assert!(rules.contains("10.77.0.1"), "node address set: {rules}");
    assert_eq!(rules.matches("table inet mesh_redirect").count(), 1);
    let ip_rules = in_ns(&ns.path, "ip", &["rule", "show"]);
    assert_eq!(
        ip_rules.matches("fwmark 0x111/0xfff lookup 100").count(),
        1,
        "{ip_rules}"
    );
    let table = in_ns(&ns.path, "ip", &["route", "show", "table", "100"]);
    assert!(table.contains("local default dev lo"), "{table}");
    assert_eq!(
        sh("nft", &["list", "ruleset"]),
        host_before,
        "host netns untouched"
    );

    // An app connecting anywhere (here: a neighbour that does not exist) reaches the proxy's
    // 127.0.0.1:15001 listener instead.
    let got = in_netns(&ns, || {
        let proxy = TcpListener::bind("127.0.0.1:15001").unwrap();
        let dst: SocketAddr = "10.77.0.99:8080".parse().unwrap();
        let mut app = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        let (mut accepted, _) = proxy.accept().unwrap();
        std::io::Write::write_all(&mut app, b"hi").unwrap();
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&got, b"hi");

    r.unenroll(&pod).unwrap();
    let rules = in_ns(&ns.path, "nft", &["list", "ruleset"]);
    assert!(!rules.contains("mesh_redirect"), "{rules}");
    let ip_rules = in_ns(&ns.path, "ip", &["rule", "show"]);
    assert!(!ip_rules.contains("lookup 100"), "{ip_rules}");
    // Unenrolling twice is fine.
    r.unenroll(&pod).unwrap();
}
