//! The on-disk shapes of Istio ztunnel's local config and their conversion into the
//! `state` types. Nothing here is visible outside `localconfig`.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::IpAddr;

use ipnet::IpNet;
use mesh_core::{NamespacedHostname, NetworkAddress};
use serde::{Deserialize, Deserializer};
use serde_yaml::{Mapping, Value};
use tracing::warn;

use super::LocalConfigError;
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, Authorization, GatewayAddress, GatewayDestination,
    HealthStatus, InboundProtocol, IpFamilies, LoadBalancer, LoadBalancerHealthPolicy,
    LoadBalancerMode, LoadBalancerScope, Locality, NetworkMode, PolicyAction, PolicyMatch,
    PolicyScope, Service, ServiceAccountMatch, StringMatch, Workload,
};

const DEFAULT_HBONE_PORT: u16 = 15008;

/// The whole document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    workloads: Vec<WorkloadDto>,
    #[serde(default, deserialize_with = "null_as_default")]
    services: Vec<ServiceDto>,
    #[serde(default, deserialize_with = "null_as_default")]
    policies: Vec<PolicyDto>,
}

/// `workloads: ~` means no workloads, as it would for an absent key.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDto {
    uid: Option<String>,
    #[serde(default)]
    name: String,
    namespace: String,
    workload_ips: Vec<String>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    protocol: ProtocolDto,
    trust_domain: Option<String>,
    service_account: Option<String>,
    #[serde(default)]
    node: String,
    waypoint: Option<GatewayDto>,
    network_gateway: Option<GatewayDto>,
    #[serde(default)]
    native_tunnel: bool,
    application_tunnel: Option<AppTunnelDto>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    status: StatusDto,
    cluster_id: Option<String>,
    #[serde(default)]
    locality: LocalityDto,
    capacity: Option<u32>,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    workload_type: Option<String>,
    #[serde(default)]
    network_mode: NetworkModeDto,
    /// `"ns/hostname": {servicePort: targetPort}`.
    #[serde(default)]
    services: Mapping,
}

#[derive(Debug, Default, Deserialize)]
enum ProtocolDto {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Default, Deserialize)]
enum StatusDto {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Default, Deserialize)]
enum NetworkModeDto {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalityDto {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AppTunnelDto {
    #[serde(default)]
    protocol: AppTunnelProtocolDto,
    port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
enum AppTunnelProtocolDto {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

/// `{destination: "network/IP" | "ns/hostname", hboneMtlsPort: 15008}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GatewayDto {
    destination: String,
    hbone_mtls_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDto {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    /// `{servicePort: targetPort}`.
    #[serde(default)]
    ports: Mapping,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    waypoint: Option<GatewayDto>,
    load_balancer: Option<LoadBalancerDto>,
    ip_families: Option<IpFamiliesDto>,
    // Accepted for compatibility with Istio's schema; not modelled yet (see `ignored`).
    #[serde(default)]
    canonical: bool,
    visibility: Option<VisibilityDto>,
    #[serde(default)]
    cidr_vips: Vec<String>,
    #[serde(default)]
    weighted_waypoints: Vec<Value>,
    endpoints: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LoadBalancerDto {
    #[serde(default)]
    routing_preferences: Vec<ScopeDto>,
    #[serde(default)]
    mode: ModeDto,
    #[serde(default)]
    health_policy: HealthPolicyDto,
}

#[derive(Debug, Deserialize)]
enum ScopeDto {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Debug, Default, Deserialize)]
enum ModeDto {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Debug, Default, Deserialize)]
enum HealthPolicyDto {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Debug, Deserialize)]
enum IpFamiliesDto {
    Automatic,
    Dual,
    IPv4,
    IPv6,
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
enum VisibilityDto {
    Public,
    Namespace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDto {
    name: String,
    #[serde(default)]
    namespace: String,
    scope: PolicyScopeDto,
    action: PolicyActionDto,
    /// rules → clauses → matches.
    #[serde(default)]
    rules: Vec<Vec<Vec<MatchDto>>>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
enum PolicyScopeDto {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Deserialize)]
enum PolicyActionDto {
    Allow,
    Deny,
}

/// String matches stay YAML values until conversion, so their errors can name the policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchDto {
    #[serde(default)]
    namespaces: Vec<Value>,
    #[serde(default)]
    not_namespaces: Vec<Value>,
    #[serde(default)]
    principals: Vec<Value>,
    #[serde(default)]
    not_principals: Vec<Value>,
    #[serde(default)]
    source_ips: Vec<String>,
    #[serde(default)]
    not_source_ips: Vec<String>,
    #[serde(default)]
    destination_ips: Vec<String>,
    #[serde(default)]
    not_destination_ips: Vec<String>,
    #[serde(default)]
    destination_ports: Vec<u32>,
    #[serde(default)]
    not_destination_ports: Vec<u32>,
    #[serde(default)]
    service_accounts: Vec<ServiceAccountDto>,
    #[serde(default)]
    not_service_accounts: Vec<ServiceAccountDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceAccountDto {
    namespace: String,
    service_account: String,
}

// === Conversion ===

/// The converted resources, ready for `ProxyState::build`.
pub(super) struct Resources {
    pub(super) workloads: Vec<Workload>,
    pub(super) services: Vec<Service>,
    pub(super) policies: Vec<Authorization>,
}

/// Names the resource that conversion errors are about.
struct Ctx(String);

impl Ctx {
    fn err(&self, field: impl Into<String>, reason: impl Display) -> LocalConfigError {
        LocalConfigError::Invalid {
            resource: self.0.clone(),
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    fn required(&self, field: &str, value: &str) -> Result<(), LocalConfigError> {
        if value.is_empty() {
            return Err(self.err(field, "must not be empty"));
        }
        Ok(())
    }
}

impl LocalConfig {
    pub(super) fn from_yaml(yaml: &str) -> Result<LocalConfig, LocalConfigError> {
        serde_yaml::from_str::<Option<LocalConfig>>(yaml)
            .map_err(LocalConfigError::Syntax)?
            .ok_or(LocalConfigError::Empty)
    }

    /// Converts every resource, rejecting the whole document on the first bad one.
    pub(super) fn into_state(self) -> Result<Resources, LocalConfigError> {
        let workloads = self
            .workloads
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.convert(i))
            .collect::<Result<Vec<_>, _>>()?;
        let services = self
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.convert(i))
            .collect::<Result<Vec<_>, _>>()?;
        let policies = self
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.convert(i))
            .collect::<Result<Vec<_>, _>>()?;

        unique("workload", workloads.iter().map(|w| w.uid.clone()))?;
        unique(
            "service",
            services.iter().map(|s| s.namespaced_hostname().to_string()),
        )?;
        unique("policy", policies.iter().map(Authorization::key))?;

        let known: HashSet<String> = policies.iter().map(Authorization::key).collect();
        for w in &workloads {
            for key in w
                .authorization_policies
                .iter()
                .filter(|k| !known.contains(*k))
            {
                warn!(workload = %w.uid, policy = %key,
                    "local config: workload references a policy the file does not define");
            }
        }
        Ok(Resources {
            workloads,
            services,
            policies,
        })
    }
}

fn unique(kind: &'static str, keys: impl Iterator<Item = String>) -> Result<(), LocalConfigError> {
    let mut seen = HashSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            return Err(LocalConfigError::Duplicate { kind, key });
        }
    }
    Ok(())
}

fn non_empty_or(value: Option<String>, default: &str) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

impl WorkloadDto {
    fn convert(self, index: usize) -> Result<Workload, LocalConfigError> {
        let ctx = Ctx(if self.name.is_empty() || self.namespace.is_empty() {
            format!("workloads[{index}]")
        } else {
            format!("workload {}/{}", self.namespace, self.name)
        });
        ctx.required("namespace", &self.namespace)?;
        let defaults = Workload::default();
        let cluster_id = non_empty_or(self.cluster_id, &defaults.cluster_id);
        let uid = match self.uid.filter(|uid| !uid.is_empty()) {
            Some(uid) => uid,
            None => {
                ctx.required("name (or uid)", &self.name)?;
                format!("{cluster_id}//v1/Pod/{}/{}", self.namespace, self.name)
            }
        };
        let workload_ips = self
            .workload_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|e| ctx.err(format!("workloadIps[{i}]"), format!("{ip:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut services = HashMap::new();
        for (key, ports) in &self.services {
            let key_text = scalar_text(key)
                .ok_or_else(|| ctx.err("services", "keys must be \"namespace/hostname\""))?;
            let field = format!("services[{key_text:?}]");
            let name = key_text
                .parse::<NamespacedHostname>()
                .map_err(|e| ctx.err(&field, e))?;
            let Value::Mapping(ports) = ports else {
                return Err(ctx.err(field, "expected a map of servicePort: targetPort"));
            };
            services.insert(name, port_map(&ctx, &field, ports)?);
        }
        let workload = Workload {
            uid,
            name: self.name,
            namespace: self.namespace,
            workload_ips,
            hostname: self.hostname,
            network: self.network,
            protocol: match self.protocol {
                ProtocolDto::Tcp => InboundProtocol::Tcp,
                ProtocolDto::Hbone => InboundProtocol::Hbone,
            },
            trust_domain: non_empty_or(self.trust_domain, &defaults.trust_domain),
            service_account: non_empty_or(self.service_account, &defaults.service_account),
            node: self.node,
            waypoint: self
                .waypoint
                .map(|g| g.convert(&ctx, "waypoint"))
                .transpose()?,
            network_gateway: self
                .network_gateway
                .map(|g| g.convert(&ctx, "networkGateway"))
                .transpose()?,
            native_tunnel: self.native_tunnel,
            application_tunnel: self.application_tunnel.map(|t| ApplicationTunnel {
                protocol: match t.protocol {
                    AppTunnelProtocolDto::None => AppTunnelProtocol::None,
                    AppTunnelProtocolDto::Proxy => AppTunnelProtocol::Proxy,
                },
                port: t.port.filter(|p| *p != 0),
            }),
            authorization_policies: self.authorization_policies,
            status: match self.status {
                StatusDto::Healthy => HealthStatus::Healthy,
                StatusDto::Unhealthy => HealthStatus::Unhealthy,
            },
            cluster_id,
            locality: Locality {
                region: self.locality.region,
                zone: self.locality.zone,
                subzone: self.locality.subzone,
            },
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_name: self.workload_name,
            workload_type: self
                .workload_type
                .filter(|t| !t.is_empty())
                .map(|t| t.to_ascii_lowercase())
                .unwrap_or(defaults.workload_type),
            capacity: self.capacity.unwrap_or(defaults.capacity),
            network_mode: match self.network_mode {
                NetworkModeDto::Standard => NetworkMode::Standard,
                NetworkModeDto::HostNetwork => NetworkMode::HostNetwork,
            },
            services,
        };
        workload
            .check_identity()
            .map_err(|reason| ctx.err("namespace/serviceAccount/trustDomain", reason))?;
        Ok(workload)
    }
}

impl GatewayDto {
    fn convert(self, ctx: &Ctx, field: &str) -> Result<GatewayAddress, LocalConfigError> {
        let text = self.destination.trim();
        let destination = if let Ok(address) = text.parse::<NetworkAddress>() {
            GatewayDestination::Address(address)
        } else if let Ok(hostname) = text.parse::<NamespacedHostname>() {
            GatewayDestination::Hostname(hostname)
        } else {
            return Err(ctx.err(
                format!("{field}.destination"),
                format!("{text:?} is neither \"network/IP\" nor \"namespace/hostname\""),
            ));
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port: self
                .hbone_mtls_port
                .filter(|p| *p != 0)
                .unwrap_or(DEFAULT_HBONE_PORT),
        })
    }
}

impl ServiceDto {
    fn convert(self, index: usize) -> Result<Service, LocalConfigError> {
        let ctx = Ctx(if self.hostname.is_empty() || self.namespace.is_empty() {
            format!("services[{index}]")
        } else {
            format!("service {}/{}", self.namespace, self.hostname)
        });
        ctx.required("name", &self.name)?;
        ctx.required("namespace", &self.namespace)?;
        ctx.required("hostname", &self.hostname)?;
        self.ignored(&ctx);
        let vips = self
            .vips
            .iter()
            .enumerate()
            .map(|(i, vip)| {
                vip.trim()
                    .parse::<NetworkAddress>()
                    .map_err(|e| ctx.err(format!("vips[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ports = port_map(&ctx, "ports", &self.ports)?;
        let load_balancer = self.load_balancer.map(|lb| LoadBalancer {
            routing_preferences: lb
                .routing_preferences
                .into_iter()
                .map(|s| match s {
                    ScopeDto::Region => LoadBalancerScope::Region,
                    ScopeDto::Zone => LoadBalancerScope::Zone,
                    ScopeDto::Subzone => LoadBalancerScope::Subzone,
                    ScopeDto::Node => LoadBalancerScope::Node,
                    ScopeDto::Cluster => LoadBalancerScope::Cluster,
                    ScopeDto::Network => LoadBalancerScope::Network,
                })
                .collect(),
            mode: match lb.mode {
                ModeDto::Standard => LoadBalancerMode::Standard,
                ModeDto::Strict => LoadBalancerMode::Strict,
                ModeDto::Failover => LoadBalancerMode::Failover,
                ModeDto::Passthrough => LoadBalancerMode::Passthrough,
            },
            health_policy: match lb.health_policy {
                HealthPolicyDto::OnlyHealthy => LoadBalancerHealthPolicy::OnlyHealthy,
                HealthPolicyDto::AllowAll => LoadBalancerHealthPolicy::AllowAll,
            },
        });
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips,
            ports,
            subject_alt_names: self.subject_alt_names,
            waypoint: self
                .waypoint
                .map(|g| g.convert(&ctx, "waypoint"))
                .transpose()?,
            load_balancer,
            ip_families: match self.ip_families {
                None | Some(IpFamiliesDto::Automatic) => IpFamilies::Automatic,
                Some(IpFamiliesDto::Dual) => IpFamilies::Dual,
                Some(IpFamiliesDto::IPv4) => IpFamilies::IPv4,
                Some(IpFamiliesDto::IPv6) => IpFamilies::IPv6,
            },
            // Endpoints come from the workloads' `services` maps (ProxyState::build).
            endpoints: HashMap::new(),
        })
    }

    /// Istio fields this proxy accepts but does not act on yet: say so when they matter.
    fn ignored(&self, ctx: &Ctx) {
        let mut fields = Vec::new();
        if self.visibility == Some(VisibilityDto::Namespace) {
            fields.push("visibility");
        }
        if !self.cidr_vips.is_empty() {
            fields.push("cidrVips");
        }
        if !self.weighted_waypoints.is_empty() {
            fields.push("weightedWaypoints");
        }
        if self.endpoints.as_ref().is_some_and(|e| !e.is_null()) {
            fields.push("endpoints");
        }
        if !fields.is_empty() {
            warn!(resource = %ctx.0, ?fields, canonical = self.canonical,
                "local config: fields not supported by this proxy are ignored");
        }
    }
}

impl PolicyDto {
    fn convert(self, index: usize) -> Result<Authorization, LocalConfigError> {
        let ctx = Ctx(if self.name.is_empty() {
            format!("policies[{index}]")
        } else {
            format!("policy {}/{}", self.namespace, self.name)
        });
        ctx.required("name", &self.name)?;
        let scope = match self.scope {
            PolicyScopeDto::Global => PolicyScope::Global,
            PolicyScopeDto::Namespace => PolicyScope::Namespace,
            PolicyScopeDto::WorkloadSelector => PolicyScope::WorkloadSelector,
        };
        if scope == PolicyScope::Namespace {
            ctx.required("namespace", &self.namespace)?;
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (r, rule) in self.rules.into_iter().enumerate() {
            let mut clauses = Vec::with_capacity(rule.len());
            for (c, clause) in rule.into_iter().enumerate() {
                let matches = clause
                    .into_iter()
                    .enumerate()
                    .map(|(m, dto)| dto.convert(&ctx, &format!("rules[{r}][{c}][{m}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                clauses.push(matches);
            }
            rules.push(clauses);
        }
        Ok(Authorization {
            name: self.name,
            namespace: self.namespace,
            scope,
            action: match self.action {
                PolicyActionDto::Allow => PolicyAction::Allow,
                PolicyActionDto::Deny => PolicyAction::Deny,
            },
            rules,
            dry_run: self.dry_run,
        })
    }
}

impl MatchDto {
    fn convert(self, ctx: &Ctx, at: &str) -> Result<PolicyMatch, LocalConfigError> {
        let strings = |field: &str, values: &[Value]| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| string_match(v).map_err(|e| ctx.err(format!("{at}.{field}[{i}]"), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let nets = |field: &str, values: &[String]| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| cidr(v).map_err(|e| ctx.err(format!("{at}.{field}[{i}]"), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let ports = |field: &str, values: &[u32]| {
            values
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    u16::try_from(*p).map_err(|_| {
                        ctx.err(format!("{at}.{field}[{i}]"), format!("{p} is not a port"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let accounts = |values: Vec<ServiceAccountDto>| {
            values
                .into_iter()
                .map(|sa| ServiceAccountMatch {
                    namespace: sa.namespace,
                    service_account: sa.service_account,
                })
                .collect()
        };
        Ok(PolicyMatch {
            namespaces: strings("namespaces", &self.namespaces)?,
            not_namespaces: strings("notNamespaces", &self.not_namespaces)?,
            principals: strings("principals", &self.principals)?,
            not_principals: strings("notPrincipals", &self.not_principals)?,
            source_ips: nets("sourceIps", &self.source_ips)?,
            not_source_ips: nets("notSourceIps", &self.not_source_ips)?,
            destination_ips: nets("destinationIps", &self.destination_ips)?,
            not_destination_ips: nets("notDestinationIps", &self.not_destination_ips)?,
            destination_ports: ports("destinationPorts", &self.destination_ports)?,
            not_destination_ports: ports("notDestinationPorts", &self.not_destination_ports)?,
            service_accounts: accounts(self.service_accounts),
            not_service_accounts: accounts(self.not_service_accounts),
        })
    }
}

/// `{Exact: x}`, `{Prefix: x}`, `{Suffix: x}`, `{Presence: []}` (or `{}` / null), or the
/// YAML-tag spelling `!Exact x`.
fn string_match(value: &Value) -> Result<StringMatch, String> {
    const SHAPE: &str = "expected one of {Exact: x}, {Prefix: x}, {Suffix: x}, {Presence: []}";
    let (kind, inner) = match value {
        Value::Mapping(map) if map.len() == 1 => match map.iter().next() {
            Some((Value::String(kind), inner)) => (kind.clone(), inner),
            _ => return Err(SHAPE.into()),
        },
        Value::Tagged(tagged) => (
            tagged.tag.to_string().trim_start_matches('!').to_string(),
            &tagged.value,
        ),
        _ => return Err(SHAPE.into()),
    };
    let text = || scalar_text(inner).ok_or_else(|| format!("{kind} needs a string, got {inner:?}"));
    match kind.as_str() {
        "Exact" => Ok(StringMatch::Exact(text()?)),
        "Prefix" => Ok(StringMatch::Prefix(text()?)),
        "Suffix" => Ok(StringMatch::Suffix(text()?)),
        "Presence" => match inner {
            Value::Null => Ok(StringMatch::Presence),
            Value::Sequence(s) if s.is_empty() => Ok(StringMatch::Presence),
            Value::Mapping(m) if m.is_empty() => Ok(StringMatch::Presence),
            other => Err(format!("Presence takes no value, got {other:?}")),
        },
        other => Err(format!("unknown string match {other:?}; {SHAPE}")),
    }
}

/// A CIDR, or a bare IP meaning that single host.
fn cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither a CIDR nor an IP address"))
}

/// A YAML string or number as text (port map keys and match values may be either).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `{80: 8080}`: keys and values may be numbers or numeric strings.
fn port_map(ctx: &Ctx, field: &str, map: &Mapping) -> Result<HashMap<u16, u16>, LocalConfigError> {
    let port = |v: &Value| -> Result<u16, LocalConfigError> {
        scalar_text(v)
            .and_then(|t| t.trim().parse::<u16>().ok())
            .ok_or_else(|| ctx.err(field, format!("{v:?} is not a port number")))
    };
    map.iter().map(|(k, v)| Ok((port(k)?, port(v)?))).collect()
}
