//! `AuthorizationPolicy` → `istio.security.Authorization`, as istiod converts policies for
//! node proxies.
//!
//! Shape: each policy rule becomes one `Rule` whose clauses are AND'd: one clause for `from`
//! (one `Match` per source, OR'd), one for `to` (one `Match` per operation, OR'd) and one
//! per `when` condition. A source or operation with no L4 constraint left matches anything,
//! so its clause is left out (the node proxy never matches an *empty* `Match`).
//!
//! What node proxies cannot enforce (L7 fields, `when` keys other than the five L4 ones, and
//! values that do not parse) is never allowed to widen access:
//! - an ALLOW rule that uses any of it is dropped, so it never matches (an ALLOW policy left
//!   with no rules denies everything it selects), as istiod does for ztunnel;
//! - a DENY rule keeps its L4 parts only, so it denies *more* (a positive list with a bad
//!   entry becomes unconstrained; a bad entry of a negative list is dropped).
//!
//! Both cases add a warning. AUDIT and CUSTOM policies, and policies with `targetRef(s)`
//! (enforced by waypoints and gateways), are not sent.
//!
//! Scope: no selector → NAMESPACE (GLOBAL in the root namespace); a selector → WORKLOAD_SELECTOR,
//! listed on the pods it selects (in its namespace, or in every namespace from the root
//! namespace). An empty selector (`selector: {}`) selects every pod of its namespace.

use xds_proto::security::{
    Action, Address, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match::MatchType,
};

use super::common::{self, ANNOTATION_DRY_RUN};
use crate::crd::{self, AuthorizationPolicy};

/// `when` keys node proxies evaluate.
pub const L4_WHEN_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "destination.ip",
];

/// Converts one policy; `None` (with a warning) when it is not for node proxies.
pub fn convert(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
    warnings: &mut Vec<String>,
) -> Option<Authorization> {
    let name = common::name(&policy.metadata);
    let namespace = common::namespace(&policy.metadata);
    let id = format!("AuthorizationPolicy {namespace}/{name}");
    if name.is_empty() {
        warnings.push(format!("{id}: no name; skipped"));
        return None;
    }
    let spec = &policy.spec;
    if let Some(target) = spec.target_ref.iter().chain(&spec.target_refs).next() {
        warnings.push(format!(
            "{id}: targets {} {}: enforced by waypoints or gateways, not sent to node proxies",
            target.kind, target.name
        ));
        return None;
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" | "" => Action::Allow,
        "DENY" => Action::Deny,
        other @ ("AUDIT" | "CUSTOM") => {
            warnings.push(format!(
                "{id}: action {other} is not enforced by node proxies; not sent"
            ));
            return None;
        }
        other => {
            warnings.push(format!("{id}: unknown action {other:?}; not sent"));
            return None;
        }
    };
    let scope = match (&spec.selector, namespace == root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let dry_run = common::annotations(&policy.metadata)
        .get(ANNOTATION_DRY_RUN)
        .is_some_and(|v| v == "true");

    let mut rules = Vec::new();
    for (index, rule) in spec.rules.iter().flatten().enumerate() {
        let mut problems = Vec::new();
        let converted = convert_rule(rule, &mut problems);
        if problems.is_empty() {
            rules.push(converted);
        } else if action == Action::Allow {
            warnings.push(format!(
                "{id} rule {index}: {}: node proxies enforce L4 only, so this ALLOW rule is \
                 dropped (it never matches)",
                problems.join("; ")
            ));
        } else {
            warnings.push(format!(
                "{id} rule {index}: {}: ignored, so this DENY rule matches more traffic",
                problems.join("; ")
            ));
            rules.push(converted);
        }
    }

    Some(Authorization {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run,
        extensions: Vec::new(),
    })
}

/// The L4 form of one rule; everything that could not be represented is described in
/// `problems` (the caller decides, by action, what that means).
fn convert_rule(rule: &crd::Rule, problems: &mut Vec<String>) -> Rule {
    let mut clauses = Vec::new();

    if !rule.from.is_empty() {
        let matches: Vec<Match> = rule
            .from
            .iter()
            .map(|f| source_match(&f.source, problems))
            .collect();
        push_clause(&mut clauses, matches);
    }
    if !rule.to.is_empty() {
        let matches: Vec<Match> = rule
            .to
            .iter()
            .map(|t| operation_match(&t.operation, problems))
            .collect();
        push_clause(&mut clauses, matches);
    }
    for condition in &rule.when {
        if let Some(m) = condition_match(condition, problems) {
            push_clause(&mut clauses, vec![m]);
        }
    }
    Rule { clauses }
}

/// Adds a clause of OR'd matches, unless one of them is unconstrained (then the clause is
/// always true and leaving it out says so; an empty `Match` would instead never match).
fn push_clause(clauses: &mut Vec<Clause>, matches: Vec<Match>) {
    if matches.iter().any(is_unconstrained) {
        return;
    }
    clauses.push(Clause { matches });
}

fn is_unconstrained(m: &Match) -> bool {
    m.namespaces.is_empty()
        && m.not_namespaces.is_empty()
        && m.principals.is_empty()
        && m.not_principals.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty()
}

fn source_match(s: &crd::Source, problems: &mut Vec<String>) -> Match {
    l7(
        problems,
        "from.source.requestPrincipals",
        &s.request_principals,
    );
    l7(
        problems,
        "from.source.notRequestPrincipals",
        &s.not_request_principals,
    );
    l7(problems, "from.source.remoteIpBlocks", &s.remote_ip_blocks);
    l7(
        problems,
        "from.source.notRemoteIpBlocks",
        &s.not_remote_ip_blocks,
    );
    Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        source_ips: list(
            &s.ip_blocks,
            Polarity::Positive,
            "from.source.ipBlocks",
            cidr,
            problems,
        ),
        not_source_ips: list(
            &s.not_ip_blocks,
            Polarity::Negative,
            "from.source.notIpBlocks",
            cidr,
            problems,
        ),
        service_accounts: list(
            &s.service_accounts,
            Polarity::Positive,
            "from.source.serviceAccounts",
            service_account,
            problems,
        ),
        not_service_accounts: list(
            &s.not_service_accounts,
            Polarity::Negative,
            "from.source.notServiceAccounts",
            service_account,
            problems,
        ),
        ..Match::default()
    }
}

fn operation_match(o: &crd::Operation, problems: &mut Vec<String>) -> Match {
    l7(problems, "to.operation.hosts", &o.hosts);
    l7(problems, "to.operation.notHosts", &o.not_hosts);
    l7(problems, "to.operation.methods", &o.methods);
    l7(problems, "to.operation.notMethods", &o.not_methods);
    l7(problems, "to.operation.paths", &o.paths);
    l7(problems, "to.operation.notPaths", &o.not_paths);
    Match {
        destination_ports: list(
            &o.ports,
            Polarity::Positive,
            "to.operation.ports",
            common::parse_port,
            problems,
        ),
        not_destination_ports: list(
            &o.not_ports,
            Polarity::Negative,
            "to.operation.notPorts",
            common::parse_port,
            problems,
        ),
        ..Match::default()
    }
}

/// One `when` condition as a single match; `None` (with a problem) when not L4.
fn condition_match(c: &crd::Condition, problems: &mut Vec<String>) -> Option<Match> {
    if !L4_WHEN_KEYS.contains(&c.key.as_str()) {
        problems.push(format!("when key {:?} is not L4", c.key));
        return None;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        problems.push(format!("when key {:?} has no values", c.key));
        return None;
    }
    let field = format!("when {}", c.key);
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = list(&c.values, Polarity::Positive, &field, cidr, problems);
            m.not_source_ips = list(&c.not_values, Polarity::Negative, &field, cidr, problems);
        }
        "destination.ip" => {
            m.destination_ips = list(&c.values, Polarity::Positive, &field, cidr, problems);
            m.not_destination_ips = list(&c.not_values, Polarity::Negative, &field, cidr, problems);
        }
        "destination.port" => {
            let port = common::parse_port;
            m.destination_ports = list(&c.values, Polarity::Positive, &field, port, problems);
            m.not_destination_ports =
                list(&c.not_values, Polarity::Negative, &field, port, problems);
        }
        "source.namespace" => {
            m.namespaces = strings(&c.values);
            m.not_namespaces = strings(&c.not_values);
        }
        _ => {
            // "source.principal"
            m.principals = strings(&c.values);
            m.not_principals = strings(&c.not_values);
        }
    }
    Some(m)
}

fn l7(problems: &mut Vec<String>, field: &str, values: &[String]) {
    if !values.is_empty() {
        problems.push(format!("{field} is L7"));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Polarity {
    Positive,
    Negative,
}

/// Parses a list. A value that does not parse is a problem; widening is avoided for DENY
/// (the only action that keeps a rule with problems): a positive list becomes unconstrained
/// (matches more), a negative list just loses the entry (excludes less).
fn list<T>(
    values: &[String],
    polarity: Polarity,
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    let mut bad = Vec::new();
    for v in values {
        match parse(v) {
            Some(t) => out.push(t),
            None => bad.push(v.as_str()),
        }
    }
    if bad.is_empty() {
        return out;
    }
    problems.push(format!("{field}: invalid value(s) {bad:?}"));
    match polarity {
        Polarity::Positive => Vec::new(),
        Polarity::Negative => out,
    }
}

fn cidr(s: &str) -> Option<Address> {
    let (ip, length) = common::parse_cidr(s)?;
    Some(Address {
        address: common::ip_bytes(ip),
        length: u32::from(length),
    })
}

/// `namespace/name`.
fn service_account(s: &str) -> Option<ServiceAccountMatch> {
    let (namespace, name) = s.split_once('/')?;
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(ServiceAccountMatch {
        namespace: namespace.to_owned(),
        service_account: name.to_owned(),
    })
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

/// Istio's string patterns: `*` any non-empty value, `*suffix`, `prefix*`, else exact.
pub fn string_match(v: &str) -> StringMatch {
    let match_type = if v == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = v.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = v.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(v.to_owned())
    };
    StringMatch {
        match_type: Some(match_type),
    }
}
