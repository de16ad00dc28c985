//! Who is calling: bearer tokens turned into a service-account identity and (when known)
//! the node the caller runs on.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Namespace of the caller's service account.
    pub namespace: String,
    /// The caller's service account.
    pub service_account: String,
    /// The node the caller runs on, when the token says so (bound pod or node claims, or a
    /// per-node token file).
    pub node: Option<String>,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is not valid (unknown, expired, wrong audience).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token reviewer could not be reached.
    #[error("token review unavailable: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a [`Caller`]: Kubernetes TokenReview (audience `istio-ca`) or
/// the local files registry's per-node token files.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `token`.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}
