//! Data-path errors, classified for access logs and metrics (`response_flag`).

use std::io;
use std::net::SocketAddr;

use http::StatusCode;

use crate::identity::IdentityError;
use crate::proxy::hbone::{HboneError, SetupStage};
use crate::rbac;
use crate::tls::TlsError;

/// Why a proxied connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A connection to one of the proxy's own capture ports.
    #[error("refusing self-call to {0} (proxy port)")]
    SelfCall(SocketAddr),
    /// The workload this proxy serves is not in the configuration.
    #[error("local workload {0} not found in configuration")]
    UnknownLocalWorkload(String),
    /// A service with no usable endpoint.
    #[error("no healthy upstream for service {0}")]
    NoHealthyUpstream(String),
    /// The destination workload has no address of a usable family.
    #[error("workload {0} has no usable IP address")]
    NoAddress(String),
    /// The original destination could not be read.
    #[error("reading original destination: {0}")]
    OriginalDst(#[source] io::Error),
    /// TCP connect to the next hop failed.
    #[error("connecting to {dst}: {source}")]
    Connect {
        /// Where.
        dst: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No certificate for an identity.
    #[error("certificate: {0}")]
    Identity(#[from] IdentityError),
    /// TLS setup or handshake failed.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// TLS handshake I/O failed.
    #[error("tls handshake with {peer}: {source}")]
    TlsHandshake {
        /// Peer.
        peer: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// HBONE (HTTP/2) failure.
    #[error("hbone: {0}")]
    Hbone(#[from] HboneError),
    /// Authorization denied.
    #[error("{0}")]
    Denied(#[from] rbac::Denied),
    /// The CONNECT authority does not name this workload.
    #[error("authority {authority} does not target this workload ({local})")]
    IpMismatch {
        /// Requested.
        authority: String,
        /// Our address.
        local: SocketAddr,
    },
    /// Unparseable authority.
    #[error("bad authority {0:?}")]
    BadAuthority(String),
    /// No service port / target port for a hostname authority.
    #[error("no target port for {0}")]
    NoTargetPort(String),
    /// A policy change revoked the connection.
    #[error("connection closed due to policy change")]
    Revoked,
    /// Client-side protocol error (SOCKS5 etc.).
    #[error("client protocol error: {0}")]
    Protocol(String),
    /// Copy failed mid-stream.
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

impl ProxyError {
    /// Istio's `response_flags` value for this failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            ProxyError::Denied(_) | ProxyError::Revoked => "DENY",
            ProxyError::Connect { source, .. } if source.kind() == io::ErrorKind::TimedOut => {
                "CONNECT"
            }
            ProxyError::Connect { .. } | ProxyError::NoHealthyUpstream(_) => "CONNECT",
            ProxyError::Tls(_) | ProxyError::TlsHandshake { .. } => "TLS_FAILURE",
            ProxyError::Hbone(e) => match e.setup_stage() {
                Some(SetupStage::Certificate) => "IDENTITY_ERROR",
                Some(SetupStage::TlsConfig | SetupStage::TlsHandshake) => "TLS_FAILURE",
                Some(SetupStage::TcpTimeout) => "NETWORK_POLICY",
                Some(SetupStage::TcpConnect) => "CONNECT",
                None => "H2_HANDSHAKE_FAILURE",
            },
            ProxyError::Identity(_) => "IDENTITY_ERROR",
            _ => "-",
        }
    }

    /// The HBONE status the inbound side answers with (reference §5.3).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadAuthority(_) | ProxyError::IpMismatch { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}
