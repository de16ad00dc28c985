//! Program tests: the real BPF programs attached to a fresh cgroup and pod netns, driven by
//! `redirect-ebpf-probe` processes in that cgroup and netns. Root only (fail, never skip).

#![allow(
    clippy::expect_used,
    reason = "test code: a failed expectation is a test failure"
)]

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd,
};

use common::{Fixture, Netns};
use redirect_ebpf::{LoadError, NetnsCookie, PodNetns, Redirector, find_listener_in_process};

const POD_IP: &str = "10.77.0.2";

/// A pod netns with POD_IP on a veth to a peer netns holding PEER_IP.
fn pod_and_peer(fx: &mut Fixture, pod_extra: &[&str], peer_extra: &[&str]) -> (Netns, Netns) {
    let pod = fx.netns("p");
    let peer = fx.netns("q");
    let mut pod_addrs = vec!["10.77.0.2/24"];
    pod_addrs.extend_from_slice(pod_extra);
    let mut peer_addrs = vec!["10.77.0.1/24"];
    peer_addrs.extend_from_slice(peer_extra);
    fx.veth(&pod, &pod_addrs, &peer, &peer_addrs);
    (pod, peer)
}

fn enroll(redirector: &mut Redirector, ns: &Netns) -> NetnsCookie {
    let file = ns.file();
    redirector
        .enroll(&PodNetns {
            netns: file.as_fd(),
            ipv4: vec![POD_IP.parse().expect("ip")],
            ipv6: vec![],
        })
        .unwrap_or_else(|e| panic!("enroll: {e}"))
        .cookie
}

#[test]
fn outbound_connect_is_redirected_and_original_dst_answered() {
    let mut fx = Fixture::new();
    let (pod, _peer) = pod_and_peer(&mut fx, &[], &[]);
    let mut redirector = fx.load();
    let cookie = enroll(&mut redirector, &pod);

    let proxy = fx.listen(&pod, true, "127.0.0.1:15001", &["--mark", "0x539"]);
    let client = fx.connect(&pod, true, "10.9.9.9:80", &[]);
    assert_eq!(client.error, None, "{client:?}");
    assert_eq!(
        client.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "{client:?}"
    );
    assert_eq!(client.served_by.as_deref(), Some("127.0.0.1:15001"));
    let accepted = proxy.accepted();
    assert_eq!(accepted["origdst"], "10.9.9.9:80", "{accepted:?}");
    assert_eq!(Some(&accepted["peer"]), client.local.as_ref());

    // A second connection gets its own original destination.
    let client = fx.connect(&pod, true, "10.9.9.10:8443", &[]);
    assert_eq!(
        client.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "{client:?}"
    );
    assert_eq!(proxy.accepted()["origdst"], "10.9.9.10:8443");

    let enrolled = redirector.enrolled().expect("enrolled");
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].0, cookie);
    assert_eq!(
        enrolled[0].1.ipv4,
        vec![POD_IP.parse::<Ipv4Addr>().expect("ip")]
    );
}

#[test]
fn outbound_ipv6_and_v4_mapped_connects_are_redirected() {
    let mut fx = Fixture::new();
    let (pod, _peer) = pod_and_peer(&mut fx, &[], &[]);
    pod.ip(&["addr", "add", "fd77::2/64", "dev", "va", "nodad"]);
    let mut redirector = fx.load();
    let file = pod.file();
    redirector
        .enroll(&PodNetns {
            netns: file.as_fd(),
            ipv4: vec![POD_IP.parse().expect("ip")],
            ipv6: vec!["fd77::2".parse().expect("ip")],
        })
        .expect("enroll");

    let proxy6 = fx.listen(&pod, true, "[::1]:15001", &["--mark", "0x539"]);
    let proxy4 = fx.listen(&pod, true, "127.0.0.1:15001", &["--mark", "0x539"]);

    let client = fx.connect(&pod, true, "[fd00::9]:80", &[]);
    assert_eq!(client.peer.as_deref(), Some("[::1]:15001"), "{client:?}");
    assert_eq!(proxy6.accepted()["origdst"], "[fd00::9]:80");

    // An IPv6 socket connecting to an IPv4-mapped address goes to the IPv4 listener.
    let client = fx.connect(&pod, true, "[::ffff:10.9.9.9]:80", &[]);
    assert_eq!(
        client.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "{client:?}"
    );
    assert_eq!(proxy4.accepted()["origdst"], "10.9.9.9:80");

    // Own IPv6 address: not redirected (refused: nothing listens there).
    let own = fx.connect(&pod, true, "[fd77::2]:7777", &[]);
    assert_eq!(
        own.error.as_deref(),
        Some("connect: connection refused"),
        "{own:?}"
    );
    assert_eq!(
        redirector.enrolled().expect("enrolled")[0].1.ipv6,
        vec!["fd77::2".parse::<std::net::Ipv6Addr>().expect("ip")]
    );
}

#[test]
fn outbound_exclusions_are_not_redirected() {
    let mut fx = Fixture::new();
    let (pod, peer) = pod_and_peer(&mut fx, &[], &[]);
    let other = fx.netns("r");
    other.ip(&["addr", "add", "10.88.0.1/32", "dev", "lo"]);
    let mut redirector = fx.load();
    enroll(&mut redirector, &pod);

    let _proxy = fx.listen(&pod, true, "127.0.0.1:15001", &["--mark", "0x539"]);
    let _pod_app = fx.listen(&pod, false, "0.0.0.0:7777", &[]);
    let _peer_app = fx.listen(&peer, false, "0.0.0.0:7777", &[]);
    let _peer_dns = fx.listen(&peer, false, "0.0.0.0:53", &[]);
    let _other_app = fx.listen(&other, false, "0.0.0.0:7777", &[]);

    // Control: the same connect without any exclusion is captured.
    let captured = fx.connect(&pod, true, "10.77.0.1:7777", &[]);
    assert_eq!(
        captured.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "{captured:?}"
    );

    let cases: [(&str, &Netns, &str, &[&str]); 5] = [
        ("marked 0x539", &pod, "10.77.0.1:7777", &["--mark", "0x539"]),
        ("loopback", &pod, "127.0.0.1:7777", &[]),
        ("port 53", &pod, "10.77.0.1:53", &[]),
        ("own pod IP", &pod, "10.77.0.2:7777", &[]),
        ("netns not enrolled", &other, "10.88.0.1:7777", &[]),
    ];
    for (what, ns, addr, extra) in cases {
        let client = fx.connect(ns, true, addr, extra);
        assert_eq!(client.error, None, "{what}: {client:?}");
        assert_eq!(client.peer.as_deref(), Some(addr), "{what}: {client:?}");
    }
}

#[test]
fn unenroll_stops_redirecting() {
    let mut fx = Fixture::new();
    let (pod, peer) = pod_and_peer(&mut fx, &[], &[]);
    let mut redirector = fx.load();
    let cookie = enroll(&mut redirector, &pod);
    // Enrolling twice is a no-op.
    assert_eq!(enroll(&mut redirector, &pod), cookie);
    let _proxy = fx.listen(&pod, true, "127.0.0.1:15001", &["--mark", "0x539"]);
    let _peer_app = fx.listen(&peer, false, "0.0.0.0:7777", &[]);

    let before = fx.connect(&pod, true, "10.77.0.1:7777", &[]);
    assert_eq!(
        before.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "{before:?}"
    );

    redirector.unenroll(cookie).expect("unenroll");
    redirector.unenroll(cookie).expect("unenroll is idempotent");
    assert!(redirector.enrolled().expect("enrolled").is_empty());
    assert!(
        !fx.pin_dir
            .join(format!("links/sk_lookup-{}", cookie.0))
            .exists()
    );
    let after = fx.connect(&pod, true, "10.77.0.1:7777", &[]);
    assert_eq!(after.peer.as_deref(), Some("10.77.0.1:7777"), "{after:?}");
    assert_eq!(after.served_by.as_deref(), Some("0.0.0.0:7777"));
}

#[test]
fn inbound_is_assigned_to_the_proxy_listener_with_exclusions() {
    let mut fx = Fixture::new();
    // 10.77.0.3: a second pod-side address (source of the proxy's bypass connects);
    // 10.77.0.5: a "node" address on the peer side (kubelet probes).
    let (pod, peer) = pod_and_peer(&mut fx, &["10.77.0.3/24"], &["10.77.0.5/24"]);
    pod.ip(&["addr", "add", "fd77::2/64", "dev", "va", "nodad"]);
    peer.ip(&["addr", "add", "fd77::1/64", "dev", "vb", "nodad"]);
    let mut redirector = fx.load();
    let file = pod.file();
    let cookie = redirector
        .enroll(&PodNetns {
            netns: file.as_fd(),
            ipv4: vec![POD_IP.parse().expect("ip")],
            ipv6: vec!["fd77::2".parse().expect("ip")],
        })
        .expect("enroll")
        .cookie;
    redirector
        .set_node_addrs(&[IpAddr::from([10, 77, 0, 5])])
        .expect("node addrs");

    let _app = fx.listen(&pod, false, "0.0.0.0:8080", &[]);
    let _hbone = fx.listen(&pod, false, "0.0.0.0:15008", &[]);

    // Enrolled, no proxy listener yet: refused even though the app listens (fail closed).
    let refused = fx.connect(&peer, false, "10.77.0.2:8080", &[]);
    assert_eq!(
        refused.error.as_deref(),
        Some("connect: connection refused"),
        "{refused:?}"
    );

    // The proxy's 15006 listener, taken from its process like the agent does.
    let proxy = fx.listen(&pod, true, "[::]:15006", &["--mark", "0x539"]);
    let listener = find_listener_in_process(proxy.pid, cookie, 15006).expect("find listener");
    let wrong_port = find_listener_in_process(proxy.pid, cookie, 15007);
    assert!(wrong_port.is_err(), "{wrong_port:?}");
    redirector
        .set_inbound_listener(cookie, listener.as_fd())
        .expect("set listener");
    drop(listener);

    for addr in ["10.77.0.2:8080", "10.77.0.2:9999", "[fd77::2]:8080"] {
        let client = fx.connect(&peer, false, addr, &[]);
        assert_eq!(client.error, None, "{addr}: {client:?}");
        assert_eq!(
            client.served_by.as_deref(),
            Some("[::]:15006"),
            "{addr}: {client:?}"
        );
        assert_eq!(client.served_local.as_deref(), Some(addr), "{client:?}");
        let accepted = proxy.accepted();
        assert_eq!(
            accepted["local"], addr,
            "getsockname is the original destination"
        );
        assert_eq!(Some(&accepted["peer"]), client.local.as_ref());
    }

    // (what, client netns, client in the cgroup, destination, client flags, expected listener)
    type Case<'a> = (&'a str, &'a Netns, bool, &'a str, &'a [&'a str], &'a str);
    let cases: [Case<'_>; 3] = [
        (
            "HBONE port",
            &peer,
            false,
            "10.77.0.2:15008",
            &[],
            "0.0.0.0:15008",
        ),
        (
            "node address",
            &peer,
            false,
            "10.77.0.2:8080",
            &["--bind", "10.77.0.5"],
            "0.0.0.0:8080",
        ),
        (
            "proxy to app (marked, bypass)",
            &pod,
            true,
            "10.77.0.2:8080",
            &["--mark", "0x539", "--bind", "10.77.0.3"],
            "0.0.0.0:8080",
        ),
    ];
    for (what, ns, in_cgroup, addr, extra, want) in cases {
        let client = fx.connect(ns, in_cgroup, addr, extra);
        assert_eq!(client.error, None, "{what}: {client:?}");
        assert_eq!(
            client.served_by.as_deref(),
            Some(want),
            "{what}: {client:?}"
        );
    }
    // The same connect from the pod without the mark is captured.
    let unmarked = fx.connect(&pod, true, "10.77.0.2:8080", &["--bind", "10.77.0.3"]);
    assert_eq!(
        unmarked.served_by.as_deref(),
        Some("[::]:15006"),
        "{unmarked:?}"
    );
    proxy.accepted();

    // Without the listener: refused again.
    redirector.clear_inbound_listener(cookie).expect("clear");
    let refused = fx.connect(&peer, false, "10.77.0.2:8080", &[]);
    assert_eq!(
        refused.error.as_deref(),
        Some("connect: connection refused"),
        "{refused:?}"
    );

    // Unenrolled: the app answers directly.
    redirector.unenroll(cookie).expect("unenroll");
    let direct = fx.connect(&peer, false, "10.77.0.2:8080", &[]);
    assert_eq!(
        direct.served_by.as_deref(),
        Some("0.0.0.0:8080"),
        "{direct:?}"
    );
}

#[test]
fn pinned_state_survives_the_loader() {
    let mut fx = Fixture::new();
    let (pod, peer) = pod_and_peer(&mut fx, &[], &[]);
    let mut first = fx.load();
    let cookie = enroll(&mut first, &pod);
    let link_pin = fx.pin_dir.join("links/connect4");
    let link_id = |path: &std::path::Path| {
        let link = aya::programs::links::PinnedLink::from_pin(path).expect("pinned link");
        aya::programs::links::FdLink::from(link)
            .info()
            .expect("link info")
            .id()
    };
    let id_before = link_id(&link_pin);
    drop(first);

    let _proxy = fx.listen(&pod, true, "127.0.0.1:15001", &["--mark", "0x539"]);
    let _peer_app = fx.listen(&peer, false, "0.0.0.0:7777", &[]);
    let client = fx.connect(&pod, true, "10.77.0.1:7777", &[]);
    assert_eq!(
        client.peer.as_deref(),
        Some("127.0.0.1:15001"),
        "after drop: {client:?}"
    );

    let second = fx.load();
    assert_eq!(
        link_id(&link_pin),
        id_before,
        "the pinned link is kept, not attached again"
    );
    let enrolled = second.enrolled().expect("enrolled");
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(enrolled[0].0, cookie);
    assert_eq!(
        enrolled[0].1.ipv4,
        vec![POD_IP.parse::<Ipv4Addr>().expect("ip")]
    );
    drop(second);

    Redirector::uninstall(&fx.config()).expect("uninstall");
    assert!(!fx.pin_dir.exists());
    let client = fx.connect(&pod, true, "10.77.0.1:7777", &[]);
    assert_eq!(
        client.peer.as_deref(),
        Some("10.77.0.1:7777"),
        "after uninstall: {client:?}"
    );
}

#[test]
fn load_errors_name_the_problem() {
    let fx = Fixture::new();
    let tmp = std::env::temp_dir().join(format!("redirect-test-{}", fx.id));
    std::fs::create_dir_all(&tmp).expect("tmp dir");

    let mut config = fx.config();
    config.pin_dir = tmp.join("pins");
    let err = Redirector::load(&config).expect_err("pin dir on tmpfs");
    assert!(matches!(err, LoadError::NotBpffs { .. }), "{err}");
    assert!(err.to_string().contains("mount -t bpf"), "{err}");

    let mut config = fx.config();
    config.cgroup_path = tmp.clone();
    let err = Redirector::load(&config).expect_err("cgroup path not cgroup2");
    assert!(matches!(err, LoadError::NotCgroup2 { .. }), "{err}");
    assert!(err.to_string().contains("cgroup2"), "{err}");
    std::fs::remove_dir_all(&tmp).expect("remove tmp");
}

#[test]
fn an_address_reused_by_a_new_pod_stays_with_it() {
    let mut fx = Fixture::new();
    let (pod, peer) = pod_and_peer(&mut fx, &[], &[]);
    let old_pod = fx.netns("o");
    let mut redirector = fx.load();
    // The old pod had POD_IP and was not unenrolled before the new pod got it.
    let old = enroll(&mut redirector, &old_pod);
    let new = enroll(&mut redirector, &pod);
    assert_ne!(old, new);
    let _app = fx.listen(&pod, false, "0.0.0.0:8080", &[]);

    redirector.unenroll(old).expect("unenroll old pod");
    // The new pod is still enrolled and has no listener: its inbound stays fail-closed.
    let refused = fx.connect(&peer, false, "10.77.0.2:8080", &[]);
    assert_eq!(
        refused.error.as_deref(),
        Some("connect: connection refused"),
        "{refused:?}"
    );
    let enrolled = redirector.enrolled().expect("enrolled");
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].0, new);
}
