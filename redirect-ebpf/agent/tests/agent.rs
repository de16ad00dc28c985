//! The whole agent (nftables mode) in-process, driven like production: the real `mesh-cni`
//! binary reports pods over the CNI socket, istiod-compat's files registry decides
//! enrollment, a ztunnel-side client speaks ZDS, pods live in real network namespaces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Netns, Ztunnel, eventually, in_ns, ns_id, require_root, run_cni};
use redirect_agent::app::{self, Agent, Options};
use redirect_agent::config::{Config, env};
use redirect_agent::redirect::NftRedirection;
use xds_proto::workload::zds::workload_request::Payload;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("registry")).unwrap();
        Setup { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn zds(&self) -> PathBuf {
        self.path("run/ztunnel/ztunnel.sock")
    }
    fn cni(&self) -> PathBuf {
        self.path("run/mesh-cni/agent.sock")
    }
    fn config(&self) -> Config {
        let p = |s: &str| self.path(s).display().to_string();
        let map: HashMap<String, String> = [
            (env::NODE_NAME, "node1".to_string()),
            (env::REDIRECT_MODE, "nftables".into()),
            (env::ZDS_SOCKET, p("run/ztunnel/ztunnel.sock")),
            (env::CNI_EVENT_SOCKET, p("run/mesh-cni/agent.sock")),
            (env::STATE_DIR, p("state")),
            (env::LOCAL_DIR, p("registry")),
            (env::READINESS_ADDR, "127.0.0.1:0".into()),
            (env::CGROUP_PATH, "/unused".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Config::parse(&map, || PathBuf::from("/unused")).unwrap()
    }
    async fn start(&self) -> Agent {
        let opts = Options {
            files_poll: Duration::from_millis(50),
            retry_interval: Duration::from_millis(100),
        };
        app::build(self.config(), Box::new(NftRedirection::new()), opts)
            .await
            .unwrap()
    }
    /// Writes the registry file atomically (the registry never sees half a file).
    fn registry(&self, yaml: &str) {
        let tmp = self.path("registry/.objects.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.path("registry/objects.yaml")).unwrap();
    }
    fn state_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

fn objects(mesh_ns_label: bool, plain_pod_label: bool) -> String {
    let ns_labels = if mesh_ns_label {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    let pod_labels = if plain_pod_label {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: mesh, labels: {ns_labels}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: plain}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: mesh, uid: uid-client}}
spec: {{nodeName: node1, serviceAccountName: sleep, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.78.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: plain, uid: uid-server, labels: {pod_labels}}}
spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}
status: {{podIP: 10.78.1.2}}
"#
    )
}

fn readyz(agent: &Agent) -> String {
    let mut s = std::net::TcpStream::connect(agent.readiness_addr).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn has_table(ns: &Path) -> bool {
    in_ns(ns, "nft", &["list", "ruleset"]).contains("table inet mesh_redirect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_follows_cni_and_registry_and_survives_restart() {
    require_root();
    let setup = Setup::new();
    setup.registry(&objects(true, false));
    let client = Netns::new("10.78.0.2");
    let server = Netns::new("10.78.1.2");

    let agent = setup.start().await;
    assert!(
        readyz(&agent).starts_with("HTTP/1.1 200"),
        "{}",
        readyz(&agent)
    );
    let ztunnel = Ztunnel::connect(&setup.zds()).await;
    assert!(ztunnel.take_snapshot().await.is_empty());
    eventually("ztunnel ready", || agent.hub.newest().is_some()).await;

    // CNI ADD of an enrolled pod: captured before the plugin returns, then sent over ZDS.
    let (ok, out) = run_cni(
        "ADD",
        &setup.cni(),
        &client.path,
        ("mesh", "client", "uid-client"),
        &["10.78.0.2"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("10.78.0.2/24"),
        "prevResult passed through: {out}"
    );
    assert!(has_table(&client.path));
    let (p, fds) = ztunnel.next().await;
    let Payload::Add(add) = p else {
        panic!("{p:?}")
    };
    assert_eq!(add.uid, "uid-client");
    let info = add.workload_info.unwrap();
    assert_eq!(
        (
            info.name.as_str(),
            info.namespace.as_str(),
            info.service_account.as_str()
        ),
        ("client", "mesh", "sleep")
    );
    assert_eq!(fds.len(), 1);
    assert_eq!(ns_id(&fds[0]), ns_id(&client.fd()));
    ztunnel.ack("").await;

    // CNI ADD of a pod that is not enrolled: remembered, not captured.
    let (ok, out) = run_cni(
        "ADD",
        &setup.cni(),
        &server.path,
        ("plain", "server", "uid-server"),
        &["10.78.1.2"],
    );
    assert!(ok, "{out}");
    assert!(!has_table(&server.path));
    assert_eq!(
        setup.state_files(),
        vec!["uid-client.json", "uid-server.json"]
    );

    // Namespace label removed: unenrolled at run time (the next ZDS message is its Del,
    // so nothing was sent for the unenrolled pod).
    setup.registry(&objects(false, false));
    let (p, _) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Del(ref d) if d.uid == "uid-client"),
        "{p:?}"
    );
    ztunnel.ack("").await;
    eventually("client rules removed", || !has_table(&client.path)).await;

    // Pod label added: enrolled; ztunnel nacks the first Add, the agent retries.
    setup.registry(&objects(false, true));
    let (p, _) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Add(ref a) if a.uid == "uid-server"),
        "{p:?}"
    );
    ztunnel.ack("bind: address already in use").await;
    let (p, fds) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Add(ref a) if a.uid == "uid-server"),
        "retried: {p:?}"
    );
    assert_eq!(ns_id(&fds[0]), ns_id(&server.fd()));
    ztunnel.ack("").await;
    assert_eq!(agent.zds_stats.nacks(), 1);
    assert!(has_table(&server.path));

    // Restart: the new agent reloads the state dir, re-enrolls, and a reconnecting ztunnel
    // gets a snapshot with the same netns (so it keeps its proxies).
    agent.shutdown().await;
    assert!(
        tokio::time::timeout(common::PATIENCE, ztunnel.0.recv())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "old agent's ZDS connection closed"
    );
    let agent = setup.start().await;
    let ztunnel = Ztunnel::connect(&setup.zds()).await;
    let snapshot = ztunnel.take_snapshot().await;
    assert_eq!(
        snapshot.len(),
        1,
        "{:?}",
        snapshot.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    assert_eq!(snapshot[0].0, "uid-server");
    assert_eq!(ns_id(snapshot[0].1.as_ref().unwrap()), ns_id(&server.fd()));
    assert_eq!(
        in_ns(&server.path, "nft", &["list", "ruleset"])
            .matches("table inet mesh_redirect")
            .count(),
        1
    );
    assert!(!has_table(&client.path));

    // CNI DEL: Del to ztunnel, rules and state removed.
    let (ok, _) = run_cni(
        "DEL",
        &setup.cni(),
        &server.path,
        ("plain", "server", "uid-server"),
        &[],
    );
    assert!(ok);
    let (p, _) = ztunnel.next().await;
    assert!(
        matches!(p, Payload::Del(ref d) if d.uid == "uid-server"),
        "{p:?}"
    );
    ztunnel.ack("").await;
    assert!(!has_table(&server.path));
    assert_eq!(setup.state_files(), vec!["uid-client.json"]);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_fails_when_the_pod_cannot_be_enrolled_and_stale_state_is_forgotten() {
    require_root();
    let setup = Setup::new();
    setup.registry(&objects(true, false));
    // A pod remembered from an earlier run whose netns is gone: forgotten at start-up.
    std::fs::create_dir_all(setup.path("state")).unwrap();
    std::fs::write(
        setup.path("state/uid-gone.json"),
        r#"{"uid":"uid-gone","name":"gone","namespace":"mesh","netns":"/var/run/netns/does-not-exist","container_id":"c","ips":[]}"#,
    )
    .unwrap();
    let agent = setup.start().await;
    assert!(setup.state_files().is_empty(), "{:?}", setup.state_files());

    // An enrolled pod whose netns path does not exist: ADD fails with a CNI error.
    let (ok, out) = run_cni(
        "ADD",
        &setup.cni(),
        Path::new("/var/run/netns/nope"),
        ("mesh", "client", "uid-client"),
        &["10.78.0.2"],
    );
    assert!(!ok);
    let err: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 11, "{err}");
    assert!(
        err["details"].as_str().unwrap().contains("uid-client"),
        "{err}"
    );
    // DEL always succeeds and forgets it.
    let (ok, _) = run_cni(
        "DEL",
        &setup.cni(),
        Path::new(""),
        ("mesh", "client", "uid-client"),
        &[],
    );
    assert!(ok);
    assert!(setup.state_files().is_empty());
    agent.shutdown().await;
}
