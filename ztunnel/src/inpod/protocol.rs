//! The client side of ZDS as a pure state machine (reference §3.2): it decodes each request,
//! checks it against where the connection is (before or after `SnapshotSent`) and the
//! descriptors that came with it, and says what to do. No I/O: the caller sends the answers.

use std::collections::HashSet;

use prost::Message;
use xds_proto::workload::zds;

use crate::config::WorkloadInfo;

/// The first message ztunnel sends on a connection: `ZdsHello{version: V1}`.
pub fn hello() -> Vec<u8> {
    zds::ZdsHello {
        version: zds::Version::V1 as i32,
    }
    .encode_to_vec()
}

/// `WorkloadResponse{ack: Ack{error}}`: an ack when `error` is empty, else a nack.
pub fn ack(error: &str) -> Vec<u8> {
    zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
            error: error.to_string(),
        })),
    }
    .encode_to_vec()
}

/// What the caller does with one request.
#[derive(Debug)]
pub enum Step<F> {
    /// Start (or keep) the proxy of `uid` in the netns `netns`; ack if that works, nack (and
    /// keep the pod pending) if not.
    Add {
        /// Pod uid.
        uid: String,
        /// Its workload.
        info: WorkloadInfo,
        /// Its netns fd.
        netns: F,
    },
    /// Before the snapshot ends: the agent keeps `uid` (no fd); ack.
    Keep {
        /// Pod uid.
        uid: String,
    },
    /// Before the snapshot ends: forget `uid` if pending (a running proxy goes at
    /// reconciliation, as it is no longer in the snapshot); ack.
    DelBeforeSnapshot {
        /// Pod uid.
        uid: String,
    },
    /// After the snapshot: drain `uid`'s proxy now; ack.
    Del {
        /// Pod uid.
        uid: String,
    },
    /// The snapshot ended: drain every proxy whose uid is not in `seen`; ack.
    Reconcile {
        /// The uids the agent named (Add or Keep, minus Del) during the snapshot.
        seen: HashSet<String>,
    },
    /// A protocol error: nack with `error`, then disconnect.
    Reject {
        /// Why.
        error: String,
    },
}

/// Where a connection is.
#[derive(Debug, Default)]
pub struct ClientProtocol {
    snapshot_done: bool,
    seen: HashSet<String>,
}

impl ClientProtocol {
    /// A fresh connection (the Hello is sent by the caller).
    pub fn new() -> ClientProtocol {
        ClientProtocol::default()
    }

    /// Whether `SnapshotSent` arrived on this connection.
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// Decides what to do with the datagram `bytes` that came with `fds`. Descriptors not
    /// handed back in [`Step::Add`] are dropped (closed) here.
    pub fn on_request<F>(&mut self, bytes: &[u8], mut fds: Vec<F>) -> Step<F> {
        let reject = |error: String| Step::Reject { error };
        let request = match zds::WorkloadRequest::decode(bytes) {
            Ok(r) => r,
            Err(e) => return reject(format!("undecodable WorkloadRequest: {e}")),
        };
        use zds::workload_request::Payload;
        let Some(payload) = request.payload else {
            return reject("WorkloadRequest without a payload".into());
        };
        if !matches!(payload, Payload::Add(_)) && !fds.is_empty() {
            return reject(format!(
                "{} descriptor(s) on a message that is not AddWorkload",
                fds.len()
            ));
        }
        match payload {
            Payload::Add(add) => {
                if add.uid.is_empty() {
                    return reject("AddWorkload without a uid".into());
                }
                let Some(info) = add.workload_info else {
                    return reject(format!("AddWorkload {} without workload_info", add.uid));
                };
                if fds.len() != 1 {
                    return reject(format!(
                        "AddWorkload {} must carry exactly one netns fd, got {}",
                        add.uid,
                        fds.len()
                    ));
                }
                let Some(netns) = fds.pop() else {
                    return reject("netns fd missing".into());
                };
                if info.name.is_empty() || info.namespace.is_empty() {
                    return reject(format!(
                        "AddWorkload {}: workload_info needs a name and a namespace",
                        add.uid
                    ));
                }
                if !self.snapshot_done {
                    self.seen.insert(add.uid.clone());
                }
                Step::Add {
                    uid: add.uid,
                    info: WorkloadInfo {
                        namespace: info.namespace,
                        name: info.name,
                        service_account: info.service_account,
                    },
                    netns,
                }
            }
            Payload::Keep(keep) => {
                if self.snapshot_done {
                    return reject(format!(
                        "KeepWorkload {} after SnapshotSent (only legal in the snapshot)",
                        keep.uid
                    ));
                }
                self.seen.insert(keep.uid.clone());
                Step::Keep { uid: keep.uid }
            }
            Payload::Del(del) => {
                if self.snapshot_done {
                    Step::Del { uid: del.uid }
                } else {
                    self.seen.remove(&del.uid);
                    Step::DelBeforeSnapshot { uid: del.uid }
                }
            }
            Payload::SnapshotSent(_) => {
                if self.snapshot_done {
                    return reject("second SnapshotSent on one connection".into());
                }
                self.snapshot_done = true;
                Step::Reconcile {
                    seen: std::mem::take(&mut self.seen),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use zds::workload_request::Payload;

    use super::*;

    fn req(p: Payload) -> Vec<u8> {
        zds::WorkloadRequest { payload: Some(p) }.encode_to_vec()
    }

    fn add(uid: &str, info: bool) -> Vec<u8> {
        req(Payload::Add(zds::AddWorkload {
            uid: uid.into(),
            workload_info: info.then(|| zds::WorkloadInfo {
                name: "n".into(),
                namespace: "ns".into(),
                service_account: "sa".into(),
            }),
        }))
    }

    fn keep(uid: &str) -> Vec<u8> {
        req(Payload::Keep(zds::KeepWorkload { uid: uid.into() }))
    }

    fn del(uid: &str) -> Vec<u8> {
        req(Payload::Del(zds::DelWorkload { uid: uid.into() }))
    }

    fn snap() -> Vec<u8> {
        req(Payload::SnapshotSent(zds::SnapshotSent {}))
    }

    #[test]
    fn wire_bytes() {
        assert_eq!(hello(), [0x08, 0x01]);
        assert_eq!(ack(""), [0x0a, 0x00]);
        assert_eq!(ack("x"), [0x0a, 0x03, 0x0a, 0x01, b'x']);
    }

    #[test]
    fn snapshot_sequence() {
        let mut p = ClientProtocol::new();
        assert!(matches!(
            p.on_request(&add("a", true), vec![1]),
            Step::Add { netns: 1, .. }
        ));
        assert!(matches!(
            p.on_request::<i32>(&keep("b"), vec![]),
            Step::Keep { .. }
        ));
        assert!(matches!(
            p.on_request::<i32>(&keep("c"), vec![]),
            Step::Keep { .. }
        ));
        assert!(matches!(
            p.on_request::<i32>(&del("c"), vec![]),
            Step::DelBeforeSnapshot { .. }
        ));
        match p.on_request::<i32>(&snap(), vec![]) {
            Step::Reconcile { seen } => {
                assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]))
            }
            other => panic!("{other:?}"),
        }
        assert!(p.snapshot_done());
        assert!(matches!(
            p.on_request(&add("d", true), vec![1]),
            Step::Add { .. }
        ));
        assert!(matches!(
            p.on_request::<i32>(&del("a"), vec![]),
            Step::Del { .. }
        ));
    }

    #[test]
    fn protocol_errors() {
        let rejected = |p: &mut ClientProtocol, bytes: &[u8], fds: Vec<i32>| {
            matches!(p.on_request(bytes, fds), Step::Reject { .. })
        };
        let mut p = ClientProtocol::new();
        assert!(rejected(&mut p, &add("a", true), vec![]), "add without fd");
        assert!(
            rejected(&mut p, &add("a", true), vec![1, 2]),
            "add with two fds"
        );
        assert!(
            rejected(&mut p, &add("a", false), vec![1]),
            "add without info"
        );
        assert!(rejected(&mut p, &keep("a"), vec![1]), "fd on keep");
        assert!(rejected(&mut p, &[0xff, 0xff], vec![]), "garbage");
        assert!(rejected(&mut p, &[], vec![]), "no payload");
        assert!(!rejected(&mut p, &snap(), vec![]));
        assert!(rejected(&mut p, &snap(), vec![]), "second snapshot");
        assert!(rejected(&mut p, &keep("a"), vec![]), "keep after snapshot");
        assert!(rejected(&mut p, &del("a"), vec![3]), "fd on del");
    }
}
