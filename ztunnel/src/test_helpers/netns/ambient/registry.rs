//! The registry file of an [`Ambient`] mesh (nodes, namespaces, pods as Kubernetes YAML),
//! read by istiod-compat and by the agents, and waiting until both have acted on a change.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use super::super::{OrPanic, PATIENCE, READY_TIMEOUT, eventually, lock};
use super::{
    Ambient, AmbientPod, DATAPLANE_MODE_LABEL, REGISTRY_FILE, ZTUNNEL_NAMESPACE, http_get,
};

/// The label value that enrolls.
const AMBIENT: &str = "ambient";
/// ztunnel's admin port (`/config_dump`), on localhost of its own (the node's) netns.
const ZTUNNEL_ADMIN_PORT: u16 = 15000;

#[derive(Debug, Clone)]
pub(super) struct PodEntry {
    pub(super) pod: AmbientPod,
    pub(super) mode_label: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Namespace → `istio.io/dataplane-mode` label (None: unlabelled).
    pub(super) namespaces: BTreeMap<String, Option<String>>,
    pub(super) pods: Vec<PodEntry>,
}

impl Ambient {
    /// Labels namespace `name` `istio.io/dataplane-mode=<mode>` (None: no label) rewrites the
    /// registry file and waits until the agents and the proxies have it (see
    /// [`Ambient::sync_registry`]).
    pub fn set_namespace_mode(&self, name: &str, mode: Option<&str>) {
        lock(&self.registry)
            .namespaces
            .insert(name.to_owned(), mode.map(str::to_owned));
        self.sync_registry();
    }

    /// Changes the pod's `istio.io/dataplane-mode` label (None: remove it) and rewrites the
    /// registry file: enrolls or unenrolls the running pod.
    pub fn set_pod_mode(&self, pod: &AmbientPod, mode_label: Option<&str>) {
        {
            let mut registry = lock(&self.registry);
            let entry = registry
                .pods
                .iter_mut()
                .find(|e| e.pod.uid == pod.uid)
                .unwrap_or_else(|| panic!("pod {} is not in this mesh", pod.pod.name));
            entry.mode_label = mode_label.map(str::to_owned);
        }
        self.sync_registry();
    }

    /// Rewrites the registry file and waits until (a) every running agent has loaded it
    /// (its files source logs the new object count) and (b) every running ztunnel's
    /// `/config_dump` lists every pod with protocol `HBONE` exactly when it is enrolled. As in
    /// a cluster, where the pod object exists before its sandbox is created, so the CNI ADD
    /// and the first packets find the pod known everywhere.
    pub fn sync_registry(&self) {
        let (yaml, objects, expected) = self.render_registry();
        let marks: Vec<Option<usize>> = self
            .nodes
            .iter()
            .map(|n| n.agent.as_ref().map(|a| a.log_mark()))
            .collect();
        self.cp.write_registry_file(REGISTRY_FILE, &yaml);
        let loaded = format!("objects={objects}");
        for (n, mark) in self.nodes.iter().zip(marks) {
            let (Some(agent), Some(mark)) = (&n.agent, mark) else {
                continue;
            };
            if agent
                .try_wait_for_line_since(mark, READY_TIMEOUT, |line| {
                    line.contains("file loaded")
                        && line.contains(REGISTRY_FILE)
                        && line.contains(&loaded)
                })
                .is_none()
            {
                panic!(
                    "the agent on {} did not log loading {REGISTRY_FILE} with {loaded}; its \
                     log since the write:\n{}",
                    n.node.name,
                    agent.lines_since(mark).join("\n")
                );
            }
        }
        for n in &self.nodes {
            if n.ztunnel.is_none() {
                continue;
            }
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ZTUNNEL_ADMIN_PORT));
            let mut last = String::new();
            let synced = eventually(PATIENCE, || {
                let dump = match http_get(&n.node, admin, "/config_dump") {
                    Ok((200, body)) => body,
                    other => {
                        last = format!("{other:?}");
                        return false;
                    }
                };
                let dump: Value = serde_json::from_str(&dump).unwrap_or_default();
                let workloads = dump["workloads"].as_array().cloned().unwrap_or_default();
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|(ip, enrolled)| {
                        !workloads.iter().any(|w| {
                            let ips = w["workloadIps"].as_array().cloned().unwrap_or_default();
                            ips.iter().any(|i| i.as_str() == Some(&ip.to_string()))
                                && (w["protocol"] == "HBONE") == *enrolled
                        })
                    })
                    .map(|(ip, enrolled)| format!("{ip} (enrolled: {enrolled})"))
                    .collect();
                last = format!("not yet as expected: {missing:?}");
                missing.is_empty()
            });
            assert!(
                synced,
                "the ztunnel on {} did not get the registry change over xDS within \
                 {PATIENCE:?}: {last}",
                n.node.name
            );
        }
    }

    /// The registry file's YAML, its number of objects, and each pod's IP with whether it
    /// is enrolled.
    fn render_registry(&self) -> (String, usize, Vec<(Ipv4Addr, bool)>) {
        let registry = lock(&self.registry);
        let mut expected = Vec::new();
        let mut docs: Vec<Value> = Vec::new();
        for n in &self.nodes {
            docs.push(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.node.name}}),
            );
        }
        let mut namespaces = registry.namespaces.clone();
        namespaces
            .entry(ZTUNNEL_NAMESPACE.to_owned())
            .or_insert(None);
        for (name, mode) in &namespaces {
            let mut ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            if let Some(mode) = mode {
                ns["metadata"]["labels"] = json!({ DATAPLANE_MODE_LABEL: mode });
            }
            docs.push(ns);
        }
        for entry in &registry.pods {
            let pod = &entry.pod.pod;
            let ns_mode = registry.namespaces.get(&pod.namespace).cloned().flatten();
            let enrolled = match entry.mode_label.as_deref() {
                Some(mode) => mode == AMBIENT,
                None => ns_mode.as_deref() == Some(AMBIENT),
            };
            expected.push((pod.ip, enrolled));
            let mut labels = json!({ "app": pod.name });
            if let Some(mode) = &entry.mode_label {
                labels[DATAPLANE_MODE_LABEL] = json!(mode);
            }
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "uid": entry.pod.uid,
                    "labels": labels,
                },
                "spec": {
                    "nodeName": pod.node,
                    "serviceAccountName": pod.service_account,
                    "containers": [{ "name": "app", "image": "app" }],
                },
                "status": { "podIP": pod.ip.to_string() },
            }));
        }
        let yaml = docs
            .iter()
            .map(|doc| serde_yaml::to_string(doc).or_panic(|| format!("serializing {doc}")))
            .collect::<Vec<_>>()
            .join("---\n");
        (yaml, docs.len(), expected)
    }
}
