//! Proto → domain, fallibly: `istio.workload.{Address, Workload, Service}` and
//! `istio.security.Authorization` into the `state` types (reference §10, §11).
//!
//! The rules mirror `localconfig` (the other way in): namespace required, uid derived from
//! cluster/namespace/name when empty, empty trust domain / service account / cluster id
//! defaulted, `ns/hostname` keys checked, ports must fit 16 bits. Proto-only failures are
//! errors too: an address that is neither 4 nor 16 bytes, `LEGACY_ISTIO_MTLS`, an enum value
//! this proxy does not know. Every error names the resource and the field (proto names).
//! Fields Istio defines but this proxy does not model are ignored (`extensions`,
//! `canonical`, `ingress_use_waypoint`) or ignored with a warning when they change behaviour
//! (`visibility: NAMESPACE`, `weighted_waypoints`, CIDR VIPs).

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use mesh_core::{NamespacedHostname, NetworkAddress};
use prost::Message;
use tracing::warn;
use xds_proto::security as xds_sec;
use xds_proto::workload as xds;

use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, Authorization, GatewayAddress, GatewayDestination,
    HealthStatus, InboundProtocol, IpFamilies, LoadBalancer, LoadBalancerHealthPolicy,
    LoadBalancerMode, LoadBalancerScope, Locality, NetworkMode, PolicyAction, PolicyMatch,
    PolicyScope, Service, ServiceAccountMatch, StringMatch, Workload,
};

const DEFAULT_HBONE_PORT: u16 = 15008;

/// Why one resource was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: field `{field}`: {reason}")]
pub struct ConvertError {
    /// The resource, e.g. `workload Kubernetes//v1/Pod/default/echo` or `service default/x`.
    pub resource: String,
    /// The field path in proto names, e.g. `addresses[1]` or `rules[0].clauses[1]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// An `istio.workload.Address`: a workload or a service.
#[derive(Debug, Clone, PartialEq)]
pub enum AddressResource {
    /// A workload (boxed, like the service: both are large and stored by the thousand).
    Workload(Box<Workload>),
    /// A service.
    Service(Box<Service>),
}

/// Decodes and converts an `istio.workload.Address` (the bytes of an `Any` value).
pub fn address_from_bytes(bytes: &[u8]) -> Result<AddressResource, ConvertError> {
    let address = xds::Address::decode(bytes).map_err(|e| decode_error("address", e))?;
    AddressResource::try_from(address)
}

/// Decodes and converts an `istio.security.Authorization` (the bytes of an `Any` value).
pub fn authorization_from_bytes(bytes: &[u8]) -> Result<Authorization, ConvertError> {
    let policy =
        xds_sec::Authorization::decode(bytes).map_err(|e| decode_error("authorization", e))?;
    Authorization::try_from(policy)
}

fn decode_error(kind: &str, e: prost::DecodeError) -> ConvertError {
    ConvertError {
        resource: kind.into(),
        field: "(message)".into(),
        reason: format!("cannot decode: {e}"),
    }
}

/// Names the resource errors are about.
struct Ctx(String);

impl Ctx {
    fn err(&self, field: impl Into<String>, reason: impl Display) -> ConvertError {
        ConvertError {
            resource: self.0.clone(),
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    fn required(&self, field: &str, value: &str) -> Result<(), ConvertError> {
        if value.is_empty() {
            return Err(self.err(field, "must not be empty"));
        }
        Ok(())
    }

    fn port(&self, field: impl Into<String>, value: u32) -> Result<u16, ConvertError> {
        u16::try_from(value).map_err(|_| self.err(field, format!("{value} is not a port")))
    }

    fn ip(&self, field: impl Into<String>, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
        ip_from_bytes(bytes).ok_or_else(|| {
            self.err(
                field,
                format!(
                    "{} bytes is not an IPv4 (4 bytes) or IPv6 (16 bytes) address",
                    bytes.len()
                ),
            )
        })
    }

    /// An enum field: `T::try_from(i32)`, naming the unknown value.
    fn enumeration<T: TryFrom<i32>>(&self, field: &str, value: i32) -> Result<T, ConvertError> {
        T::try_from(value).map_err(|_| self.err(field, format!("unknown enum value {value}")))
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

impl TryFrom<xds::Address> for AddressResource {
    type Error = ConvertError;

    fn try_from(address: xds::Address) -> Result<Self, ConvertError> {
        match address.r#type {
            Some(xds::address::Type::Workload(w)) => {
                Workload::try_from(w).map(|w| Self::Workload(Box::new(w)))
            }
            Some(xds::address::Type::Service(s)) => {
                Service::try_from(s).map(|s| Self::Service(Box::new(s)))
            }
            None => Err(ConvertError {
                resource: "address".into(),
                field: "type".into(),
                reason: "neither a workload nor a service".into(),
            }),
        }
    }
}

impl TryFrom<xds::Workload> for Workload {
    type Error = ConvertError;

    fn try_from(w: xds::Workload) -> Result<Self, ConvertError> {
        let ctx = Ctx(if w.uid.is_empty() {
            format!("workload {}/{}", w.namespace, w.name)
        } else {
            format!("workload {}", w.uid)
        });
        ctx.required("namespace", &w.namespace)?;
        let defaults = Workload::default();
        let cluster_id = non_empty_or(w.cluster_id, &defaults.cluster_id);
        let uid = if w.uid.is_empty() {
            ctx.required("name (or uid)", &w.name)?;
            format!("{cluster_id}//v1/Pod/{}/{}", w.namespace, w.name)
        } else {
            w.uid
        };
        let workload_ips = w
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| ctx.ip(format!("addresses[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match ctx.enumeration("tunnel_protocol", w.tunnel_protocol)? {
            xds::TunnelProtocol::None => InboundProtocol::Tcp,
            xds::TunnelProtocol::Hbone => InboundProtocol::Hbone,
            xds::TunnelProtocol::LegacyIstioMtls => {
                return Err(ctx.err(
                    "tunnel_protocol",
                    "LEGACY_ISTIO_MTLS is not supported by this proxy",
                ));
            }
        };
        let workload_type = match ctx.enumeration("workload_type", w.workload_type)? {
            xds::WorkloadType::Deployment => "deployment",
            xds::WorkloadType::Cronjob => "cronjob",
            xds::WorkloadType::Pod => "pod",
            xds::WorkloadType::Job => "job",
        };
        let status = match ctx.enumeration("status", w.status)? {
            xds::WorkloadStatus::Healthy => HealthStatus::Healthy,
            xds::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
        };
        let network_mode = match ctx.enumeration("network_mode", w.network_mode)? {
            xds::NetworkMode::Standard => NetworkMode::Standard,
            xds::NetworkMode::HostNetwork => NetworkMode::HostNetwork,
        };
        let application_tunnel = w
            .application_tunnel
            .map(|t| -> Result<ApplicationTunnel, ConvertError> {
                let protocol = match ctx.enumeration("application_tunnel.protocol", t.protocol)? {
                    xds::application_tunnel::Protocol::None => AppTunnelProtocol::None,
                    xds::application_tunnel::Protocol::Proxy => AppTunnelProtocol::Proxy,
                };
                let port = ctx.port("application_tunnel.port", t.port)?;
                Ok(ApplicationTunnel {
                    protocol,
                    port: (port != 0).then_some(port),
                })
            })
            .transpose()?;
        let mut services = HashMap::with_capacity(w.services.len());
        for (key, ports) in w.services {
            let field = format!("services[{key:?}]");
            let name = key
                .parse::<NamespacedHostname>()
                .map_err(|e| ctx.err(&field, e))?;
            let mut map = HashMap::with_capacity(ports.ports.len());
            for (i, p) in ports.ports.iter().enumerate() {
                map.insert(
                    ctx.port(format!("{field}.ports[{i}].service_port"), p.service_port)?,
                    ctx.port(format!("{field}.ports[{i}].target_port"), p.target_port)?,
                );
            }
            services.insert(name, map);
        }
        let locality = w.locality.unwrap_or_default();
        let workload = Workload {
            uid,
            name: w.name,
            namespace: w.namespace,
            workload_ips,
            hostname: w.hostname,
            network: w.network,
            protocol,
            trust_domain: non_empty_or(w.trust_domain, &defaults.trust_domain),
            service_account: non_empty_or(w.service_account, &defaults.service_account),
            node: w.node,
            waypoint: w
                .waypoint
                .map(|g| gateway(&ctx, "waypoint", g))
                .transpose()?,
            network_gateway: w
                .network_gateway
                .map(|g| gateway(&ctx, "network_gateway", g))
                .transpose()?,
            native_tunnel: w.native_tunnel,
            application_tunnel,
            authorization_policies: w.authorization_policies,
            status,
            cluster_id,
            locality: Locality {
                region: locality.region,
                zone: locality.zone,
                subzone: locality.subzone,
            },
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            workload_type: workload_type.into(),
            capacity: w.capacity.unwrap_or(defaults.capacity),
            network_mode,
            services,
        };
        workload
            .check_identity()
            .map_err(|reason| ctx.err("namespace/service_account/trust_domain", reason))?;
        Ok(workload)
    }
}

fn gateway(ctx: &Ctx, field: &str, g: xds::GatewayAddress) -> Result<GatewayAddress, ConvertError> {
    let destination = match g.destination {
        Some(xds::gateway_address::Destination::Hostname(h)) => {
            let text = format!("{}/{}", h.namespace, h.hostname);
            GatewayDestination::Hostname(
                text.parse::<NamespacedHostname>()
                    .map_err(|e| ctx.err(format!("{field}.hostname"), e))?,
            )
        }
        Some(xds::gateway_address::Destination::Address(a)) => {
            GatewayDestination::Address(NetworkAddress {
                network: a.network,
                address: ctx.ip(format!("{field}.address.address"), &a.address)?,
            })
        }
        None => {
            return Err(ctx.err(
                format!("{field}.destination"),
                "neither a hostname nor an address",
            ));
        }
    };
    let port = ctx.port(format!("{field}.hbone_mtls_port"), g.hbone_mtls_port)?;
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: if port == 0 { DEFAULT_HBONE_PORT } else { port },
    })
}

impl TryFrom<xds::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: xds::Service) -> Result<Self, ConvertError> {
        let ctx = Ctx(format!("service {}/{}", s.namespace, s.hostname));
        ctx.required("name", &s.name)?;
        ctx.required("namespace", &s.namespace)?;
        ctx.required("hostname", &s.hostname)?;
        if s.hostname.contains('/') {
            return Err(ctx.err("hostname", "must not contain '/'"));
        }
        let mut ignored = Vec::new();
        let mut vips = Vec::with_capacity(s.addresses.len());
        for (i, a) in s.addresses.iter().enumerate() {
            let field = format!("addresses[{i}]");
            let address = ctx.ip(format!("{field}.address"), &a.address)?;
            let full = if address.is_ipv4() { 32 } else { 128 };
            match a.length {
                None => {}
                Some(len) if len == full => {}
                Some(len) if len < full => {
                    ignored.push("CIDR addresses");
                    continue;
                }
                Some(len) => {
                    return Err(ctx.err(
                        format!("{field}.length"),
                        format!("/{len} is longer than the address"),
                    ));
                }
            }
            vips.push(NetworkAddress {
                network: a.network.clone(),
                address,
            });
        }
        let mut ports = HashMap::with_capacity(s.ports.len());
        for (i, p) in s.ports.iter().enumerate() {
            ports.insert(
                ctx.port(format!("ports[{i}].service_port"), p.service_port)?,
                ctx.port(format!("ports[{i}].target_port"), p.target_port)?,
            );
        }
        let load_balancer = s
            .load_balancing
            .map(|lb| load_balancer(&ctx, lb))
            .transpose()?;
        let ip_families = match ctx.enumeration("ip_families", s.ip_families)? {
            xds::IpFamilies::Automatic => IpFamilies::Automatic,
            xds::IpFamilies::Ipv4Only => IpFamilies::IPv4,
            xds::IpFamilies::Ipv6Only => IpFamilies::IPv6,
            xds::IpFamilies::Dual => IpFamilies::Dual,
        };
        // Unknown visibility values fail open to PUBLIC (reference §10).
        if s.visibility == xds::Visibility::Namespace as i32 {
            ignored.push("visibility");
        }
        if !s.weighted_waypoints.is_empty() {
            ignored.push("weighted_waypoints");
        }
        if !ignored.is_empty() {
            warn!(resource = %ctx.0, fields = ?ignored,
                "xDS: fields not supported by this proxy are ignored");
        }
        Ok(Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
            subject_alt_names: s.subject_alt_names,
            waypoint: s
                .waypoint
                .map(|g| gateway(&ctx, "waypoint", g))
                .transpose()?,
            load_balancer,
            ip_families,
            // Endpoints come from the workloads' `services` maps (ProxyState::build).
            endpoints: HashMap::new(),
        })
    }
}

fn load_balancer(ctx: &Ctx, lb: xds::LoadBalancing) -> Result<LoadBalancer, ConvertError> {
    use xds::load_balancing::{HealthPolicy, Mode, Scope};
    let mut routing_preferences = Vec::with_capacity(lb.routing_preference.len());
    for (i, scope) in lb.routing_preference.iter().enumerate() {
        let scope =
            match ctx.enumeration(&format!("load_balancing.routing_preference[{i}]"), *scope)? {
                // Carries no preference.
                Scope::UnspecifiedScope => continue,
                Scope::Region => LoadBalancerScope::Region,
                Scope::Zone => LoadBalancerScope::Zone,
                Scope::Subzone => LoadBalancerScope::Subzone,
                Scope::Node => LoadBalancerScope::Node,
                Scope::Cluster => LoadBalancerScope::Cluster,
                Scope::Network => LoadBalancerScope::Network,
            };
        routing_preferences.push(scope);
    }
    let mode = match ctx.enumeration("load_balancing.mode", lb.mode)? {
        Mode::UnspecifiedMode => LoadBalancerMode::Standard,
        Mode::Strict => LoadBalancerMode::Strict,
        Mode::Failover => LoadBalancerMode::Failover,
        Mode::Passthrough => LoadBalancerMode::Passthrough,
    };
    let health_policy = match ctx.enumeration("load_balancing.health_policy", lb.health_policy)? {
        HealthPolicy::OnlyHealthy => LoadBalancerHealthPolicy::OnlyHealthy,
        HealthPolicy::AllowAll => LoadBalancerHealthPolicy::AllowAll,
    };
    Ok(LoadBalancer {
        routing_preferences,
        mode,
        health_policy,
    })
}

impl TryFrom<xds_sec::Authorization> for Authorization {
    type Error = ConvertError;

    fn try_from(p: xds_sec::Authorization) -> Result<Self, ConvertError> {
        let ctx = Ctx(format!("policy {}/{}", p.namespace, p.name));
        ctx.required("name", &p.name)?;
        let scope = match ctx.enumeration("scope", p.scope)? {
            xds_sec::Scope::Global => PolicyScope::Global,
            xds_sec::Scope::Namespace => PolicyScope::Namespace,
            xds_sec::Scope::WorkloadSelector => PolicyScope::WorkloadSelector,
        };
        if scope == PolicyScope::Namespace {
            ctx.required("namespace", &p.namespace)?;
        }
        let action = match ctx.enumeration("action", p.action)? {
            xds_sec::Action::Allow => PolicyAction::Allow,
            xds_sec::Action::Deny => PolicyAction::Deny,
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for (r, rule) in p.rules.into_iter().enumerate() {
            let mut clauses = Vec::with_capacity(rule.clauses.len());
            for (c, clause) in rule.clauses.into_iter().enumerate() {
                let matches = clause
                    .matches
                    .into_iter()
                    .enumerate()
                    .map(|(m, x)| {
                        policy_match(&ctx, &format!("rules[{r}].clauses[{c}].matches[{m}]"), x)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                clauses.push(matches);
            }
            rules.push(clauses);
        }
        Ok(Authorization {
            name: p.name,
            namespace: p.namespace,
            scope,
            action,
            rules,
            dry_run: p.dry_run,
        })
    }
}

fn policy_match(ctx: &Ctx, at: &str, m: xds_sec::Match) -> Result<PolicyMatch, ConvertError> {
    let strings = |field: &str, values: Vec<xds_sec::StringMatch>| {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                use xds_sec::string_match::MatchType;
                match v.match_type {
                    Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s)),
                    Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s)),
                    Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s)),
                    Some(MatchType::Presence(_)) => Ok(StringMatch::Presence),
                    None => Err(ctx.err(format!("{at}.{field}[{i}]"), "empty string match")),
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let nets = |field: &str, values: Vec<xds_sec::Address>| {
        values
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let field = format!("{at}.{field}[{i}]");
                let ip = ctx.ip(format!("{field}.address"), &a.address)?;
                let len = u8::try_from(a.length).ok();
                len.and_then(|len| IpNet::new(ip, len).ok())
                    .map(|net| net.trunc())
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{field}.length"),
                            format!("/{} is not a prefix length of {ip}", a.length),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |field: &str, values: &[u32]| {
        values
            .iter()
            .enumerate()
            .map(|(i, p)| ctx.port(format!("{at}.{field}[{i}]"), *p))
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |values: Vec<xds_sec::ServiceAccountMatch>| {
        values
            .into_iter()
            .map(|sa| ServiceAccountMatch {
                namespace: sa.namespace,
                service_account: sa.service_account,
            })
            .collect()
    };
    Ok(PolicyMatch {
        namespaces: strings("namespaces", m.namespaces)?,
        not_namespaces: strings("not_namespaces", m.not_namespaces)?,
        principals: strings("principals", m.principals)?,
        not_principals: strings("not_principals", m.not_principals)?,
        source_ips: nets("source_ips", m.source_ips)?,
        not_source_ips: nets("not_source_ips", m.not_source_ips)?,
        destination_ips: nets("destination_ips", m.destination_ips)?,
        not_destination_ips: nets("not_destination_ips", m.not_destination_ips)?,
        destination_ports: ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &m.not_destination_ports)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
    })
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
