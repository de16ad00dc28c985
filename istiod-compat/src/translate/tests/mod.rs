//! Translation tests: inputs are written as the YAML users write (read by the files parser),
//! outputs checked field by field. `eval` is a small model of the node proxy's policy
//! evaluation (reference §13), to check what converted policies *do*.

mod authz;
mod eval;
mod fuzz;
mod peer_authn;
mod service;
mod snapshot;
mod workload;

use std::path::Path;

use xds_proto::security::{Authorization, Match, StringMatch, string_match::MatchType};
use xds_proto::workload::{Service, Workload, address};

use super::{TranslateConfig, XdsSnapshot, translate};
use crate::files::{build_snapshot, parse_documents};
use crate::model::Snapshot;

pub(super) fn snapshot(yaml: &str) -> Snapshot {
    let parsed = parse_documents(Path::new("test.yaml"), yaml).expect("test YAML parses");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    build_snapshot(parsed.objects).0
}

pub(super) fn run(yaml: &str) -> XdsSnapshot {
    translate(&snapshot(yaml), &TranslateConfig::default())
}

pub(super) fn workload<'a>(x: &'a XdsSnapshot, uid: &str) -> &'a Workload {
    match x.addresses.get(uid).map(|v| &v.resource.r#type) {
        Some(Some(address::Type::Workload(w))) => w,
        other => panic!(
            "no workload {uid}: {other:?}; have {:?}",
            x.addresses.keys()
        ),
    }
}

pub(super) fn service<'a>(x: &'a XdsSnapshot, key: &str) -> &'a Service {
    match x.addresses.get(key).map(|v| &v.resource.r#type) {
        Some(Some(address::Type::Service(s))) => s,
        other => panic!("no service {key}: {other:?}; have {:?}", x.addresses.keys()),
    }
}

pub(super) fn authz<'a>(x: &'a XdsSnapshot, key: &str) -> &'a Authorization {
    match x.authorizations.get(key) {
        Some(v) => &v.resource,
        None => panic!("no policy {key}; have {:?}", x.authorizations.keys()),
    }
}

pub(super) fn assert_warns(x: &XdsSnapshot, needles: &[&str]) {
    for n in needles {
        assert!(
            x.warnings.iter().any(|w| w.contains(n)),
            "no warning containing {n:?} in {:#?}",
            x.warnings
        );
    }
    if needles.is_empty() {
        assert!(
            x.warnings.is_empty(),
            "unexpected warnings {:#?}",
            x.warnings
        );
    }
}

pub(super) fn exact(s: &str) -> StringMatch {
    sm(MatchType::Exact(s.into()))
}
pub(super) fn prefix(s: &str) -> StringMatch {
    sm(MatchType::Prefix(s.into()))
}
pub(super) fn suffix(s: &str) -> StringMatch {
    sm(MatchType::Suffix(s.into()))
}
pub(super) fn presence() -> StringMatch {
    sm(MatchType::Presence(()))
}
fn sm(m: MatchType) -> StringMatch {
    StringMatch {
        match_type: Some(m),
    }
}

/// `Match` with only the given fields.
pub(super) fn m() -> Match {
    Match::default()
}

/// An ambient namespace, a Running+Ready pod `ns/name` with `labels` on `node1`.
pub(super) fn ambient_pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n\
         spec:\n  nodeName: node1\n  serviceAccountName: sa-{name}\n  containers:\n  - name: app\n    ports:\n    - name: http\n      containerPort: 8080\n\
         status:\n  podIP: {ip}\n"
    )
}
