use xds_proto::security::Authorization;
use xds_proto::workload::address::Type as AddressType;
use xds_proto::workload::{Address, Workload};
use xds_proto::{ADDRESS_TYPE_URL as A, AUTHORIZATION_TYPE_URL as Z};

use super::*;
use crate::translate::{Versioned, XdsSnapshot};
use crate::xds::prepared::prepare;

fn workload(uid: &str, ip: [u8; 4], version: &str) -> (String, Versioned<Address>) {
    (
        uid.to_string(),
        Versioned {
            version: version.into(),
            resource: Address {
                r#type: Some(AddressType::Workload(Workload {
                    uid: uid.into(),
                    addresses: vec![ip.to_vec()],
                    ..Default::default()
                })),
            },
        },
    )
}

fn snap(workloads: &[(&str, [u8; 4], &str)]) -> Prepared {
    let mut s = XdsSnapshot::default();
    for (uid, ip, v) in workloads {
        let (k, w) = workload(uid, *ip, v);
        s.addresses.insert(k, w);
    }
    s.authorizations.insert(
        "ns/p".into(),
        Versioned {
            version: "p1".into(),
            resource: Authorization::default(),
        },
    );
    prepare(&s, None, 1)
}

fn names(delta: &Delta) -> Vec<&str> {
    delta.updates.iter().map(|u| u.name.as_str()).collect()
}

fn none() -> HashMap<String, String> {
    HashMap::new()
}

#[test]
fn first_empty_request_is_wildcard_and_answered() {
    let p = snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "1")]);
    let mut st = TypeState::default();
    st.subscribe(&[], &[], &none());
    assert!(st.wildcard && st.must_respond);
    let d = st.delta(A, &p);
    assert_eq!(names(&d), ["a", "b"]);
    assert!(d.removed.is_empty());
    // Nothing changed: nothing to send.
    assert!(st.delta(A, &p).is_empty());
    // Authorization is a separate type.
    let mut az = TypeState::default();
    az.subscribe(&[], &[], &none());
    assert_eq!(names(&az.delta(Z, &p)), ["ns/p"]);
}

#[test]
fn updates_send_only_changes_and_removals() {
    let mut st = TypeState::default();
    st.subscribe(&[], &[], &none());
    st.delta(
        A,
        &snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "1")]),
    );
    let d = st.delta(
        A,
        &snap(&[("a", [10, 0, 0, 1], "2"), ("c", [10, 0, 0, 3], "1")]),
    );
    assert_eq!(names(&d), ["a", "c"]);
    assert_eq!(d.removed, ["b"]);
    assert_eq!(st.known.get("a").map(String::as_str), Some("2"));
    assert!(!st.known.contains_key("b"));
}

#[test]
fn initial_versions_skip_what_the_client_has() {
    let p = snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "2")]);
    let mut st = TypeState::default();
    let initial: HashMap<String, String> = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "1".to_string()),
        ("gone".to_string(), "1".to_string()),
    ]
    .into();
    st.subscribe(&[], &[], &initial);
    let d = st.delta(A, &p);
    assert_eq!(names(&d), ["b"], "only the changed one");
    assert_eq!(d.removed, ["gone"], "deleted while disconnected");
}

#[test]
fn on_demand_by_ip_resolves_with_an_alias() {
    let p = snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "1")]);
    let mut st = TypeState::default();
    // ztunnel's on-demand start: subscribe "*" and unsubscribe "*" = nothing.
    st.subscribe(&["*".into()], &["*".into()], &none());
    assert!(!st.wildcard);
    assert!(st.delta(A, &p).is_empty());

    st.subscribe(&["/10.0.0.2".into(), "/10.9.9.9".into()], &[], &none());
    let d = st.delta(A, &p);
    assert_eq!(names(&d), ["b"]);
    assert_eq!(d.updates[0].aliases, ["/10.0.0.2"]);
    assert_eq!(
        d.removed,
        ["/10.9.9.9"],
        "unknown keys are answered as removed"
    );
    // Neither is repeated.
    assert!(st.delta(A, &p).is_empty());

    // b changes: pushed (still subscribed through its IP); a is never sent.
    let p2 = snap(&[("a", [10, 0, 0, 1], "2"), ("b", [10, 0, 0, 2], "2")]);
    assert_eq!(names(&st.delta(A, &p2)), ["b"]);

    // b is deleted: removed by name, and the key that found it no longer resolves.
    let p3 = snap(&[("a", [10, 0, 0, 1], "2")]);
    assert_eq!(st.delta(A, &p3).removed, ["/10.0.0.2", "b"]);
    assert!(st.delta(A, &p3).is_empty());
}

#[test]
fn resubscribing_a_known_resource_answers_it_again() {
    let p = snap(&[("a", [10, 0, 0, 1], "1")]);
    let mut st = TypeState::default();
    st.subscribe(&["a".into()], &[], &none());
    assert_eq!(names(&st.delta(A, &p)), ["a"]);
    st.subscribe(&["/10.0.0.1".into()], &[], &none());
    let d = st.delta(A, &p);
    assert_eq!(names(&d), ["a"], "a waiter for the key gets an answer");
    assert_eq!(d.updates[0].aliases, ["/10.0.0.1"]);
}

#[test]
fn unsubscribed_resources_are_forgotten_without_removal() {
    let p = snap(&[("a", [10, 0, 0, 1], "1")]);
    let mut st = TypeState::default();
    st.subscribe(&["a".into()], &[], &none());
    st.delta(A, &p);
    st.subscribe(&[], &["a".into()], &none());
    assert!(st.delta(A, &p).is_empty());
    assert!(st.known.is_empty());
    // Resubscribing sends it again.
    st.subscribe(&["a".into()], &[], &none());
    assert_eq!(names(&st.delta(A, &p)), ["a"]);
}

#[test]
fn nack_records_rejections_and_they_are_not_resent() {
    let mut st = TypeState::default();
    st.subscribe(&[], &[], &none());
    let p = snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "1")]);
    let d = st.delta(A, &p);
    st.sent("n1".into(), &d);
    let rejected = st.nack("n1", "b: unknown enum value; zz: not sent");
    assert_eq!(
        rejected,
        [Rejection {
            name: "b".into(),
            version: "1".into(),
            reason: "unknown enum value".into()
        }]
    );
    assert_eq!(st.rejected.get("b").map(String::as_str), Some("1"));
    // Same snapshot again: nothing resent.
    assert!(st.delta(A, &p).is_empty());
    // b changes: resent, and no longer marked rejected.
    let p2 = snap(&[("a", [10, 0, 0, 1], "1"), ("b", [10, 0, 0, 2], "2")]);
    assert_eq!(names(&st.delta(A, &p2)), ["b"]);
    assert!(st.rejected.is_empty());
}

#[test]
fn acks_settle_older_nonces_and_unknown_nonces_are_ignored() {
    let mut st = TypeState::default();
    st.subscribe(&[], &[], &none());
    let p = snap(&[("a", [10, 0, 0, 1], "1")]);
    let d = st.delta(A, &p);
    st.sent("n1".into(), &d);
    st.sent("n2".into(), &Delta::default());
    assert!(st.ack("n2"));
    assert!(!st.ack("n1"), "settled by the later ACK");
    assert!(st.nack("n1", "a: bad").is_empty());
    // A NACK naming nothing it recognizes rejects everything the response carried.
    let p2 = snap(&[("a", [10, 0, 0, 1], "2")]);
    let d = st.delta(A, &p2);
    st.sent("n3".into(), &d);
    let rejected = st.nack("n3", "decode error");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, "decode error");
}

#[test]
fn outstanding_is_bounded() {
    let mut st = TypeState::default();
    for i in 0..(MAX_OUTSTANDING + 4) {
        st.sent(format!("n{i}"), &Delta::default());
    }
    assert!(!st.ack("n0"), "forgotten");
    assert!(st.ack(&format!("n{}", MAX_OUTSTANDING + 3)));
}
