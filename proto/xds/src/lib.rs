//! Generated Istio ambient wire types, written from the field tables of the wire reference
//! (`shared/reference/istio-ambient-wire.md` §3.2, §8-12). These are boundary types:
//! the binaries convert them into their own domain types on arrival and never pass them on.

#![deny(missing_docs)]

/// Generated packages, laid out as their proto packages (generated code refers across
/// packages with relative `super::` paths).
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod packages {
    /// `istio.*`
    pub mod istio {
        /// `istio.workload`
        pub mod workload {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
            /// `istio.workload.zds`
            pub mod zds {
                include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
            }
        }
        /// `istio.security`
        pub mod security {
            include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
        }
        /// `istio.v1.auth`
        pub mod v1 {
            /// `istio.v1.auth`
            pub mod auth {
                include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
            }
        }
    }
    /// `envoy.*`
    pub mod envoy {
        /// `envoy.service`
        pub mod service {
            /// `envoy.service.discovery`
            pub mod discovery {
                /// `envoy.service.discovery.v3`
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
                }
            }
        }
    }
    /// `google.rpc`
    pub mod google {
        /// `google.rpc`
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
}

/// `envoy.service.discovery.v3`: delta ADS.
pub use packages::envoy::service::discovery::v3 as discovery;
/// `google.rpc.Status`, used for NACK details.
pub use packages::google::rpc;
/// `istio.security`: L4 Authorization.
pub use packages::istio::security;
/// `istio.v1.auth`: the Istio CA (CreateCertificate).
pub use packages::istio::v1::auth as ca;
/// `istio.workload`: Address, Workload, Service and friends (`workload::zds`: ZDS).
pub use packages::istio::workload;

/// Type URL of `istio.workload.Address` resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of `istio.security.Authorization` resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Field numbers are the compatibility contract: check a few on the wire.
    #[test]
    fn wire_field_numbers() {
        let w = workload::Workload {
            uid: "u".into(),
            capacity: Some(2),
            ..Default::default()
        };
        let bytes = w.encode_to_vec();
        // uid = 20 (tag 20<<3|2 = 162 = 0xa2 0x01), capacity = 27 (27<<3|2 = 218 = 0xda 0x01).
        assert_eq!(&bytes[..2], &[0xa2, 0x01]);
        assert!(bytes.windows(2).any(|b| b == [0xda, 0x01]));

        let del = workload::zds::DelWorkload { uid: "x".into() };
        assert_eq!(
            del.encode_to_vec()[0],
            2 << 3 | 2,
            "DelWorkload.uid is field 2"
        );

        let req = discovery::DeltaDiscoveryRequest {
            response_nonce: "n".into(),
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec()[0],
            6 << 3 | 2,
            "response_nonce is field 6"
        );
    }

    #[test]
    fn address_round_trip() {
        let a = workload::Address {
            r#type: Some(workload::address::Type::Service(workload::Service {
                hostname: "echo.default.svc.cluster.local".into(),
                ..Default::default()
            })),
        };
        let back = workload::Address::decode(a.encode_to_vec().as_slice()).unwrap();
        assert_eq!(a, back);
    }
}
