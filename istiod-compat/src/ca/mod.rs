//! The Istio CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`, reference §8).
//!
//! Every request is authenticated (`authorization: Bearer <token>` through an
//! [`Authenticator`]), its CSR verified (`mesh_ca::Csr`: signature, P-256 or RSA, exactly one
//! URI SAN, a SPIFFE identity of our trust domain), and the identity decided:
//!
//! - with `ImpersonatedIdentity` in the metadata, only for a trusted node proxy account
//!   (`CA_TRUSTED_NODE_ACCOUNTS`, default `istio-system/ztunnel`) whose token names its node,
//!   and only for an identity with a pod on that node (`identities_by_node`);
//! - otherwise the CSR must be for the caller's own identity.
//!
//! The lifetime is the requested one capped at the maximum (unset, zero or negative: the
//! maximum). The response is the leaf, the intermediates, and the root bundle last. Every
//! refusal is a gRPC status, a log line and a count by outcome.

pub mod auth;
mod service;
pub mod serving;
mod tokens;

pub use service::{CaMetrics, CaPolicy, CaServer, NodeAccount, NodeIdentities, Outcome};
pub use tokens::{FileTokenAuthenticator, TokenFileError};
