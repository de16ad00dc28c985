//! Hostile and random inputs never panic.

use serde_yaml::Value;

use crate::translate::fuzz_translate;

/// Objects that are valid YAML and of known kinds, with odd values everywhere.
const ODD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: "", ownerReferences: [{apiVersion: x, kind: ReplicaSet, name: "-", uid: u}], labels: {pod-template-hash: ""}}
spec:
  hostNetwork: true
  containers: [{name: c, ports: [{containerPort: -5, name: http}, {containerPort: 70000, name: big}]}]
status: {phase: Running, podIPs: [{ip: ""}, {ip: "::"}, {ip: "1.2.3.4"}], conditions: []}
---
apiVersion: v1
kind: Pod
metadata: {name: q, ownerReferences: [{apiVersion: x, kind: Job, name: "-12345678", uid: u}]}
status: {podIP: "300.1.1.1"}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {selector: {"": ""}, clusterIPs: [], ports: [{port: -1, targetPort: ""}, {port: 65535, targetPort: big}, {port: 1, targetPort: http}, {port: 2, targetPort: 0}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: e, labels: {kubernetes.io/service-name: s}}
addressType: IPv6
ports: [{port: -3}, {port: 70000, name: ""}, {}]
endpoints: [{addresses: ["::1", "x"]}, {addresses: []}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: istio-system}
spec:
  selector: {}
  action: DENY
  rules:
  - from: [{source: {}}, {source: {principals: [""], ipBlocks: ["/", "1.2.3.4/-1"]}}]
    to: [{operation: {ports: ["", "-1", "99999"], notPorts: ["x"]}}]
    when: [{key: ""}, {key: source.ip, values: [""]}, {key: destination.port, notValues: ["0"]}]
  - {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: default}
spec: {selector: {matchLabels: {}}, mtls: {mode: ""}, portLevelMtls: {0: {}, 4294967295: {mode: STRICT}}}
"#;

#[test]
fn odd_objects() {
    let x = fuzz_translate(ODD.as_bytes()).expect("parses");
    assert!(!x.warnings.is_empty());
}

#[test]
fn garbage_bytes() {
    for input in [
        &b""[..],
        b"\xff\xfe",
        b"- a\n- b\n",
        b"apiVersion: v1\nkind: Pod\n",
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: 5\n",
        b"kind: List\napiVersion: v1\nitems: [{apiVersion: v1, kind: List, items: []}]\n",
        b"{{{{",
    ] {
        let _ = fuzz_translate(input);
    }
}

/// Deterministic mutations of a realistic input: every scalar may become an odd value.
#[test]
fn mutated_documents() {
    let base = format!(
        "{ODD}---\n{}",
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-nodes"))
            .expect("example dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&base)
        // serde_yaml repeats a parse error forever: stop at the first one.
        .map_while(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let odd: Vec<Value> = [
        "''",
        "'*'",
        "-1",
        "0",
        "4294967296",
        "None",
        "'::'",
        "10.0.0.0/99",
        "STRICT",
        "DENY",
        "~",
        "true",
        "[]",
        "{}",
        "[{}]",
        "ambient",
        "Ready",
    ]
    .iter()
    .map(|s| serde_yaml::from_str(s).expect("odd value"))
    .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    assert!(docs.len() > 10, "{}", docs.len());
    for _ in 0..300 {
        let mut mutated = docs.clone();
        for doc in &mut mutated {
            mutate(doc, &odd, &mut next);
        }
        let text = mutated
            .iter()
            .filter_map(|d| serde_yaml::to_string(d).ok())
            .collect::<Vec<_>>()
            .join("---\n");
        let _ = fuzz_translate(text.as_bytes());
    }
}

fn mutate(v: &mut Value, odd: &[Value], next: &mut impl FnMut() -> u64) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                // Keep the dispatch keys mostly intact so the typed paths run.
                if matches!(k.as_str(), Some("apiVersion" | "kind")) && !next().is_multiple_of(8) {
                    continue;
                }
                mutate(val, odd, next);
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(|x| mutate(x, odd, next)),
        _ => {
            if next().is_multiple_of(5) {
                let i = usize::try_from(next() % odd.len() as u64).unwrap_or(0);
                *v = odd[i].clone();
            }
        }
    }
}
