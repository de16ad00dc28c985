//! Istio L4 authorization semantics (reference §13): matching one policy against one
//! connection. Which policies apply, and the DENY-before-ALLOW order, live in
//! `ProxyState::assert_rbac`.

use std::net::{IpAddr, SocketAddr};

use mesh_core::Identity;

use crate::state::{Authorization, PolicyMatch, ServiceAccountMatch, StringMatch};

#[cfg(test)]
mod tests;

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
    ///
    /// Rules are OR'd (no rules: nothing matches, so an empty ALLOW blocks everything and
    /// an empty DENY does nothing); a rule's clauses are AND'd (a rule without clauses
    /// matches everything, an empty clause is true); a clause's matches are OR'd, and an
    /// entirely empty match never matches.
    pub fn matches(&self, conn: &RbacConnection) -> bool {
        self.matches_peer(&Peer::of(conn))
    }

    /// [`Authorization::matches`] with the connection facts already computed (they are the
    /// same for every policy evaluated against one connection).
    pub(crate) fn matches_peer(&self, peer: &Peer<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter()
                .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(peer)))
        })
    }
}

/// The facts about a connection that policies look at, computed once per evaluation.
pub(crate) struct Peer<'a> {
    /// The peer identity without `spiffe://`; empty for plaintext.
    principal: String,
    identity: Option<&'a Identity>,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
}

impl<'a> Peer<'a> {
    pub(crate) fn of(conn: &'a RbacConnection) -> Self {
        let principal = conn
            .src_identity
            .as_ref()
            .map(|id| {
                let full = id.to_string();
                match full.strip_prefix("spiffe://") {
                    Some(rest) => rest.to_string(),
                    // Not a SPIFFE URI: Istio treats it as no principal at all.
                    None => String::new(),
                }
            })
            .unwrap_or_default();
        Peer {
            principal,
            identity: conn.src_identity.as_ref(),
            // A dual-stack listener reports IPv4 peers as v4-mapped v6; policy CIDRs are
            // written against the plain IPv4 form.
            src_ip: conn.src.ip().to_canonical(),
            dst_ip: conn.dst.ip().to_canonical(),
            dst_port: conn.dst.port(),
        }
    }

    fn namespace(&self) -> &str {
        self.identity.map(Identity::namespace).unwrap_or_default()
    }
}

impl PolicyMatch {
    fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
    }

    /// Every field kind that is present must hold.
    fn matches(&self, peer: &Peer<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        let ns = peer.namespace();
        holds(&self.namespaces, &self.not_namespaces, |m| {
            string_matches(m, ns)
        }) && holds(&self.principals, &self.not_principals, |m| {
            string_matches(m, &peer.principal)
        }) && holds(&self.source_ips, &self.not_source_ips, |net| {
            net.contains(&peer.src_ip)
        }) && holds(&self.destination_ips, &self.not_destination_ips, |net| {
            net.contains(&peer.dst_ip)
        }) && holds(
            &self.destination_ports,
            &self.not_destination_ports,
            |port| *port == peer.dst_port,
        ) && holds(&self.service_accounts, &self.not_service_accounts, |sa| {
            service_account_matches(sa, peer.identity)
        })
    }
}

/// A positive list (any entry must match, if non-empty) and its negative list (no entry
/// may match).
fn holds<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

/// An empty value (no identity) fails every matcher, including `Exact("")` and `Presence`.
fn string_matches(m: &StringMatch, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    match m {
        StringMatch::Exact(s) => value == s,
        StringMatch::Prefix(s) => value.starts_with(s.as_str()),
        StringMatch::Suffix(s) => value.ends_with(s.as_str()),
        StringMatch::Presence => true,
    }
}

fn service_account_matches(sa: &ServiceAccountMatch, identity: Option<&Identity>) -> bool {
    identity.is_some_and(|id| {
        id.namespace() == sa.namespace && id.service_account() == sa.service_account
    })
}
