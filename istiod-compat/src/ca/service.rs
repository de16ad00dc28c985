//! `CreateCertificate`: authentication, CSR validation, the identity decision, signing.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{Ca, Csr, Validity, pem_certificate};
use mesh_core::Identity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost_types::value::Kind;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use xds_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use xds_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};

use super::auth::{AuthError, Authenticator, Caller};
use crate::translate::XdsSnapshot;

/// The metadata key a node proxy uses to ask for another identity.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A service account allowed to impersonate identities of pods on its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct NodeAccount {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl FromStr for NodeAccount {
    type Err = String;

    /// `<namespace>/<service account>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok(NodeAccount {
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err(format!("{s:?} is not <namespace>/<serviceAccount>")),
        }
    }
}

impl fmt::Display for NodeAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// Which identities run on which node (the CA signs only those for that node's proxy).
pub trait NodeIdentities: Send + Sync + 'static {
    /// Whether a pod with `identity` (a SPIFFE URI) runs on `node`.
    fn runs_on(&self, node: &str, identity: &str) -> bool;
}

impl NodeIdentities for watch::Receiver<Arc<XdsSnapshot>> {
    fn runs_on(&self, node: &str, identity: &str) -> bool {
        self.borrow()
            .identities_by_node
            .get(node)
            .is_some_and(|ids| ids.contains(identity))
    }
}

/// What the CA allows.
#[derive(Debug, Clone)]
pub struct CaPolicy {
    /// Accounts allowed to impersonate (node proxies).
    pub trusted_node_accounts: BTreeSet<NodeAccount>,
    /// Longest certificate lifetime; also the lifetime when none is requested.
    pub max_ttl: Duration,
}

/// The outcome of a request, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A certificate was issued.
    Issued,
    /// No or an invalid token.
    Unauthenticated,
    /// A malformed request (CSR, SAN, metadata).
    InvalidArgument,
    /// The caller may not have that identity.
    PermissionDenied,
    /// Authentication could not be completed.
    Unavailable,
    /// Signing failed.
    Internal,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::InvalidArgument => "invalid_argument",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::Unavailable => "unavailable",
            Outcome::Internal => "internal",
        }
    }

    fn code(self) -> Code {
        match self {
            Outcome::Issued => Code::Ok,
            Outcome::Unauthenticated => Code::Unauthenticated,
            Outcome::InvalidArgument => Code::InvalidArgument,
            Outcome::PermissionDenied => Code::PermissionDenied,
            Outcome::Unavailable => Code::Unavailable,
            Outcome::Internal => Code::Internal,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// CA metrics.
#[derive(Debug, Default)]
pub struct CaMetrics {
    requests: Family<OutcomeLabel, Counter>,
}

impl CaMetrics {
    /// Registers `istiod_compat_ca_requests_total{outcome}`.
    pub fn register(&self, registry: &mut Registry) {
        registry
            .sub_registry_with_prefix("istiod_compat_ca")
            .register(
                "requests",
                "CreateCertificate requests by outcome",
                self.requests.clone(),
            );
    }

    /// Requests with `outcome` so far.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .get()
    }

    fn count(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }
}

/// A refused request.
struct Refusal {
    outcome: Outcome,
    reason: String,
}

impl Refusal {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Self {
        Refusal {
            outcome,
            reason: reason.into(),
        }
    }
}

/// The CA service. Cheap to clone.
#[derive(Clone)]
pub struct CaServer {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<Ca>,
    authenticator: Arc<dyn Authenticator>,
    nodes: Arc<dyn NodeIdentities>,
    policy: CaPolicy,
    metrics: Arc<CaMetrics>,
}

impl fmt::Debug for CaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaServer")
            .field("ca", &self.inner.ca)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl CaServer {
    /// A CA signing with `ca` for callers `authenticator` recognizes.
    pub fn new(
        ca: Arc<Ca>,
        authenticator: Arc<dyn Authenticator>,
        nodes: Arc<dyn NodeIdentities>,
        policy: CaPolicy,
        metrics: Arc<CaMetrics>,
    ) -> CaServer {
        CaServer {
            inner: Arc::new(Inner {
                ca,
                authenticator,
                nodes,
                policy,
                metrics,
            }),
        }
    }

    /// The tonic service.
    pub fn into_service(self) -> IstioCertificateServiceServer<CaServer> {
        IstioCertificateServiceServer::new(self)
    }

    async fn create(
        &self,
        metadata: &MetadataMap,
        req: &IstioCertificateRequest,
        caller: &mut Option<Caller>,
    ) -> Result<(Identity, Duration, Vec<String>), Refusal> {
        let inner = &self.inner;
        let token = bearer_token(metadata)?;
        let who = inner
            .authenticator
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthError::Missing | AuthError::Invalid(_) => {
                    Refusal::new(Outcome::Unauthenticated, e.to_string())
                }
                AuthError::Unavailable(_) => Refusal::new(Outcome::Unavailable, e.to_string()),
            })?;
        let caller = caller.insert(who);

        let csr = Csr::parse_pem(&req.csr)
            .map_err(|e| Refusal::new(Outcome::InvalidArgument, e.to_string()))?;
        let san = self.our_identity(csr.uri_san(), "CSR SAN")?;
        let identity = match impersonated(req)? {
            Some(requested) => {
                let requested = self.our_identity(&requested, IMPERSONATED_IDENTITY)?;
                self.check_impersonation(caller, &requested)?;
                if san != requested {
                    return Err(Refusal::new(
                        Outcome::InvalidArgument,
                        format!("CSR SAN {san} does not match {IMPERSONATED_IDENTITY} {requested}"),
                    ));
                }
                requested
            }
            None => {
                let own = Identity::new(
                    inner.ca.trust_domain(),
                    &caller.namespace,
                    &caller.service_account,
                );
                if san != own {
                    return Err(Refusal::new(
                        Outcome::PermissionDenied,
                        format!("caller {own} may not request a certificate for {san}"),
                    ));
                }
                own
            }
        };

        let ttl = self.ttl(req.validity_duration);
        let validity =
            Validity::from_now(ttl).map_err(|e| Refusal::new(Outcome::Internal, e.to_string()))?;
        let chain = inner
            .ca
            .sign_verified_csr(&csr, &identity, validity)
            .map_err(|e| Refusal::new(Outcome::Internal, format!("signing: {e}")))?;
        let mut pems: Vec<String> = chain.iter().map(|c| pem_certificate(c)).collect();
        pems.push(inner.ca.root_bundle_pem());
        Ok((identity, ttl, pems))
    }

    /// Parses a SPIFFE identity of our trust domain.
    fn our_identity(&self, s: &str, what: &str) -> Result<Identity, Refusal> {
        let id: Identity = s.parse().map_err(|e| {
            Refusal::new(
                Outcome::InvalidArgument,
                format!("{what} is not a SPIFFE identity: {e}"),
            )
        })?;
        let td = self.inner.ca.trust_domain();
        if id.trust_domain() != td {
            return Err(Refusal::new(
                Outcome::InvalidArgument,
                format!("{what} {id} is not in trust domain {td}"),
            ));
        }
        Ok(id)
    }

    fn check_impersonation(&self, caller: &Caller, requested: &Identity) -> Result<(), Refusal> {
        let account = NodeAccount {
            namespace: caller.namespace.clone(),
            service_account: caller.service_account.clone(),
        };
        if !self.inner.policy.trusted_node_accounts.contains(&account) {
            return Err(Refusal::new(
                Outcome::PermissionDenied,
                format!(
                    "{account} is not a trusted node account and may not impersonate {requested}"
                ),
            ));
        }
        let Some(node) = caller.node.as_deref() else {
            return Err(Refusal::new(
                Outcome::PermissionDenied,
                format!(
                    "the token of {account} names no node, so it may not impersonate {requested}"
                ),
            ));
        };
        if !self.inner.nodes.runs_on(node, &requested.to_string()) {
            return Err(Refusal::new(
                Outcome::PermissionDenied,
                format!("no pod with identity {requested} runs on node {node}"),
            ));
        }
        Ok(())
    }

    /// The requested lifetime capped at the maximum; unset, zero or negative → maximum.
    fn ttl(&self, requested_secs: i64) -> Duration {
        let max = self.inner.policy.max_ttl;
        match u64::try_from(requested_secs) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(max),
            _ => max,
        }
    }
}

/// `authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Refusal> {
    let missing = || Refusal::new(Outcome::Unauthenticated, AuthError::Missing.to_string());
    let value = metadata
        .get("authorization")
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| {
            Refusal::new(
                Outcome::Unauthenticated,
                "authorization header is not ASCII",
            )
        })?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// The `ImpersonatedIdentity` metadata string, if any.
fn impersonated(req: &IstioCertificateRequest) -> Result<Option<String>, Refusal> {
    let Some(value) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        _ => Err(Refusal::new(
            Outcome::InvalidArgument,
            format!("{IMPERSONATED_IDENTITY} must be a string"),
        )),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr();
        let mut caller = None;
        let result = self
            .create(request.metadata(), request.get_ref(), &mut caller)
            .await;
        let caller = caller.map(|c| {
            format!(
                "{}/{}{}",
                c.namespace,
                c.service_account,
                c.node.map(|n| format!(" on node {n}")).unwrap_or_default()
            )
        });
        match result {
            Ok((identity, ttl, cert_chain)) => {
                self.inner.metrics.count(Outcome::Issued);
                info!(
                    caller = caller.as_deref().unwrap_or("-"),
                    %identity,
                    ttl_secs = ttl.as_secs(),
                    "certificate issued"
                );
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(refusal) => {
                self.inner.metrics.count(refusal.outcome);
                warn!(
                    caller = caller.as_deref().unwrap_or("-"),
                    peer = ?peer,
                    outcome = refusal.outcome.label(),
                    reason = %refusal.reason,
                    "certificate request refused"
                );
                Err(Status::new(refusal.outcome.code(), refusal.reason))
            }
        }
    }
}
