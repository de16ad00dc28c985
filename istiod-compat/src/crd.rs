//! `security.istio.io/v1` AuthorizationPolicy and PeerAuthentication, written from Istio's
//! public API documentation (only the fields an L4 control plane reads; unknown fields are
//! kept out of the way by serde's default of ignoring them).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selects workloads by pod labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pods whose labels include all of these.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// AuthorizationPolicy spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; absent = the whole namespace (or mesh, in the root
    /// namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// Rules, OR'd. Absent with ALLOW = deny all; an empty rule `{}` matches everything.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    /// Deprecated single target (a Gateway, waypoint or Service): such policies are enforced
    /// by waypoints and gateways, never by node proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Targets (see `target_ref`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
}

/// `targetRef(s)` entry of a policy: the Gateway API object it attaches to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group (`gateway.networking.k8s.io`, or empty for core).
    #[serde(default)]
    pub group: String,
    /// Kind (`Gateway`, `Service`, `ServiceEntry`, ...).
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// Namespace of the target (defaults to the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One rule: every present part must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Sources (OR'd).
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations (OR'd).
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions (AND'd).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    /// The source.
    #[serde(default)]
    pub source: Source,
}

/// `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation.
    #[serde(default)]
    pub operation: Operation,
}

/// Source fields (L4 ones are enforceable by the node proxy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// mTLS principals (`cluster.local/ns/x/sa/y`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negated principals.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals (L7 only).
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negated JWT principals (L7 only).
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Source namespaces (from the mTLS identity).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negated namespaces.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Source IP blocks.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Negated IP blocks.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Client IPs from headers (L7 only).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Negated remote IPs (L7 only).
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts as `namespace/name` (newer Istio).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Negated service accounts.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// Operation fields (ports are L4; the rest are L7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Destination ports (strings in the Istio API).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Negated ports.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Hosts (L7).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negated hosts (L7).
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Methods (L7).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negated methods (L7).
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (L7).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Negated paths (L7).
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A `when` condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Attribute name, e.g. `source.ip`, `request.headers[x]`.
    pub key: String,
    /// Allowed values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Refused values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// PeerAuthentication spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; absent = namespace-wide (mesh-wide in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS mode.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides (only with a selector).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// `mtls` settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// `UNSET`, `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default)]
    pub mode: Option<String>,
}
