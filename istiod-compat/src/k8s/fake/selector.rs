//! Field selectors (`?fieldSelector=`) for list and watch, with the apiserver's syntax
//! (`a=b`, `a==b`, `a!=b`, comma-separated, `\,` `\=` `\\` escapes) and the fields the fake
//! serves: `metadata.name` and `metadata.namespace` on every resource, `spec.nodeName` on
//! Pods. Any other field is a 400, as the apiserver answers for a field label it does not
//! index, never a silently unfiltered answer.
//!
//! A watch sees what the apiserver's watch cache sends: an object entering the selection
//! (a MODIFIED whose previous state did not match) is ADDED, one leaving it is DELETED
//! (with its previous content at the event's resourceVersion).

use bytes::Bytes;
use serde_json::{Value, json};

use super::state::{ApiError, ResourceDef, WatchRecord, event_line};

/// A field the fake can select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    NodeName,
}

impl Field {
    fn parse(def: &ResourceDef, label: &str) -> Result<Field, ApiError> {
        match label {
            "metadata.name" => Ok(Field::Name),
            "metadata.namespace" => Ok(Field::Namespace),
            "spec.nodeName" if def.group.is_empty() && def.plural == "pods" => Ok(Field::NodeName),
            other => Err(ApiError::new(
                400,
                format!(
                    "field label not supported: {other} (the fake apiserver selects {} by \
                     metadata.name, metadata.namespace{})",
                    def.plural,
                    if def.plural == "pods" {
                        " and spec.nodeName"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// The field's value in `obj` (absent = empty, as the apiserver indexes it).
    fn value(self, obj: &Value) -> &str {
        let v = match self {
            Field::Name => &obj["metadata"]["name"],
            Field::Namespace => &obj["metadata"]["namespace"],
            Field::NodeName => &obj["spec"]["nodeName"],
        };
        v.as_str().unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    field: Field,
    value: String,
    equal: bool,
}

/// A parsed field selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldSelector {
    requirements: Vec<Requirement>,
}

impl FieldSelector {
    /// Parses `raw` (absent or empty: select everything) for resource `def`.
    pub fn parse(def: &ResourceDef, raw: Option<&str>) -> Result<FieldSelector, ApiError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(raw.unwrap_or(""), ',') {
            if term.is_empty() {
                continue;
            }
            let bad = || ApiError::new(400, format!("invalid field selector term {term:?}"));
            let (label, op, value) = split_term(term).ok_or_else(bad)?;
            let value = unescape(value).ok_or_else(bad)?;
            requirements.push(Requirement {
                field: Field::parse(def, label.trim())?,
                value,
                equal: op != "!=",
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements
            .iter()
            .all(|r| (r.field.value(obj) == r.value) == r.equal)
    }

    /// The line a watch with this selector gets for `record` (a non-bookmark event), if any.
    pub fn watch_line(&self, record: &WatchRecord) -> Option<Bytes> {
        if self.requirements.is_empty() {
            return Some(record.line.clone());
        }
        let object = record.object.as_ref()?;
        let now = self.matches(object);
        let before = record.prev.as_ref().is_some_and(|p| self.matches(p));
        match (record.event, before, now) {
            ("MODIFIED", true, true) => Some(record.line.clone()),
            ("MODIFIED", false, true) => Some(event_line("ADDED", object)),
            ("MODIFIED", true, false) => {
                let mut gone = record.prev.clone()?;
                gone["metadata"]["resourceVersion"] = json!(record.rv.to_string());
                Some(event_line("DELETED", &gone))
            }
            ("MODIFIED", false, false) => None,
            (_, _, now) => now.then(|| record.line.clone()),
        }
    }
}

/// Splits at every `sep` not preceded by an escaping backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `label op value` at the first unescaped operator (`!=`, `==` or `=`).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        let rest = &term[i..];
        match c {
            '\\' => escaped = true,
            '!' if rest.starts_with("!=") => return Some((&term[..i], "!=", &term[i + 2..])),
            '=' if rest.starts_with("==") => return Some((&term[..i], "==", &term[i + 2..])),
            '=' => return Some((&term[..i], "=", &term[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Removes the `\` of `\\`, `\,` and `\=`; any other escape (or a trailing `\`) is invalid.
fn unescape(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::k8s::fake::state::find_def;

    fn pods() -> &'static ResourceDef {
        find_def("", "v1", "pods").unwrap()
    }

    fn pod(ns: &str, name: &str, node: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"namespace": ns, "name": name}, "spec": {}});
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        p
    }

    #[test]
    fn parse_and_match() {
        let s = FieldSelector::parse(pods(), Some("spec.nodeName=n1,metadata.name!=b")).unwrap();
        assert!(s.matches(&pod("x", "a", Some("n1"))));
        assert!(!s.matches(&pod("x", "b", Some("n1"))));
        assert!(!s.matches(&pod("x", "a", Some("n2"))));
        assert!(!s.matches(&pod("x", "a", None)));
        // Unscheduled pods: the kubelet-style `spec.nodeName=` selects them.
        let unscheduled = FieldSelector::parse(pods(), Some("spec.nodeName==")).unwrap();
        assert!(unscheduled.matches(&pod("x", "a", None)));
        let ns = FieldSelector::parse(pods(), Some(r"metadata.namespace=a\,b")).unwrap();
        assert!(ns.matches(&pod("a,b", "p", None)));
        assert!(
            FieldSelector::parse(pods(), None)
                .unwrap()
                .matches(&pod("x", "y", None))
        );
    }

    #[test]
    fn unsupported_and_malformed_are_400() {
        let nodes = find_def("", "v1", "nodes").unwrap();
        for (def, raw, want) in [
            (
                pods(),
                "status.phase=Running",
                "field label not supported: status.phase",
            ),
            (
                nodes,
                "spec.nodeName=n1",
                "field label not supported: spec.nodeName",
            ),
            (pods(), "spec.nodeName", "invalid field selector term"),
            (pods(), r"metadata.name=a\x", "invalid field selector term"),
        ] {
            let e = FieldSelector::parse(def, Some(raw)).unwrap_err();
            assert_eq!(e.code, 400, "{raw}");
            assert!(e.message.contains(want), "{raw}: {}", e.message);
        }
    }

    /// Through the real client: lists and watches are filtered, an unsupported field is a
    /// 400 naming it, and the deliveries show what reached the client.
    #[tokio::test]
    async fn real_client_list_and_watch() {
        use futures_util::{StreamExt, TryStreamExt};
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{ListParams, WatchEvent, WatchParams};

        use crate::k8s::fake::{FakeApiServer, objects};

        let fake = FakeApiServer::start().await.unwrap();
        fake.apply(&objects::pod("a", "p1", "sa", "n1", "10.0.0.1", &[]));
        fake.apply(&objects::pod("a", "p2", "sa", "n2", "10.0.0.2", &[]));
        let pods: kube::Api<Pod> = kube::Api::all(fake.client());
        let names = |l: kube::core::ObjectList<Pod>| {
            l.items
                .into_iter()
                .map(|p| p.metadata.name.unwrap())
                .collect::<Vec<_>>()
        };
        let on_n1 = ListParams::default().fields("spec.nodeName=n1");
        assert_eq!(names(pods.list(&on_n1).await.unwrap()), ["p1"]);
        let not_p1 = ListParams::default().fields("metadata.name!=p1,metadata.namespace=a");
        assert_eq!(names(pods.list(&not_p1).await.unwrap()), ["p2"]);
        let bad = ListParams::default().fields("status.phase=Running");
        match pods.list(&bad).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 400);
                assert!(e.message.contains("status.phase"), "{}", e.message);
            }
            other => panic!("unsupported field answered {other:?}"),
        }

        let wp = WatchParams::default().fields("spec.nodeName=n1");
        let mut stream = pods.watch(&wp, "0").await.unwrap().boxed();
        fake.apply(&objects::pod("a", "p3", "sa", "n2", "10.0.0.3", &[]));
        fake.apply(&objects::pod("a", "p4", "sa", "n1", "10.0.0.4", &[]));
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match stream.try_next().await.unwrap().unwrap() {
                WatchEvent::Added(p) => seen.push(p.metadata.name.unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["p1", "p4"]);
        let delivered: Vec<String> = fake
            .deliveries()
            .into_iter()
            .map(|d| format!("{} {}", d.event, d.name))
            .collect();
        assert_eq!(
            delivered,
            ["LIST p1", "LIST p2", "ADDED p1", "ADDED p4"],
            "p3 (node n2) never reached the n1 watch"
        );
    }

    #[test]
    fn watch_transitions() {
        let s = FieldSelector::parse(pods(), Some("spec.nodeName=n1")).unwrap();
        let rec = |event: &'static str, obj: Value, prev: Option<Value>| WatchRecord {
            rv: 7,
            bookmark: false,
            namespace: "x".into(),
            line: event_line(event, &obj),
            event,
            object: Some(obj),
            prev,
        };
        let kind = |line: Option<Bytes>| {
            line.map(|l| {
                let v: Value = serde_json::from_slice(&l).unwrap();
                (v["type"].as_str().unwrap().to_string(), v["object"].clone())
            })
        };
        let on = pod("x", "a", Some("n1"));
        let off = pod("x", "a", Some("n2"));
        let none = pod("x", "a", None);
        assert_eq!(kind(s.watch_line(&rec("ADDED", off.clone(), None))), None);
        assert_eq!(
            kind(s.watch_line(&rec("ADDED", on.clone(), None)))
                .unwrap()
                .0,
            "ADDED"
        );
        // Scheduled onto n1: enters the selection.
        let (t, o) = kind(s.watch_line(&rec("MODIFIED", on.clone(), Some(none.clone())))).unwrap();
        assert_eq!((t.as_str(), o), ("ADDED", on.clone()));
        // Leaves it: DELETED with the previous content at the event's version.
        let (t, o) = kind(s.watch_line(&rec("MODIFIED", off.clone(), Some(on.clone())))).unwrap();
        assert_eq!(t, "DELETED");
        assert_eq!(o["spec"]["nodeName"], "n1");
        assert_eq!(o["metadata"]["resourceVersion"], "7");
        assert_eq!(
            kind(s.watch_line(&rec("MODIFIED", off.clone(), Some(none)))),
            None
        );
        assert_eq!(kind(s.watch_line(&rec("DELETED", off, None))), None);
        assert_eq!(
            kind(s.watch_line(&rec("DELETED", on, None))).unwrap().0,
            "DELETED"
        );
    }
}
