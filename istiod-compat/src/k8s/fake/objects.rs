//! Small builders for the objects tests put into the fake apiserver. Each returns a plain
//! k8s-openapi / CRD value, so tests can adjust any field before applying it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Namespace, Node, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{
    AuthorizationPolicy, AuthorizationPolicySpec, MutualTls, PeerAuthentication,
    PeerAuthenticationSpec,
};

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn meta(namespace: Option<&str>, name: &str, label_pairs: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(String::from),
        labels: labels(label_pairs),
        ..Default::default()
    }
}

/// A Namespace with labels (e.g. `("istio.io/dataplane-mode", "ambient")`).
pub fn namespace(name: &str, label_pairs: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, label_pairs),
        ..Default::default()
    }
}

/// A Node.
pub fn node(name: &str) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        ..Default::default()
    }
}

/// A running Pod with a service account, node and IP.
pub fn pod(
    namespace: &str,
    name: &str,
    service_account: &str,
    node: &str,
    ip: &str,
    label_pairs: &[(&str, &str)],
) -> Pod {
    Pod {
        metadata: meta(Some(namespace), name, label_pairs),
        spec: Some(PodSpec {
            service_account_name: Some(service_account.to_string()),
            node_name: Some(node.to_string()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
            ..Default::default()
        }),
    }
}

/// A ClusterIP Service selecting `selector`, with TCP `ports` (port = targetPort).
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[i32],
    selector: &[(&str, &str)],
) -> Service {
    Service {
        metadata: meta(Some(namespace), name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            selector: labels(selector),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        port: *p,
                        protocol: Some("TCP".to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An IPv4 EndpointSlice of `service` with one endpoint per address.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    addresses: &[&str],
    ports: &[i32],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some(namespace),
            name,
            &[("kubernetes.io/service-name", service)],
        ),
        address_type: "IPv4".to_string(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![a.to_string()],
                ..Default::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|p| EndpointPort {
                    port: Some(*p),
                    protocol: Some("TCP".to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// An AuthorizationPolicy.
pub fn authorization_policy(
    namespace: &str,
    name: &str,
    spec: AuthorizationPolicySpec,
) -> AuthorizationPolicy {
    let mut policy = AuthorizationPolicy::new(name, spec);
    policy.metadata.namespace = Some(namespace.to_string());
    policy
}

/// A namespace-wide PeerAuthentication with an mTLS mode (`STRICT`, `PERMISSIVE`, ...).
pub fn peer_authentication(namespace: &str, name: &str, mode: &str) -> PeerAuthentication {
    let mut pa = PeerAuthentication::new(
        name,
        PeerAuthenticationSpec {
            mtls: Some(MutualTls {
                mode: Some(mode.to_string()),
            }),
            ..Default::default()
        },
    );
    pa.metadata.namespace = Some(namespace.to_string());
    pa
}
