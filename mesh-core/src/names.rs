use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a `namespace/hostname` or `network/IP` key did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameParseError {
    /// Not of the form `namespace/hostname`.
    #[error("{0:?} is not of the form <namespace>/<hostname>")]
    NamespacedHostname(String),
    /// Not of the form `network/IP`.
    #[error("{0:?} is not of the form <network>/<IP address>")]
    NetworkAddress(String),
}

/// A service's key: `namespace/hostname`, e.g. `default/echo.default.svc.cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// The namespace the service lives in.
    pub namespace: String,
    /// The fully qualified hostname.
    pub hostname: String,
}

impl FromStr for NamespacedHostname {
    type Err = NameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Ok(NamespacedHostname {
                    namespace: ns.to_string(),
                    hostname: host.to_string(),
                })
            }
            _ => Err(NameParseError::NamespacedHostname(s.to_string())),
        }
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl fmt::Debug for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An IP address qualified by the network it is reachable on: `network/IP`.
/// The default network is the empty string, so `/10.0.0.1` is valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// The network name; empty for the default network.
    pub network: String,
    /// The address.
    pub address: IpAddr,
}

impl FromStr for NetworkAddress {
    type Err = NameParseError;

    /// Accepts `network/IP`, `/IP` and a bare `IP` (default network).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s.split_once('/').unwrap_or(("", s));
        let address = ip
            .parse()
            .map_err(|_| NameParseError::NetworkAddress(s.to_string()))?;
        Ok(NetworkAddress {
            network: network.to_string(),
            address,
        })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl fmt::Debug for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(NamespacedHostname);
string_serde!(NetworkAddress);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_hostname() {
        let n: NamespacedHostname = "default/echo.default.svc.cluster.local".parse().unwrap();
        assert_eq!(n.namespace, "default");
        assert_eq!(n.to_string(), "default/echo.default.svc.cluster.local");
        for bad in ["", "default", "/host", "ns/", "ns/a/b"] {
            assert!(bad.parse::<NamespacedHostname>().is_err(), "{bad}");
        }
    }

    #[test]
    fn network_address() {
        let a: NetworkAddress = "/10.0.0.1".parse().unwrap();
        assert_eq!(a.network, "");
        assert_eq!(a.to_string(), "/10.0.0.1");
        let b: NetworkAddress = "remote/127.10.0.2".parse().unwrap();
        assert_eq!(b.network, "remote");
        let c: NetworkAddress = "10.0.0.2".parse().unwrap();
        assert_eq!(c.network, "");
        assert!("net/notanip".parse::<NetworkAddress>().is_err());
    }
}
