//! Writes the seeds of the `xds_resource` target: a selector byte (0 = `Address`,
//! 1 = `Authorization`) followed by an encoded resource, covering every field and the
//! rejections (LEGACY_ISTIO_MTLS, a 5-byte address, a bad `ns/host` key, an unknown enum, a
//! CIDR longer than its address).
//!
//! ```sh
//! cargo run -p fuzz-targets --example xds_resource_seeds -- fuzz/corpus/xds_resource
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;

use prost::Message;
use xds_proto::security as xs;
use xds_proto::workload as xw;

fn port(service_port: u32, target_port: u32) -> xw::Port {
    xw::Port {
        service_port,
        target_port,
        app_protocol: 0,
    }
}

fn workload() -> xw::Workload {
    xw::Workload {
        uid: "cluster1//v1/Pod/default/echo-1".into(),
        name: "echo-1".into(),
        namespace: "default".into(),
        addresses: vec![
            vec![10, 0, 0, 1],
            vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ],
        hostname: String::new(),
        network: "net1".into(),
        tunnel_protocol: xw::TunnelProtocol::Hbone as i32,
        trust_domain: "cluster.local".into(),
        service_account: "echo".into(),
        waypoint: Some(xw::GatewayAddress {
            destination: Some(xw::gateway_address::Destination::Hostname(
                xw::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        network_gateway: Some(xw::GatewayAddress {
            destination: Some(xw::gateway_address::Destination::Address(
                xw::NetworkAddress {
                    network: "net2".into(),
                    address: vec![192, 0, 2, 10],
                    length: None,
                },
            )),
            hbone_mtls_port: 15009,
        }),
        node: "node1".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_type: xw::WorkloadType::Deployment as i32,
        workload_name: "echo".into(),
        native_tunnel: false,
        application_tunnel: Some(xw::ApplicationTunnel {
            protocol: xw::application_tunnel::Protocol::Proxy as i32,
            port: 15088,
        }),
        services: HashMap::from([(
            "default/echo.default.svc.cluster.local".to_string(),
            xw::PortList {
                ports: vec![port(80, 8080), port(443, 0)],
            },
        )]),
        authorization_policies: vec!["default/allow".into()],
        status: xw::WorkloadStatus::Healthy as i32,
        cluster_id: "cluster1".into(),
        locality: Some(xw::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: xw::NetworkMode::Standard as i32,
        extensions: vec![],
        capacity: Some(2),
    }
}

fn service() -> xw::Service {
    xw::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![
            xw::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 10],
                length: None,
            },
            xw::NetworkAddress {
                network: String::new(),
                address: vec![10, 97, 0, 0],
                length: Some(16),
            },
        ],
        ports: vec![port(80, 8080), port(443, 0)],
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/echo".into()],
        load_balancing: Some(xw::LoadBalancing {
            routing_preference: vec![
                xw::load_balancing::Scope::Network as i32,
                xw::load_balancing::Scope::Zone as i32,
            ],
            mode: xw::load_balancing::Mode::Failover as i32,
            health_policy: xw::load_balancing::HealthPolicy::AllowAll as i32,
        }),
        ip_families: xw::IpFamilies::Dual as i32,
        visibility: xw::Visibility::Namespace as i32,
        ..Default::default()
    }
}

fn policy() -> xs::Authorization {
    let sm = |m: xs::string_match::MatchType| xs::StringMatch {
        match_type: Some(m),
    };
    use xs::string_match::MatchType::{Exact, Prefix, Presence, Suffix};
    xs::Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        scope: xs::Scope::WorkloadSelector as i32,
        action: xs::Action::Allow as i32,
        rules: vec![xs::Rule {
            clauses: vec![
                xs::Clause {
                    matches: vec![xs::Match {
                        namespaces: vec![sm(Exact("default".into()))],
                        not_namespaces: vec![sm(Prefix("kube-".into()))],
                        principals: vec![sm(Suffix("/sa/client".into()))],
                        not_principals: vec![sm(Presence(()))],
                        source_ips: vec![xs::Address {
                            address: vec![10, 0, 0, 0],
                            length: 8,
                        }],
                        not_destination_ips: vec![xs::Address {
                            address: vec![0xfd; 16],
                            length: 64,
                        }],
                        destination_ports: vec![8080],
                        not_destination_ports: vec![9999],
                        service_accounts: vec![xs::ServiceAccountMatch {
                            namespace: "default".into(),
                            service_account: "client".into(),
                        }],
                        ..Default::default()
                    }],
                },
                xs::Clause { matches: vec![] },
            ],
        }],
        dry_run: true,
        extensions: vec![],
    }
}

fn address(w: xw::address::Type) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend(xw::Address { r#type: Some(w) }.encode_to_vec());
    out
}

fn authorization(p: &xs::Authorization) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend(p.encode_to_vec());
    out
}

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: xds_resource_seeds <corpus dir>")?,
    );
    let mut legacy = workload();
    legacy.tunnel_protocol = xw::TunnelProtocol::LegacyIstioMtls as i32;
    let mut bad_ip = workload();
    bad_ip.addresses = vec![vec![10, 0, 0, 1, 7]];
    let mut bad_key = workload();
    bad_key.services = HashMap::from([("no-namespace".to_string(), xw::PortList::default())]);
    let mut host_network = workload();
    host_network.network_mode = xw::NetworkMode::HostNetwork as i32;
    host_network.uid = String::new();
    let mut unknown_enum = service();
    unknown_enum.ip_families = 9;
    let mut bad_cidr = policy();
    bad_cidr.rules[0].clauses[0].matches[0].source_ips[0].length = 40;
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "workload-every-field",
            address(xw::address::Type::Workload(workload())),
        ),
        (
            "workload-host-network-no-uid",
            address(xw::address::Type::Workload(host_network)),
        ),
        (
            "service-every-field",
            address(xw::address::Type::Service(service())),
        ),
        ("authorization-every-field", authorization(&policy())),
        (
            "bad-workload-legacy-mtls",
            address(xw::address::Type::Workload(legacy)),
        ),
        (
            "bad-workload-ip-length",
            address(xw::address::Type::Workload(bad_ip)),
        ),
        (
            "bad-workload-service-key",
            address(xw::address::Type::Workload(bad_key)),
        ),
        (
            "bad-service-unknown-enum",
            address(xw::address::Type::Service(unknown_enum)),
        ),
        ("bad-authorization-prefix", authorization(&bad_cidr)),
        ("bad-address-empty", vec![0u8]),
        ("bad-truncated", {
            let mut v = address(xw::address::Type::Service(service()));
            v.truncate(v.len() / 2);
            v
        }),
    ];
    for (name, bytes) in seeds {
        std::fs::write(out.join(name), bytes)?;
    }
    Ok(())
}
