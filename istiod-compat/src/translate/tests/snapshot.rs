//! Whole-snapshot properties: resource names and content-derived versions.

use super::*;

fn many_services() -> String {
    let mut docs = vec![ambient_pod("demo", "p", "10.0.1.2", "app: web")];
    for i in 0..16 {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.{i}\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n"
        ));
    }
    docs.join("---\n")
}

#[test]
fn names() {
    let x = run(&format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow, namespace: demo}}\nspec: {{}}\n",
        many_services()
    ));
    assert!(x.addresses.contains_key("Kubernetes//v1/Pod/demo/p"));
    assert!(x.addresses.contains_key("demo/s0.demo.svc.cluster.local"));
    assert_eq!(x.addresses.len(), 17);
    assert_eq!(x.authorizations.keys().collect::<Vec<_>>(), ["demo/allow"]);
}

#[test]
fn versions_are_stable() {
    let snapshot = snapshot(&many_services());
    let cfg = TranslateConfig::default();
    let first = translate(&snapshot, &cfg);
    assert_eq!(
        workload(&first, "Kubernetes//v1/Pod/demo/p").services.len(),
        16
    );
    // Each translation builds new HashMaps (random iteration order): versions must not care.
    for _ in 0..20 {
        assert_eq!(translate(&snapshot, &cfg), first);
    }
    for v in first.addresses.values() {
        assert_eq!(v.version.len(), 16);
    }
}

#[test]
fn only_changed_resources_change_version() {
    let before = run(&many_services());
    let after = run(&many_services().replace("10.96.0.3\n", "10.96.1.3\n"));
    let changed: Vec<&String> = before
        .addresses
        .iter()
        .filter(|(k, v)| after.addresses[*k].version != v.version)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(changed, ["demo/s3.demo.svc.cluster.local"]);
    assert_ne!(
        before.addresses["demo/s3.demo.svc.cluster.local"].version,
        after.addresses["demo/s3.demo.svc.cluster.local"].version
    );
}

#[test]
fn policy_versions_follow_content() {
    let p = |action: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\nspec: {{action: {action}}}\n"
        )
    };
    let (a, b, c) = (run(&p("ALLOW")), run(&p("ALLOW")), run(&p("DENY")));
    assert_eq!(
        a.authorizations["demo/p"].version,
        b.authorizations["demo/p"].version
    );
    assert_ne!(
        a.authorizations["demo/p"].version,
        c.authorizations["demo/p"].version
    );
}

#[test]
fn empty_snapshot() {
    assert_eq!(
        translate(&Snapshot::default(), &TranslateConfig::default()),
        XdsSnapshot::default()
    );
}
