use std::collections::HashMap;

use prost::Message;
use test_case::test_case;
use xds_proto::security as xs;
use xds_proto::workload as xw;

use super::*;

fn workload() -> xw::Workload {
    xw::Workload {
        uid: "cluster1//v1/Pod/default/echo".into(),
        name: "echo".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 1], vec![0xfd; 16]],
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        service_account: "echo-sa".into(),
        node: "node1".into(),
        workload_type: xw::WorkloadType::Pod as i32,
        services: HashMap::from([(
            "default/echo.default.svc.cluster.local".to_string(),
            xw::PortList {
                ports: vec![xw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        waypoint: Some(xw::GatewayAddress {
            destination: Some(xw::gateway_address::Destination::Hostname(
                xw::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 0,
        }),
        application_tunnel: Some(xw::ApplicationTunnel {
            protocol: xw::application_tunnel::Protocol::Proxy as i32,
            port: 15088,
        }),
        capacity: Some(3),
        ..Default::default()
    }
}

fn service() -> xw::Service {
    xw::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![xw::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10],
            length: None,
        }],
        ports: vec![xw::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/echo-sa".into()],
        load_balancing: Some(xw::LoadBalancing {
            routing_preference: vec![
                xw::load_balancing::Scope::UnspecifiedScope as i32,
                xw::load_balancing::Scope::Zone as i32,
            ],
            mode: xw::load_balancing::Mode::Failover as i32,
            health_policy: xw::load_balancing::HealthPolicy::AllowAll as i32,
        }),
        ip_families: xw::IpFamilies::Ipv4Only as i32,
        ..Default::default()
    }
}

fn policy() -> xs::Authorization {
    let exact = |s: &str| xs::StringMatch {
        match_type: Some(xs::string_match::MatchType::Exact(s.into())),
    };
    xs::Authorization {
        name: "allow-client".into(),
        namespace: "default".into(),
        scope: xs::Scope::Namespace as i32,
        action: xs::Action::Deny as i32,
        rules: vec![xs::Rule {
            clauses: vec![xs::Clause {
                matches: vec![xs::Match {
                    principals: vec![exact("cluster.local/ns/default/sa/client")],
                    not_principals: vec![xs::StringMatch {
                        match_type: Some(xs::string_match::MatchType::Presence(())),
                    }],
                    source_ips: vec![xs::Address {
                        address: vec![10, 1, 2, 3],
                        length: 16,
                    }],
                    destination_ports: vec![8080],
                    service_accounts: vec![xs::ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "client".into(),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: true,
        ..Default::default()
    }
}

#[test]
fn workload_converts_every_field() {
    let w = Workload::try_from(workload()).unwrap();
    assert_eq!(w.uid, "cluster1//v1/Pod/default/echo");
    assert_eq!(
        w.workload_ips,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd".parse().unwrap()
        ]
    );
    assert_eq!(w.protocol, InboundProtocol::Hbone);
    assert_eq!(w.trust_domain, "cluster.local", "defaulted");
    assert_eq!(w.cluster_id, "Kubernetes", "defaulted");
    assert_eq!(w.service_account, "echo-sa");
    assert_eq!(w.workload_type, "pod");
    assert_eq!(w.capacity, 3);
    let key: NamespacedHostname = "default/echo.default.svc.cluster.local".parse().unwrap();
    assert_eq!(w.services[&key], HashMap::from([(80, 8080)]));
    let waypoint = w.waypoint.unwrap();
    assert_eq!(waypoint.hbone_mtls_port, 15008, "0 means the default");
    assert!(matches!(
        waypoint.destination,
        GatewayDestination::Hostname(_)
    ));
    assert_eq!(
        w.application_tunnel,
        Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088)
        })
    );
}

#[test]
fn workload_defaults_mirror_local_config() {
    let w = Workload::try_from(xw::Workload {
        name: "x".into(),
        namespace: "ns".into(),
        cluster_id: "c2".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(w.uid, "c2//v1/Pod/ns/x");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, InboundProtocol::Tcp);
}

fn workload_error(f: impl FnOnce(&mut xw::Workload)) -> ConvertError {
    let mut w = workload();
    f(&mut w);
    Workload::try_from(w).unwrap_err()
}

#[test_case(|w| w.addresses[1] = vec![1, 2, 3, 4, 5], "addresses[1]", "5 bytes"; "bad IP length")]
#[test_case(|w| w.tunnel_protocol = xw::TunnelProtocol::LegacyIstioMtls as i32, "tunnel_protocol", "LEGACY_ISTIO_MTLS"; "legacy mtls")]
#[test_case(|w| w.tunnel_protocol = 7, "tunnel_protocol", "unknown enum value 7"; "unknown protocol")]
#[test_case(|w| w.status = 9, "status", "unknown enum value 9"; "unknown status")]
#[test_case(|w| w.network_mode = 5, "network_mode", "unknown"; "unknown network mode")]
#[test_case(|w| w.workload_type = 4, "workload_type", "unknown"; "unknown workload type")]
#[test_case(|w| { w.services.insert("nohost".into(), xw::PortList::default()); }, "services[\"nohost\"]", "namespace"; "bad service key")]
#[test_case(|w| { w.services.insert("ns/a/b".into(), xw::PortList::default()); }, "services[\"ns/a/b\"]", "namespace"; "slash in hostname")]
#[test_case(|w| w.namespace.clear(), "namespace", "empty"; "no namespace")]
#[test_case(|w| w.application_tunnel = Some(xw::ApplicationTunnel { protocol: 3, port: 0 }), "application_tunnel.protocol", "unknown"; "unknown app tunnel")]
#[test_case(|w| w.waypoint = Some(xw::GatewayAddress { destination: None, hbone_mtls_port: 1 }), "waypoint.destination", "neither"; "gateway without destination")]
#[test_case(|w| w.waypoint = Some(xw::GatewayAddress { destination: Some(xw::gateway_address::Destination::Address(xw::NetworkAddress { network: String::new(), address: vec![1], length: None })), hbone_mtls_port: 1 }), "waypoint.address.address", "1 bytes"; "gateway bad address")]
#[test_case(|w| w.network_gateway = Some(xw::GatewayAddress { destination: Some(xw::gateway_address::Destination::Hostname(xw::NamespacedHostname { namespace: String::new(), hostname: "h".into() })), hbone_mtls_port: 1 }), "network_gateway.hostname", "namespace"; "gateway bad hostname")]
#[test_case(|w| w.waypoint.as_mut().unwrap().hbone_mtls_port = 70000, "waypoint.hbone_mtls_port", "70000"; "gateway port too large")]
#[test_case(|w| w.namespace = "x/y".into(), "namespace/service_account/trust_domain", "not a valid SPIFFE identity"; "slash in namespace")]
#[test_case(|w| w.service_account = "a/b".into(), "namespace/service_account/trust_domain", "not a valid SPIFFE identity"; "slash in service account")]
fn workload_errors_name_resource_and_field(f: fn(&mut xw::Workload), field: &str, reason: &str) {
    let err = workload_error(f);
    assert_eq!(err.field, field, "{err}");
    assert!(err.reason.contains(reason), "{err}");
    assert!(
        err.to_string()
            .contains("workload cluster1//v1/Pod/default/echo"),
        "{err}"
    );
}

#[test]
fn service_converts() {
    let s = Service::try_from(service()).unwrap();
    assert_eq!(
        s.vips,
        vec!["/10.96.0.10".parse::<NetworkAddress>().unwrap()]
    );
    assert_eq!(s.ports, HashMap::from([(80, 8080)]));
    assert_eq!(s.ip_families, IpFamilies::IPv4);
    let lb = s.load_balancer.unwrap();
    assert_eq!(lb.routing_preferences, vec![LoadBalancerScope::Zone]);
    assert_eq!(lb.mode, LoadBalancerMode::Failover);
    assert_eq!(lb.health_policy, LoadBalancerHealthPolicy::AllowAll);
}

#[test]
fn service_cidr_vip_is_skipped_and_unknown_visibility_fails_open() {
    let mut s = service();
    s.addresses.push(xw::NetworkAddress {
        network: String::new(),
        address: vec![10, 97, 0, 0],
        length: Some(16),
    });
    s.visibility = 42;
    let s = Service::try_from(s).unwrap();
    assert_eq!(s.vips.len(), 1);
}

#[test_case(|s| s.addresses[0].address = vec![1, 2], "addresses[0].address", "2 bytes"; "bad vip")]
#[test_case(|s| s.addresses[0].length = Some(33), "addresses[0].length", "/33"; "prefix too long")]
#[test_case(|s| s.ports[0].target_port = 65536, "ports[0].target_port", "65536"; "port too large")]
#[test_case(|s| s.ip_families = 4, "ip_families", "unknown"; "unknown ip families")]
#[test_case(|s| s.load_balancing.as_mut().unwrap().mode = 9, "load_balancing.mode", "unknown"; "unknown lb mode")]
#[test_case(|s| s.load_balancing.as_mut().unwrap().routing_preference.push(7), "load_balancing.routing_preference[2]", "unknown"; "unknown scope")]
#[test_case(|s| s.hostname = "a/b".into(), "hostname", "'/'"; "slash in hostname")]
#[test_case(|s| s.name.clear(), "name", "empty"; "no name")]
fn service_errors_name_resource_and_field(f: fn(&mut xw::Service), field: &str, reason: &str) {
    let mut s = service();
    f(&mut s);
    let err = Service::try_from(s).unwrap_err();
    assert_eq!(err.field, field, "{err}");
    assert!(err.reason.contains(reason), "{err}");
    assert!(err.resource.starts_with("service default/"), "{err}");
}

#[test]
fn policy_converts() {
    let p = Authorization::try_from(policy()).unwrap();
    assert_eq!(p.key(), "default/allow-client");
    assert_eq!(p.scope, PolicyScope::Namespace);
    assert_eq!(p.action, PolicyAction::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0][0][0];
    assert_eq!(
        m.principals,
        vec![StringMatch::Exact(
            "cluster.local/ns/default/sa/client".into()
        )]
    );
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(m.source_ips, vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]);
    assert_eq!(m.destination_ports, vec![8080]);
    assert_eq!(m.service_accounts[0].service_account, "client");
}

#[test_case(|p| p.scope = 3, "scope", "unknown"; "unknown scope")]
#[test_case(|p| p.action = 2, "action", "unknown"; "unknown action")]
#[test_case(|p| p.rules[0].clauses[0].matches[0].source_ips[0].length = 33, "rules[0].clauses[0].matches[0].source_ips[0].length", "/33"; "bad prefix")]
#[test_case(|p| p.rules[0].clauses[0].matches[0].source_ips[0].address = vec![1; 5], "rules[0].clauses[0].matches[0].source_ips[0].address", "5 bytes"; "bad cidr ip")]
#[test_case(|p| p.rules[0].clauses[0].matches[0].destination_ports[0] = 70000, "rules[0].clauses[0].matches[0].destination_ports[0]", "70000"; "bad port")]
#[test_case(|p| p.rules[0].clauses[0].matches[0].principals[0].match_type = None, "rules[0].clauses[0].matches[0].principals[0]", "empty"; "empty string match")]
#[test_case(|p| p.namespace.clear(), "namespace", "empty"; "namespace scope needs a namespace")]
fn policy_errors_name_resource_and_field(f: fn(&mut xs::Authorization), field: &str, reason: &str) {
    let mut p = policy();
    f(&mut p);
    let err = Authorization::try_from(p).unwrap_err();
    assert_eq!(err.field, field, "{err}");
    assert!(err.reason.contains(reason), "{err}");
    assert!(err.resource.starts_with("policy "), "{err}");
}

#[test]
fn bytes_entry_points() {
    let a = xw::Address {
        r#type: Some(xw::address::Type::Service(service())),
    };
    assert!(matches!(
        address_from_bytes(&a.encode_to_vec()),
        Ok(AddressResource::Service(_))
    ));
    let empty = xw::Address { r#type: None };
    assert_eq!(
        address_from_bytes(&empty.encode_to_vec())
            .unwrap_err()
            .field,
        "type"
    );
    assert!(address_from_bytes(&[0xff, 0xff, 0xff]).is_err());
    assert!(authorization_from_bytes(&policy().encode_to_vec()).is_ok());
    assert!(authorization_from_bytes(&[0x0a, 0x05]).is_err());
}
