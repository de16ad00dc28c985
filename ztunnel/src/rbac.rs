//! Istio L4 authorization semantics (reference §13): matching one policy against one
//! connection. Which policies apply, and the DENY-before-ALLOW order, live in
//! `ProxyState::assert_rbac`.

use std::net::SocketAddr;

use mesh_core::Identity;

use crate::state::Authorization;

/// What a policy is evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacConnection {
    /// Client address as seen by the proxy.
    pub src: SocketAddr,
    /// Client identity from mTLS; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// Destination: the pod IP and the resolved target port.
    pub dst: SocketAddr,
    /// Destination network.
    pub dst_network: String,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A DENY policy matched.
    #[error("explicitly denied by policy {namespace}/{name}")]
    ExplicitlyDenied {
        /// Policy namespace.
        namespace: String,
        /// Policy name.
        name: String,
    },
    /// ALLOW policies exist and none matched.
    #[error("allow policies exist, but none allowed")]
    NotAllowed,
}

impl Authorization {
    /// Whether this policy's rules match `conn` (ignores action and dry-run).
    pub fn matches(&self, conn: &RbacConnection) -> bool {
        let _ = conn;
        todo!()
    }
}
