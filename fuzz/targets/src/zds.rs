//! ZDS requests from the node agent, as ztunnel's shared mode reads them.

use ztunnel::inpod::protocol::{ClientProtocol, Step};

/// Input: a sequence of datagrams, each `[fd count (low 2 bits)] [len] [len bytes]`, fed
/// through one connection's [`ClientProtocol`]. Checks: never panics; an `Add` always has a
/// uid, a name, a namespace and exactly the one descriptor it was given; a reconciliation
/// happens at most once per connection; after a `Reject` the connection is over.
pub fn zds_request(data: &[u8]) {
    let mut protocol = ClientProtocol::new();
    let mut rest = data;
    let mut reconciled = false;
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        // Stand-in descriptors: numbered, so the one handed back can be checked.
        let fds: Vec<u32> = (0..u32::from(head & 3)).collect();
        let given = fds.len();
        match protocol.on_request(datagram, fds) {
            Step::Add { uid, info, netns } => {
                assert!(!uid.is_empty(), "Add without uid accepted");
                assert!(!info.name.is_empty() && !info.namespace.is_empty());
                assert_eq!(given, 1, "Add accepted with {given} descriptors");
                assert_eq!(netns, 0);
            }
            Step::Reconcile { .. } => {
                assert!(!reconciled, "second SnapshotSent accepted");
                reconciled = true;
                assert!(protocol.snapshot_done());
            }
            Step::Keep { .. } | Step::DelBeforeSnapshot { .. } => {
                assert!(!protocol.snapshot_done(), "snapshot-only message after it");
                assert_eq!(given, 0);
            }
            Step::Del { .. } => assert_eq!(given, 0),
            Step::Reject { error } => {
                assert!(!error.is_empty());
                return;
            }
        }
    }
}
