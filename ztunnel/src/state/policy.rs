use ipnet::IpNet;
use serde::Serialize;

/// Where a policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyScope {
    /// Every workload in the mesh (root-namespace policies).
    Global,
    /// Every workload in `namespace`.
    Namespace,
    /// Only workloads that list the policy in `authorization_policies`.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyAction {
    /// Permit the connection.
    Allow,
    /// Refuse the connection.
    Deny,
}

/// A string matcher, as in Istio's `StringMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

/// Matches an identity's namespace and service account exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Namespace of the identity.
    pub namespace: String,
    /// Service account of the identity.
    pub service_account: String,
}

/// One match: every field kind that is non-empty must hold (AND); within a positive list
/// any entry may match (OR), within a negative list none may.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Source identity namespace is one of these.
    pub namespaces: Vec<StringMatch>,
    /// Source identity namespace is none of these.
    pub not_namespaces: Vec<StringMatch>,
    /// Source principal (identity without `spiffe://`) is one of these.
    pub principals: Vec<StringMatch>,
    /// Source principal is none of these.
    pub not_principals: Vec<StringMatch>,
    /// Source IP is in one of these CIDRs.
    pub source_ips: Vec<IpNet>,
    /// Source IP is in none of these CIDRs.
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP is in one of these CIDRs.
    pub destination_ips: Vec<IpNet>,
    /// Destination IP is in none of these CIDRs.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination (target) port is one of these.
    pub destination_ports: Vec<u16>,
    /// Destination (target) port is none of these.
    pub not_destination_ports: Vec<u16>,
    /// Source identity is one of these service accounts.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source identity is none of these service accounts.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// A clause: its matches are OR'd; an empty clause is true.
pub type PolicyClause = Vec<PolicyMatch>;
/// A rule: its clauses are AND'd.
pub type PolicyRule = Vec<PolicyClause>;

/// An L4 authorization policy (Istio's `istio.security.Authorization`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Name.
    pub name: String,
    /// Namespace ("" for global policies is allowed).
    pub namespace: String,
    /// Scope.
    pub scope: PolicyScope,
    /// Action.
    pub action: PolicyAction,
    /// Rules, OR'd. No rules matches nothing.
    pub rules: Vec<PolicyRule>,
    /// Evaluate and log, never enforce.
    pub dry_run: bool,
}

impl Authorization {
    /// The store key, `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
