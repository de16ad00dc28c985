//! Small pure helpers shared by the translators: label and annotation names, selectors,
//! addresses, identities and content hashes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Namespace or pod label enrolling pods in ambient (`ambient`), or opting a pod out (`none`).
pub const LABEL_DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Value of [`LABEL_DATAPLANE_MODE`] that enrolls.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Value of [`LABEL_DATAPLANE_MODE`] on a pod that opts out of an ambient namespace.
pub const DATAPLANE_MODE_NONE: &str = "none";
/// Annotation istio-cni puts on a pod once its traffic is captured (`enabled`).
pub const ANNOTATION_AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";
/// Annotation the sidecar injector puts on injected pods (istio-cni never captures them).
pub const ANNOTATION_SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Label of proxies that terminate HBONE themselves (`http`), e.g. injected sidecars.
pub const LABEL_TUNNEL: &str = "networking.istio.io/tunnel";
/// Label naming the network of a pod or namespace.
pub const LABEL_NETWORK: &str = "topology.istio.io/network";
/// Pod label overriding the locality: `region.zone.subzone` (label values cannot hold `/`).
pub const LABEL_ISTIO_LOCALITY: &str = "istio-locality";
/// Node label: region.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Node label: zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Node label: subzone (Istio's own).
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
/// Label pointing a namespace, pod or service at a waypoint (not supported here).
pub const LABEL_USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Policy annotation: evaluate and log only.
pub const ANNOTATION_DRY_RUN: &str = "istio.io/dry-run";
/// Service annotation selecting the traffic distribution (`PreferClose`).
pub const ANNOTATION_TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";
/// Service annotation: comma-separated service account names (same namespace) whose
/// identities may serve the service; they become `subject_alt_names`.
pub const ANNOTATION_SERVICE_ACCOUNTS: &str = "alpha.istio.io/kubernetes-service-accounts";
/// Service annotation: comma-separated identities (`td/ns/x/sa/y` or `spiffe://...`) that
/// may serve the service; they become `subject_alt_names`.
pub const ANNOTATION_CANONICAL_SERVICE_ACCOUNTS: &str = "alpha.istio.io/canonical-serviceaccounts";

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// An object's labels (empty when absent).
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// An object's annotations (empty when absent).
pub fn annotations(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.annotations.as_ref().unwrap_or(&EMPTY)
}

/// An object's name (empty when absent: such objects are skipped by callers).
pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// An object's namespace (`default` when absent, as kubectl does).
pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Whether every `selector` label is present with the same value in `labels` (an empty
/// selector selects everything; callers decide what an empty selector means).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Wire form of an IP: 4 or 16 bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Parses `10.0.0.0/8`, `10.0.0.1` (a /32) or an IPv6 equivalent into (network, prefix).
/// Host bits are cleared, so `10.1.2.3/8` means `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some((net.trunc().network(), net.prefix_len()));
    }
    let ip = s.parse::<IpAddr>().ok()?;
    let len = if ip.is_ipv4() { 32 } else { 128 };
    Some((ip, len))
}

/// Parses a port number 1-65535 (the Istio API carries ports as strings).
pub fn parse_port(s: &str) -> Option<u32> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(p) => Some(u32::from(p)),
    }
}

/// A SPIFFE id as workload certificates carry it.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// `<name>.<namespace>.svc.<domain suffix>`.
pub fn service_hostname(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

/// 64-bit FNV-1a: a stable content hash (the same bytes give the same value in every build
/// and process, unlike `DefaultHasher`), used for resource versions.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Fnv64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A fresh hasher.
    pub fn new() -> Self {
        Fnv64(Self::OFFSET)
    }

    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Feeds a length-prefixed chunk, so that `("ab","c")` and `("a","bc")` differ.
    pub fn write_chunk(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("10.0.0.0/8", Some(("10.0.0.0", 8)); "cidr")]
    #[test_case("10.1.2.3/8", Some(("10.0.0.0", 8)); "host bits cleared")]
    #[test_case("10.1.2.3", Some(("10.1.2.3", 32)); "bare v4")]
    #[test_case("fd00::1", Some(("fd00::1", 128)); "bare v6")]
    #[test_case("fd00::/8", Some(("fd00::", 8)); "v6 cidr")]
    #[test_case("10.0.0.0/33", None; "bad prefix")]
    #[test_case("nope", None; "garbage")]
    fn cidrs(input: &str, want: Option<(&str, u8)>) {
        let want = want.map(|(ip, len)| (ip.parse::<IpAddr>().unwrap(), len));
        assert_eq!(parse_cidr(input), want);
    }

    #[test_case("80", Some(80))]
    #[test_case("65535", Some(65535))]
    #[test_case("0", None)]
    #[test_case("65536", None)]
    #[test_case("-1", None)]
    #[test_case("http", None)]
    fn ports(input: &str, want: Option<u32>) {
        assert_eq!(parse_port(input), want);
    }

    #[test]
    fn fnv_known_value_and_chunking() {
        // FNV-1a 64 of "a" is a published test vector.
        let mut h = Fnv64::new();
        h.write(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        let (mut x, mut y) = (Fnv64::new(), Fnv64::new());
        x.write_chunk(b"ab");
        x.write_chunk(b"c");
        y.write_chunk(b"a");
        y.write_chunk(b"bc");
        assert_ne!(x.hex(), y.hex());
    }
}
