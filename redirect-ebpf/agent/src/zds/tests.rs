//! ZDS server tests against a ztunnel-side client on a real SOCK_SEQPACKET socket.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use xds_proto::workload::zds::workload_request::Payload;

use super::*;

const GOLDEN: &str = include_str!("../../../../proto/xds/testdata/zds/golden-exchange.txt");
const PATIENCE: Duration = Duration::from_secs(5);

struct Harness {
    hub: ZdsHub,
    events: mpsc::UnboundedReceiver<ZdsEvent>,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zds.sock");
        // A stale socket file from an earlier run is replaced.
        std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let hub = ZdsHub::new(Arc::new(move |e| {
            let _ = tx.send(e);
        }));
        let listener = bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(hub.clone().serve(listener, shutdown.clone()));
        Harness {
            hub,
            events,
            path,
            shutdown,
            _dir: dir,
        }
    }

    async fn event(&mut self) -> ZdsEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no ZDS event in time")
            .expect("event channel closed")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The ztunnel side.
struct Ztunnel(SeqpacketConn);

impl Ztunnel {
    async fn connect(path: &Path) -> Self {
        let z = Ztunnel(SeqpacketConn::connect(path).unwrap());
        z.0.send(&[0x08, 0x01], &[]).await.unwrap();
        z
    }
    async fn next(&self) -> (Payload, Vec<OwnedFd>) {
        let (data, fds) = tokio::time::timeout(PATIENCE, self.0.recv_with_fds())
            .await
            .expect("no message from the agent in time")
            .unwrap()
            .expect("agent closed the connection");
        (decode_request(&data).unwrap(), fds)
    }
    async fn ack(&self, error: &str) {
        self.0.send(&encode_ack(error), &[]).await.unwrap();
    }
    /// Answers the snapshot with acks; returns the uids in it.
    async fn take_snapshot(&self) -> Vec<String> {
        let mut uids = Vec::new();
        loop {
            let (p, _) = self.next().await;
            self.ack("").await;
            match p {
                Payload::Add(a) => uids.push(a.uid),
                Payload::Keep(k) => uids.push(k.uid),
                Payload::SnapshotSent(_) => return uids,
                other => panic!("unexpected in snapshot: {other:?}"),
            }
        }
    }
}

fn own_netns() -> Arc<OwnedFd> {
    Arc::new(std::fs::File::open("/proc/self/ns/net").unwrap().into())
}

fn pod(uid: &str, netns: Option<Arc<OwnedFd>>) -> ZdsPod {
    ZdsPod {
        uid: uid.into(),
        info: WorkloadInfo {
            name: "client".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
        },
        netns,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn inode(fd: &OwnedFd) -> (u64, u64) {
    let f = std::fs::File::from(fd.try_clone().unwrap());
    let m = f.metadata().unwrap();
    (m.dev(), m.ino())
}

/// Drives the server through the golden exchange: every agent datagram must match byte for
/// byte (and carry exactly the listed number of fds), answered with the golden ztunnel ones.
#[tokio::test]
async fn golden_exchange() {
    let mut h = Harness::start();
    let netns = own_netns();
    assert_eq!(
        h.hub.add(pod("pod-uid-1", Some(netns.clone()))),
        AddDispatch::NoProxy
    );
    assert_eq!(h.hub.add(pod("pod-uid-2", None)), AddDispatch::NoProxy);

    let conn = SeqpacketConn::connect(&h.path).unwrap();
    let mut steps = 0;
    let mut ready = false;
    for line in GOLDEN.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (dir, fds, bytes) = (parts[0], parts[1].parse::<usize>().unwrap(), hex(parts[2]));
        match dir {
            "z>a" => conn.send(&bytes, &[]).await.unwrap(),
            "a>z" => {
                if let Ok(Payload::Del(d)) = decode_request(&bytes) {
                    // The stream part: trigger the Del once the snapshot is done.
                    if !ready {
                        assert!(matches!(h.event().await, ZdsEvent::Ready { .. }));
                        ready = true;
                    }
                    h.hub.del(&d.uid);
                }
                let (got, got_fds) = tokio::time::timeout(PATIENCE, conn.recv_with_fds())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert_eq!(got, bytes, "datagram {steps}: {line}");
                assert_eq!(got_fds.len(), fds, "fd count of datagram {steps}: {line}");
                for fd in &got_fds {
                    assert_eq!(inode(fd), inode(&netns), "the fd is the pod's netns");
                }
            }
            other => panic!("bad direction {other}"),
        }
        steps += 1;
    }
    assert_eq!(steps, 9);
    assert_eq!(h.hub.stats().nacks(), 0);
}

#[tokio::test]
async fn nack_is_counted_and_reported() {
    let mut h = Harness::start();
    let z = Ztunnel::connect(&h.path).await;
    assert!(z.take_snapshot().await.is_empty());
    let ZdsEvent::Ready { conn, pid, acked } = h.event().await else {
        panic!()
    };
    assert_eq!(pid, std::process::id() as i32);
    assert!(acked.is_empty());

    assert_eq!(
        h.hub.add(pod("p1", Some(own_netns()))),
        AddDispatch::Sent(conn)
    );
    let (p, fds) = z.next().await;
    assert!(matches!(p, Payload::Add(ref a) if a.uid == "p1"));
    assert_eq!(fds.len(), 1);
    z.ack("bind: address in use").await;
    let ev = h.event().await;
    assert!(
        matches!(&ev, ZdsEvent::AddResult { uid, result: Err(e), .. } if uid == "p1" && e.contains("address in use")),
        "{ev:?}"
    );
    assert_eq!(h.hub.stats().nacks(), 1);
    // The connection survives a nack: a retry is acked.
    h.hub.add(pod("p1", Some(own_netns())));
    let _ = z.next().await;
    z.ack("").await;
    assert_eq!(
        h.event().await,
        ZdsEvent::AddResult {
            uid: "p1".into(),
            conn,
            result: Ok(pid)
        }
    );
}

#[tokio::test]
async fn adds_go_to_newest_dels_to_all_and_disconnect_is_noticed() {
    let mut h = Harness::start();
    h.hub.add(pod("p0", Some(own_netns())));
    let old = Ztunnel::connect(&h.path).await;
    assert_eq!(old.take_snapshot().await, vec!["p0"]);
    let ZdsEvent::Ready {
        conn: c1, acked, ..
    } = h.event().await
    else {
        panic!()
    };
    assert_eq!(acked, vec!["p0"]);
    let new = Ztunnel::connect(&h.path).await;
    assert_eq!(new.take_snapshot().await, vec!["p0"]);
    let ZdsEvent::Ready { conn: c2, .. } = h.event().await else {
        panic!()
    };
    assert!(c2 > c1);
    assert_eq!(h.hub.newest().map(|(c, _)| c), Some(c2));

    // Add: only the newest.
    assert_eq!(
        h.hub.add(pod("p1", Some(own_netns()))),
        AddDispatch::Sent(c2)
    );
    let (p, _) = new.next().await;
    assert!(matches!(p, Payload::Add(ref a) if a.uid == "p1"));
    new.ack("").await;
    assert!(
        matches!(h.event().await, ZdsEvent::AddResult { conn, result: Ok(_), .. } if conn == c2)
    );

    // Del: both (the old one gets nothing else first: its next message is the Del).
    h.hub.del("p0");
    for z in [&old, &new] {
        let (p, fds) = z.next().await;
        assert!(matches!(p, Payload::Del(ref d) if d.uid == "p0"), "{p:?}");
        assert!(fds.is_empty());
        z.ack("").await;
    }

    // The newest disconnects: it is dropped, and Adds go to the remaining one.
    drop(new);
    assert_eq!(h.event().await, ZdsEvent::Closed { conn: c2 });
    assert_eq!(h.hub.connections().len(), 1);
    assert_eq!(
        h.hub.add(pod("p2", Some(own_netns()))),
        AddDispatch::Sent(c1)
    );
    let (p, _) = old.next().await;
    assert!(matches!(p, Payload::Add(ref a) if a.uid == "p2"));
}

#[tokio::test]
async fn bad_hello_and_unsolicited_messages_drop_the_connection() {
    let mut h = Harness::start();
    // Version NOT_USED.
    let z = SeqpacketConn::connect(&h.path).unwrap();
    z.send(&[0x08, 0x00], &[]).await.unwrap();
    assert!(
        tokio::time::timeout(PATIENCE, z.recv())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );

    let z = Ztunnel::connect(&h.path).await;
    z.take_snapshot().await;
    let ZdsEvent::Ready { conn, .. } = h.event().await else {
        panic!()
    };
    z.ack("").await; // nobody asked
    assert_eq!(h.event().await, ZdsEvent::Closed { conn });
    assert!(h.hub.connections().is_empty());
}

#[tokio::test]
async fn a_pod_added_during_the_snapshot_reaches_the_new_connection() {
    let mut h = Harness::start();
    h.hub.add(pod("p0", Some(own_netns())));
    let z = Ztunnel::connect(&h.path).await;
    let (p, _) = z.next().await;
    assert!(matches!(p, Payload::Add(ref a) if a.uid == "p0"));
    // Mid-snapshot: no ready connection, so the pod waits for this one.
    assert_eq!(
        h.hub.add(pod("p1", Some(own_netns()))),
        AddDispatch::NoProxy
    );
    z.ack("").await;
    let (p, _) = z.next().await;
    assert!(matches!(p, Payload::SnapshotSent(_)));
    z.ack("").await;
    let ZdsEvent::Ready { conn, .. } = h.event().await else {
        panic!()
    };
    let (p, fds) = z.next().await;
    assert!(matches!(p, Payload::Add(ref a) if a.uid == "p1"));
    assert_eq!(fds.len(), 1);
    z.ack("").await;
    assert!(matches!(h.event().await, ZdsEvent::AddResult { conn: c, .. } if c == conn));
    let _ = own_netns().as_fd();
}
