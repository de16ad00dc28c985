//! Ties the istiod-compat Helm chart to this binary: the Deployment rendered in the golden
//! files uses only variables istiod-compat reads, sets the ones it needs in a cluster, is
//! accepted by its own configuration parser, and exposes exactly its ports; the Service
//! names a host its serving certificate covers; ztunnel's rendered addresses and root
//! certificate point at what this binary serves and publishes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a test failure"
)]

mod chart_support;

use std::collections::BTreeSet;
use std::path::Path;

use chart_support::{Golden, VARIANTS, container_env, namespace_of};
use istiod_compat::config::{Config, RegistryKind, env};
use istiod_compat::k8s::root_configmap::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY};

/// What the control plane in a cluster cannot do without (or would get wrong by default).
const REQUIRED: [&str; 5] = [
    env::REGISTRY,
    env::POD_NAMESPACE,
    env::CA_TRUSTED_NODE_ACCOUNTS,
    env::TRUST_DOMAIN,
    env::ROOT_NAMESPACE,
];

/// The kubelet's own variable in every pod.
const KUBELET_ENV: [(&str, &str); 1] = [(env::KUBERNETES_SERVICE_HOST, "10.96.0.1")];

fn parse(golden: &Golden) -> (Config, std::collections::HashMap<String, String>) {
    let deployment = golden.one("Deployment");
    let vars = container_env(
        &golden.file,
        golden.container("Deployment", "discovery"),
        namespace_of(deployment),
        &KUBELET_ENV,
    );
    let cfg = Config::from_source(&vars).unwrap_or_else(|e| {
        panic!(
            "{}: istiod-compat refuses the rendered env: {e}",
            golden.file
        )
    });
    (cfg, vars)
}

fn declared_env_consts() -> BTreeSet<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs"))
        .unwrap();
    let start = src.find("pub mod env {").expect("env module");
    let body = &src[start..];
    let end = body.find("\n}\n").expect("end of env module");
    body[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|rest| rest.split(':').next().unwrap().trim().to_string())
        .filter(|name| name != "ALL")
        .collect()
}

#[test]
fn env_all_lists_every_declared_variable() {
    let all: BTreeSet<String> = env::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(all.len(), env::ALL.len(), "duplicates in env::ALL");
    assert_eq!(
        all,
        declared_env_consts(),
        "env::ALL and the consts of config::env differ"
    );
}

#[test]
fn rendered_variables_are_known_and_complete() {
    for variant in VARIANTS {
        let golden = Golden::load("istiod-compat", variant);
        let (_, vars) = parse(&golden);
        for name in vars.keys() {
            assert!(
                env::ALL.contains(&name.as_str()),
                "{}: istiod-compat does not read {name}",
                golden.file
            );
        }
        for name in REQUIRED {
            assert!(
                vars.contains_key(name),
                "{}: {name} is not set",
                golden.file
            );
        }
    }
}

#[test]
fn rendered_environment_is_accepted_by_the_parser() {
    for variant in VARIANTS {
        let golden = Golden::load("istiod-compat", variant);
        let (cfg, _) = parse(&golden);
        let namespace = namespace_of(golden.one("Deployment"));
        assert_eq!(cfg.registry, RegistryKind::Kubernetes, "{}", golden.file);
        assert_eq!(cfg.pod_namespace, namespace, "{}", golden.file);
        // The Service's in-cluster name is covered by the serving certificate.
        let service = golden.one("Service");
        let host = format!(
            "{}.{}.svc",
            service["metadata"]["name"].as_str().unwrap(),
            namespace_of(service)
        );
        assert!(
            cfg.serving_dns_names().contains(&host),
            "{}: {host} not in {:?}",
            golden.file,
            cfg.serving_dns_names()
        );
        // The node proxy account is ztunnel's service account in ztunnel's namespace.
        let ztunnel = Golden::load("ztunnel", variant);
        let sa = ztunnel.one("ServiceAccount");
        let expected = format!(
            "{}/{}",
            namespace_of(sa),
            sa["metadata"]["name"].as_str().unwrap()
        );
        let trusted: Vec<String> = cfg
            .trusted_node_accounts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(trusted, [expected], "{}", golden.file);
    }
}

#[test]
fn container_and_service_ports_are_the_binarys() {
    for variant in VARIANTS {
        let golden = Golden::load("istiod-compat", variant);
        let (cfg, _) = parse(&golden);
        let container = golden.container("Deployment", "discovery");
        let ports: Vec<(String, u16)> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        let numbers: BTreeSet<u16> = ports.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            numbers,
            BTreeSet::from([
                cfg.xds_plaintext_addr.port(),
                cfg.xds_tls_addr.port(),
                cfg.monitoring_addr.port()
            ]),
            "{}",
            golden.file
        );
        let probe = &container["readinessProbe"]["httpGet"];
        assert_eq!(
            probe["port"].as_u64(),
            Some(u64::from(cfg.monitoring_addr.port()))
        );
        let annotations = &golden.one("Deployment")["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(cfg.monitoring_addr.port().to_string().as_str())
        );
        // Every Service port targets a named container port.
        let service = golden.one("Service");
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            let (_, number) = ports
                .iter()
                .find(|(name, _)| name == target)
                .unwrap_or_else(|| panic!("{}: no container port {target}", golden.file));
            assert_eq!(
                port["port"].as_u64(),
                Some(u64::from(*number)),
                "{}",
                golden.file
            );
        }
    }
}

#[test]
fn ztunnel_uses_what_istiod_compat_serves_and_publishes() {
    for variant in VARIANTS {
        let istiod = Golden::load("istiod-compat", variant);
        let (cfg, _) = parse(&istiod);
        let ztunnel = Golden::load("ztunnel", variant);
        let proxy = ztunnel.container("DaemonSet", "istio-proxy");
        let zt_env = container_env(
            &ztunnel.file,
            proxy,
            namespace_of(ztunnel.one("DaemonSet")),
            &[],
        );
        for var in ["XDS_ADDRESS", "CA_ADDRESS"] {
            let (host, port) = zt_env[var].rsplit_once(':').unwrap();
            assert!(
                cfg.serving_dns_names().iter().any(|n| n == host),
                "{var}={host}"
            );
            assert_eq!(
                port.parse::<u16>().unwrap(),
                cfg.xds_tls_addr.port(),
                "{var}"
            );
        }
        // The root certificate file is the key istiod-compat writes, in the ConfigMap it
        // publishes.
        let root = Path::new(&zt_env["CA_ROOT_CA"]);
        assert_eq!(root.file_name().unwrap(), ROOT_CONFIGMAP_KEY);
        let volume = ztunnel.one("DaemonSet")["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "istiod-ca-cert")
            .unwrap();
        assert_eq!(volume["configMap"]["name"].as_str(), Some(ROOT_CONFIGMAP));
    }
}
