//! A small model of the node proxy's L4 policy evaluation (reference §13), used to check
//! the effect of translated policies.

use std::net::IpAddr;

use xds_proto::security::{
    Action, Address, Authorization, Match, Scope, StringMatch, string_match::MatchType,
};
use xds_proto::workload::Workload;

use crate::translate::XdsSnapshot;

/// A connection as the destination's proxy sees it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u32,
    /// `(trust domain, namespace, service account)` of an mTLS peer.
    pub identity: Option<(&'static str, &'static str, &'static str)>,
}

impl Conn {
    pub fn mtls(ns: &'static str, sa: &'static str, port: u32) -> Conn {
        Conn {
            src: [10, 0, 1, 2].into(),
            dst: [10, 0, 2, 2].into(),
            port,
            identity: Some(("cluster.local", ns, sa)),
        }
    }

    pub fn plaintext(port: u32) -> Conn {
        Conn {
            identity: None,
            ..Conn::mtls("", "", port)
        }
    }
}

/// The policies that apply to `w`.
pub fn applicable<'a>(x: &'a XdsSnapshot, w: &Workload) -> Vec<&'a Authorization> {
    x.authorizations
        .iter()
        .filter(|(key, v)| {
            let p = &v.resource;
            match Scope::try_from(p.scope) {
                Ok(Scope::Global) => true,
                Ok(Scope::Namespace) => p.namespace == w.namespace,
                _ => w.authorization_policies.contains(key),
            }
        })
        .map(|(_, v)| &v.resource)
        .collect()
}

/// Istio's decision: a DENY match denies; no ALLOW policy allows; else an ALLOW must match.
pub fn allowed(policies: &[&Authorization], conn: &Conn) -> bool {
    let live: Vec<_> = policies.iter().filter(|p| !p.dry_run).collect();
    let is = |p: &&&Authorization, a: Action| p.action == a as i32;
    if live.iter().any(|p| is(p, Action::Deny) && matches(p, conn)) {
        return false;
    }
    let allows: Vec<_> = live.iter().filter(|p| is(p, Action::Allow)).collect();
    allows.is_empty() || allows.iter().any(|p| matches(p, conn))
}

pub fn matches(p: &Authorization, conn: &Conn) -> bool {
    p.rules.iter().any(|r| {
        r.clauses
            .iter()
            .all(|c| c.matches.is_empty() || c.matches.iter().any(|m| match_one(m, conn)))
    })
}

fn match_one(m: &Match, c: &Conn) -> bool {
    if *m == Match::default() {
        return false;
    }
    let principal = c
        .identity
        .map(|(td, ns, sa)| format!("{td}/ns/{ns}/sa/{sa}"))
        .unwrap_or_default();
    let namespace = c.identity.map(|(_, ns, _)| ns).unwrap_or_default();
    field(&m.principals, &m.not_principals, |s| string(s, &principal))
        && field(&m.namespaces, &m.not_namespaces, |s| string(s, namespace))
        && field(&m.source_ips, &m.not_source_ips, |a| cidr(a, c.src))
        && field(&m.destination_ips, &m.not_destination_ips, |a| {
            cidr(a, c.dst)
        })
        && field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == c.port
        })
        && field(&m.service_accounts, &m.not_service_accounts, |s| {
            c.identity
                .is_some_and(|(_, ns, sa)| s.namespace == ns && s.service_account == sa)
        })
}

fn field<T>(pos: &[T], neg: &[T], f: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || pos.iter().any(&f)) && !neg.iter().any(&f)
}

fn string(s: &StringMatch, v: &str) -> bool {
    match &s.match_type {
        Some(MatchType::Exact(x)) => v == x,
        Some(MatchType::Prefix(x)) => v.starts_with(x.as_str()),
        Some(MatchType::Suffix(x)) => v.ends_with(x.as_str()),
        Some(MatchType::Presence(())) => !v.is_empty(),
        None => false,
    }
}

fn cidr(a: &Address, ip: IpAddr) -> bool {
    let bits = |ip: IpAddr| -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        }
    };
    let net = match a.address.len() {
        4 => <[u8; 4]>::try_from(a.address.as_slice())
            .map(IpAddr::from)
            .ok(),
        16 => <[u8; 16]>::try_from(a.address.as_slice())
            .map(IpAddr::from)
            .ok(),
        _ => None,
    };
    let Some(net) = net else { return false };
    if net.is_ipv4() != ip.is_ipv4() || a.length > 128 {
        return false;
    }
    let mask = if a.length == 0 {
        0
    } else {
        u128::MAX << (128 - a.length)
    };
    bits(net) & mask == bits(ip) & mask
}
