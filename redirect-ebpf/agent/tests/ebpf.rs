//! The agent in eBPF mode with the real loader: a node sub-cgroup and pin dir of its own,
//! a pod in a real netns enrolled through the real `mesh-cni`, the in-pod routing, the
//! sk_lookup link, and inbound plaintext landing on the "ztunnel" 15006 listener the agent
//! took out of this process (SO_PEERCRED pid + pidfd_getfd) after the ZDS ack.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use common::{Netns, Ztunnel, eventually, in_ns, require_root, run_cni};
use redirect_agent::app::{self, Options};
use redirect_agent::config::{Config, detect_cgroup2, env};
use redirect_agent::redirect;
use xds_proto::workload::zds::workload_request::Payload;

struct Node {
    dir: tempfile::TempDir,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    cfg: Config,
}

impl Node {
    fn new() -> Self {
        require_root();
        let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
        if !bpffs {
            common::sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
        }
        let id = format!("ra-agent-{}", std::process::id());
        let cgroup = detect_cgroup2().join(&id);
        std::fs::create_dir_all(&cgroup).unwrap();
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&id);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("registry")).unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let map: HashMap<String, String> = [
            (env::NODE_NAME, "node1".to_string()),
            (env::REDIRECT_MODE, "ebpf".into()),
            (env::ZDS_SOCKET, p("zds.sock")),
            (env::CNI_EVENT_SOCKET, p("cni.sock")),
            (env::STATE_DIR, p("state")),
            (env::LOCAL_DIR, p("registry")),
            (env::READINESS_ADDR, "127.0.0.1:0".into()),
            (env::CGROUP_PATH, cgroup.display().to_string()),
            (env::BPF_PIN_DIR, pin_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cfg = Config::parse(&map, detect_cgroup2).unwrap();
        Node {
            dir,
            cgroup,
            pin_dir,
            cfg,
        }
    }
    fn registry(&self, ambient: bool) {
        let labels = if ambient {
            "{istio.io/dataplane-mode: ambient}"
        } else {
            "{}"
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: mesh, labels: {labels}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: mesh, uid: uid-server}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.79.0.2}}\n"
        );
        let tmp = self.dir.path().join("registry/.o.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.dir.path().join("registry/o.yaml")).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = redirect::uninstall(&self.cfg) {
            eprintln!("uninstall: {e:#}");
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_enrollment_routing_and_inbound_listener() {
    let node = Node::new();
    node.registry(true);
    let pod = Netns::new("10.79.0.2");
    let redirection = redirect::load_ebpf(&node.cfg).unwrap();
    let opts = Options {
        files_poll: Duration::from_millis(50),
        retry_interval: Duration::from_millis(100),
    };
    let agent = app::build(node.cfg.clone(), redirection, opts.clone())
        .await
        .unwrap();
    let ztunnel = Ztunnel::connect(&node.cfg.zds_socket).await;
    assert!(ztunnel.take_snapshot().await.is_empty());
    eventually("ztunnel ready", || agent.hub.newest().is_some()).await;

    let (ok, out) = run_cni(
        "ADD",
        &node.cfg.cni_event_socket,
        &pod.path,
        ("mesh", "server", "uid-server"),
        &["10.79.0.2"],
    );
    assert!(ok, "{out}");
    // In-pod routing for the proxy's spoofed-source connections.
    let rules = in_ns(&pod.path, "ip", &["rule", "show"]);
    assert!(rules.contains("fwmark 0x1539 lookup 100"), "{rules}");
    let accept = in_ns(&pod.path, "sysctl", &["-n", "net.ipv4.tcp_fwmark_accept"]);
    assert_eq!(accept.trim(), "1");
    let cookie = redirect_ebpf::netns_cookie(pod.fd().as_fd()).unwrap();
    let link = node.pin_dir.join(format!("links/sk_lookup-{}", cookie.0));
    assert!(link.exists(), "{} pinned", link.display());

    // "ztunnel" (this process) creates the pod's 15006 listener inside the pod netns, then acks.
    let (p, _fds) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Add(ref a) if a.uid == "uid-server"),
        "{p:?}"
    );
    let fd = pod.fd();
    let listener = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("[::]:15006").unwrap()
        })
        .join()
        .unwrap()
    });
    listener.set_nonblocking(true).unwrap();
    ztunnel.ack("").await;

    // Inbound plaintext to any port of the pod IP now lands on that listener, with the
    // original destination as the accepted socket's local address. (The client uses a
    // second address: a pod talking to itself is not captured.)
    in_ns(
        &pod.path,
        "ip",
        &["addr", "add", "10.79.0.9/32", "dev", "eth0p"],
    );
    let dst: SocketAddr = "10.79.0.2:8080".parse().unwrap();
    let src: SocketAddr = "10.79.0.9:0".parse().unwrap();
    let mut accepted = None;
    let mut clients = Vec::new();
    eventually("inbound connection assigned to the 15006 listener", || {
        let c = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.bind(&src.into()).unwrap();
                s.connect_timeout(&dst.into(), Duration::from_millis(200))
                    .ok()
                    .map(|()| TcpStream::from(s))
            })
            .join()
            .unwrap()
        });
        clients.extend(c);
        if let Ok((s, _)) = listener.accept() {
            accepted = Some(s);
        }
        accepted.is_some()
    })
    .await;
    let accepted = accepted.unwrap();
    let local = accepted.local_addr().unwrap();
    assert_eq!(local.port(), 8080, "{local}");
    assert_eq!(accepted.peer_addr().unwrap().ip().to_canonical(), src.ip());

    // Agent restart: pins, maps and the listener stay; the open connection keeps working,
    // and the reconnecting ztunnel gets the same netns in its snapshot.
    agent.shutdown().await;
    assert!(
        tokio::time::timeout(common::PATIENCE, ztunnel.0.recv())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    let agent = app::build(
        node.cfg.clone(),
        redirect::load_ebpf(&node.cfg).unwrap(),
        opts,
    )
    .await
    .unwrap();
    let ztunnel = Ztunnel::connect(&node.cfg.zds_socket).await;
    let snapshot = ztunnel.take_snapshot().await;
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].0, "uid-server");
    assert_eq!(
        common::ns_id(snapshot[0].1.as_ref().unwrap()),
        common::ns_id(&pod.fd())
    );
    let peer = accepted.peer_addr().unwrap();
    let mut client = clients
        .into_iter()
        .find(|c| {
            let l = c.local_addr().unwrap();
            l.port() == peer.port() && l.ip() == peer.ip().to_canonical()
        })
        .unwrap();
    let mut accepted = accepted;
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    accepted.set_nonblocking(false).unwrap();
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert!(link.exists());

    // Unenrolled at run time: Del, link unpinned, routing removed.
    node.registry(false);
    let (p, _) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Del(ref d) if d.uid == "uid-server"),
        "{p:?}"
    );
    ztunnel.ack("").await;
    eventually("sk_lookup link removed", || !link.exists()).await;
    eventually("in-pod routing removed", || {
        !in_ns(&pod.path, "ip", &["rule", "show"]).contains("lookup 100")
    })
    .await;
    agent.shutdown().await;
}

#[test]
fn load_failure_names_what_is_missing_and_the_fallback() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let map: HashMap<String, String> = [
        (env::NODE_NAME, "node1".to_string()),
        (env::LOCAL_DIR, dir.path().display().to_string()),
        // Not a cgroup2 directory.
        (env::CGROUP_PATH, dir.path().display().to_string()),
        (
            env::BPF_PIN_DIR,
            format!("/sys/fs/bpf/ra-bad-{}", std::process::id()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = Config::parse(&map, detect_cgroup2).unwrap();
    let err = redirect::load_ebpf(&cfg).err().expect("loading must fail");
    let text = format!("{err:#}");
    assert!(text.contains("REDIRECT_MODE=nftables"), "{text}");
    assert!(text.contains("CAP_BPF"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    let _ = redirect::uninstall(&cfg);
}
