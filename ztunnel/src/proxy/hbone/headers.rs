//! HBONE request headers: `:authority`, `baggage`, `forwarded`, `traceparent`
//! (reference §4.3).
//!
//! Pure functions. Parsers take untrusted input and never panic: any byte string yields
//! a value or an [`HboneError`].

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use rand::Rng;

use super::HboneError;
use crate::state::Workload;

/// `baggage`: describes the source workload (request) or the destination (response).
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `forwarded`: `for="<client ip:port>"` and optionally `;host=<service hostname>`.
pub const FORWARDED: HeaderName = http::header::FORWARDED;
/// `traceparent`: W3C trace context, used for log correlation.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-network`: source network, on the inner CONNECT of double HBONE only.
pub const X_FORWARDED_NETWORK: HeaderName = HeaderName::from_static("x-forwarded-network");

/// Longest authority accepted: a 253-byte hostname plus `:65535`, with some slack for an
/// IPv6 literal in brackets.
const MAX_AUTHORITY_LEN: usize = 261;
const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

// === Authority ===

/// A parsed CONNECT `:authority`: the tunnel target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Authority {
    /// `ip:port` or `[ipv6]:port`: a workload address or an original destination.
    Ip(SocketAddr),
    /// `hostname:port`: a service hostname and service port (double HBONE, §7.2).
    Hostname {
        /// The hostname, as received (not lowercased).
        host: String,
        /// The port, never zero.
        port: u16,
    },
}

impl Authority {
    /// Parses `ip:port`, `[ipv6]:port` or `hostname:port`.
    ///
    /// Rejects: empty input, a missing, empty, non-numeric or zero port, unbracketed IPv6,
    /// whitespace or control characters, userinfo (`@`), paths, queries and fragments,
    /// and hostnames that are not DNS names (labels of letters, digits, `-` and `_`; the
    /// last label not all digits, so a malformed IPv4 address is not taken for a name).
    pub fn parse(s: &str) -> Result<Authority, HboneError> {
        let bad = |reason| HboneError::BadAuthority {
            authority: truncate(s),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_AUTHORITY_LEN {
            return Err(bad("too long"));
        }
        for b in s.bytes() {
            match b {
                b'@' => return Err(bad("userinfo is not allowed")),
                b'/' | b'?' | b'#' => return Err(bad("path, query or fragment is not allowed")),
                b if b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii() => {
                    return Err(bad("whitespace, control or non-ASCII character"));
                }
                _ => {}
            }
        }

        if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("unterminated '['"))?;
            let ip = Ipv6Addr::from_str(host).map_err(|_| bad("invalid IPv6 address"))?;
            let port = after.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
            let port = parse_port(port).map_err(bad)?;
            return Ok(Authority::Ip(SocketAddr::new(IpAddr::V6(ip), port)));
        }

        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        if host.contains(':') {
            return Err(bad("IPv6 address must be in brackets"));
        }
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = parse_port(port).map_err(bad)?;
        if let Ok(ip) = Ipv4Addr::from_str(host) {
            return Ok(Authority::Ip(SocketAddr::new(IpAddr::V4(ip), port)));
        }
        validate_hostname(host).map_err(bad)?;
        Ok(Authority::Hostname {
            host: host.to_owned(),
            port,
        })
    }

    /// The port of either form.
    pub fn port(&self) -> u16 {
        match self {
            Authority::Ip(addr) => addr.port(),
            Authority::Hostname { port, .. } => *port,
        }
    }
}

/// Parses a CONNECT `:authority`; see [`Authority::parse`].
pub fn parse_authority(s: &str) -> Result<Authority, HboneError> {
    Authority::parse(s)
}

impl FromStr for Authority {
    type Err = HboneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Authority::parse(s)
    }
}

impl fmt::Display for Authority {
    /// Writes the wire form: `ip:port`, `[ipv6]:port` or `hostname:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authority::Ip(addr) => write!(f, "{addr}"),
            Authority::Hostname { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Keeps error messages bounded when the input is hostile.
fn truncate(s: &str) -> String {
    const MAX: usize = 128;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    if s.is_empty() {
        return Err("missing port");
    }
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port is not a number in 1..=65535");
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed"),
        Ok(port) => Ok(port),
        Err(_) => Err("port is not a number in 1..=65535"),
    }
}

fn validate_hostname(host: &str) -> Result<(), &'static str> {
    if host.len() > MAX_HOSTNAME_LEN {
        return Err("hostname too long");
    }
    let mut last_label_numeric = false;
    for label in host.split('.') {
        if label.is_empty() {
            return Err("empty hostname label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("hostname label too long");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalid character in hostname");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("hostname label starts or ends with '-'");
        }
        last_label_numeric = label.bytes().all(|b| b.is_ascii_digit());
    }
    if last_label_numeric {
        return Err("invalid IPv4 address");
    }
    Ok(())
}

// === Baggage ===

/// The kind of Kubernetes controller behind a workload, as it appears in baggage keys
/// (`k8s.<type>.name`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WorkloadType {
    /// `k8s.deployment.name`.
    #[default]
    Deployment,
    /// `k8s.cronjob.name`.
    CronJob,
    /// `k8s.pod.name`.
    Pod,
    /// `k8s.job.name`.
    Job,
}

impl WorkloadType {
    /// The lowercase name used in baggage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Deployment => "deployment",
            WorkloadType::CronJob => "cronjob",
            WorkloadType::Pod => "pod",
            WorkloadType::Job => "job",
        }
    }

    /// Parses the lowercase name (`deployment`, `cronjob`, `pod`, `job`).
    pub fn parse(s: &str) -> Option<WorkloadType> {
        match s {
            "deployment" => Some(WorkloadType::Deployment),
            "cronjob" => Some(WorkloadType::CronJob),
            "pod" => Some(WorkloadType::Pod),
            "job" => Some(WorkloadType::Job),
            _ => None,
        }
    }

    fn baggage_key(self) -> &'static str {
        match self {
            WorkloadType::Deployment => "k8s.deployment.name",
            WorkloadType::CronJob => "k8s.cronjob.name",
            WorkloadType::Pod => "k8s.pod.name",
            WorkloadType::Job => "k8s.job.name",
        }
    }
}

/// Workload metadata carried in the `baggage` header. Empty strings are "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`.
    pub cluster: String,
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// `k8s.<workload_type>.name`.
    pub workload_name: String,
    /// Selects the key of `workload_name`.
    pub workload_type: WorkloadType,
    /// `service.name` (canonical name).
    pub service_name: String,
    /// `service.version` (canonical revision).
    pub service_version: String,
    /// `cloud.region`.
    pub region: String,
    /// `cloud.availability_zone`.
    pub zone: String,
}

impl Baggage {
    /// Describes `workload`, in cluster `cluster`. An unknown workload type is reported
    /// as a pod: the workload name is then the pod name.
    pub fn from_workload(workload: &Workload, cluster: &str) -> Baggage {
        let (workload_type, workload_name) = match WorkloadType::parse(&workload.workload_type) {
            Some(workload_type) => (workload_type, &workload.workload_name),
            None => (WorkloadType::Pod, &workload.name),
        };
        Baggage {
            cluster: cluster.to_owned(),
            namespace: workload.namespace.clone(),
            workload_name: workload_name.clone(),
            workload_type,
            service_name: workload.canonical_name.clone(),
            service_version: workload.canonical_revision.clone(),
            region: workload.locality.region.clone(),
            zone: workload.locality.zone.clone(),
        }
    }

    /// Encodes the non-empty fields as comma-joined `key=value` pairs, in the order
    /// cluster, namespace, workload, service name, service version, region, zone.
    ///
    /// Values are not percent-encoded (like Istio); a value with a character outside the
    /// W3C baggage value set (space, `"`, `,`, `;`, `\`, controls, non-ASCII) is an error.
    /// All fields empty gives an empty header value.
    pub fn to_header(&self) -> Result<HeaderValue, HboneError> {
        let fields = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (self.workload_type.baggage_key(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ];
        let len = fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        let mut out = String::with_capacity(len);
        for (key, value) in fields {
            if value.is_empty() {
                continue;
            }
            if !value.bytes().all(is_baggage_octet) {
                return Err(HboneError::BadHeader {
                    header: "baggage",
                    reason: "value has a character not allowed in baggage",
                });
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        header_value(out, "baggage")
    }

    /// Parses a `baggage` header value. Unknown keys, members without `=` and member
    /// properties (`;...`) are ignored; the last occurrence of a key wins. Only non-UTF-8
    /// input is an error.
    pub fn parse(value: &[u8]) -> Result<Baggage, HboneError> {
        let value = std::str::from_utf8(value).map_err(|_| HboneError::BadHeader {
            header: "baggage",
            reason: "not UTF-8",
        })?;
        let mut baggage = Baggage::default();
        for member in value.split(',') {
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            let value = value.split_once(';').map_or(value, |(v, _props)| v);
            let (key, value) = (key.trim_matches(is_ows), value.trim_matches(is_ows));
            let field = match key {
                "k8s.cluster.name" => &mut baggage.cluster,
                "k8s.namespace.name" => &mut baggage.namespace,
                "service.name" => &mut baggage.service_name,
                "service.version" => &mut baggage.service_version,
                "cloud.region" => &mut baggage.region,
                "cloud.availability_zone" => &mut baggage.zone,
                _ => {
                    let workload_type = match key {
                        "k8s.deployment.name" => WorkloadType::Deployment,
                        "k8s.cronjob.name" => WorkloadType::CronJob,
                        "k8s.pod.name" => WorkloadType::Pod,
                        "k8s.job.name" => WorkloadType::Job,
                        _ => continue,
                    };
                    baggage.workload_type = workload_type;
                    &mut baggage.workload_name
                }
            };
            value.clone_into(field);
        }
        Ok(baggage)
    }
}

/// W3C baggage-octet: printable ASCII except space, `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn header_value(s: String, header: &'static str) -> Result<HeaderValue, HboneError> {
    // From an owned buffer: no copy.
    HeaderValue::from_maybe_shared(Bytes::from(s)).map_err(|_| HboneError::BadHeader {
        header,
        reason: "not a valid header value",
    })
}

// === Forwarded ===

/// Builds `for="<client ip:port>"`, plus `;host=<host>` when the connection was
/// addressed to a service. IPv6 is bracketed inside the quotes.
pub fn forwarded_header(client: SocketAddr, host: Option<&str>) -> Result<HeaderValue, HboneError> {
    let mut out = String::with_capacity(64);
    // Writing to a String cannot fail.
    let _ = write!(out, "for=\"{client}\"");
    if let Some(host) = host {
        if host.is_empty() || !host.bytes().all(is_tchar) {
            return Err(HboneError::BadHeader {
                header: "forwarded",
                reason: "host is not a token",
            });
        }
        out.push_str(";host=");
        out.push_str(host);
    }
    header_value(out, "forwarded")
}

/// The parameters of the first element of a `forwarded` header (RFC 7239), borrowed from
/// the header value with quotes removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded<'a> {
    /// `for=`: the downstream client, e.g. `10.0.0.1:1234` or `[fd00::1]:1234`.
    pub for_node: Option<&'a str>,
    /// `host=`: the service hostname the client addressed.
    pub host: Option<&'a str>,
}

impl Forwarded<'_> {
    /// `for=` as a socket address, when it is one.
    pub fn for_addr(&self) -> Option<SocketAddr> {
        self.for_node.and_then(|f| f.parse().ok())
    }
}

/// Parses the first element of a `forwarded` header. Parameter names are
/// case-insensitive; a repeated parameter, a malformed pair, an escaped quoted-string or
/// non-ASCII input is an error. Parameters other than `for` and `host` are ignored.
pub fn parse_forwarded(value: &[u8]) -> Result<Forwarded<'_>, HboneError> {
    let bad = |reason| HboneError::BadHeader {
        header: "forwarded",
        reason,
    };
    if !value.is_ascii() {
        return Err(bad("non-ASCII byte"));
    }
    let mut out = Forwarded::default();
    let mut rest = value;
    loop {
        rest = trim_ows_start(rest);
        let name_len = rest.iter().take_while(|b| is_tchar(**b)).count();
        if name_len == 0 {
            return Err(bad("expected a parameter name"));
        }
        let (name, after) = rest.split_at(name_len);
        let after = after.strip_prefix(b"=").ok_or(bad("expected '='"))?;
        let (param, after) = if let Some(quoted) = after.strip_prefix(b"\"") {
            let end = quoted
                .iter()
                .position(|b| *b == b'"' || *b == b'\\')
                .ok_or(bad("unterminated quoted-string"))?;
            if quoted[end] == b'\\' {
                return Err(bad("escapes in quoted-string are not supported"));
            }
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let len = after.iter().take_while(|b| is_tchar(**b)).count();
            if len == 0 {
                return Err(bad("expected a value"));
            }
            after.split_at(len)
        };
        // The input is ASCII, so every sub-slice is UTF-8.
        let param = std::str::from_utf8(param).map_err(|_| bad("non-ASCII byte"))?;
        let slot = if name.eq_ignore_ascii_case(b"for") {
            Some(&mut out.for_node)
        } else if name.eq_ignore_ascii_case(b"host") {
            Some(&mut out.host)
        } else {
            None
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return Err(bad("repeated parameter"));
            }
            *slot = Some(param);
        }
        match trim_ows_start(after).split_first() {
            None | Some((b',', _)) => return Ok(out),
            Some((b';', next)) => rest = next,
            Some(_) => return Err(bad("expected ';' or ','")),
        }
    }
}

/// `host=` of the first `forwarded` element, if present.
pub fn forwarded_host(value: &[u8]) -> Result<Option<&str>, HboneError> {
    parse_forwarded(value).map(|f| f.host)
}

/// RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

// === Traceparent ===

const TRACEPARENT_LEN: usize = 55;

/// A W3C `traceparent`: `<version>-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Trace id, never zero.
    pub trace_id: u128,
    /// Parent (span) id, never zero.
    pub parent_id: u64,
    /// Trace flags (`00`: not sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A random trace and parent id, flags `00` (one per downstream connection).
    pub fn random() -> TraceParent {
        let mut rng = rand::rng();
        TraceParent {
            trace_id: rng.random::<u128>().max(1),
            parent_id: rng.random::<u64>().max(1),
            flags: 0,
        }
    }

    /// The version-`00` header value.
    pub fn to_header(&self) -> Result<HeaderValue, HboneError> {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..35], self.trace_id);
        buf[35] = b'-';
        write_hex(&mut buf[36..52], u128::from(self.parent_id));
        buf[52] = b'-';
        write_hex(&mut buf[53..55], u128::from(self.flags));
        HeaderValue::from_bytes(&buf).map_err(|_| HboneError::BadHeader {
            header: "traceparent",
            reason: "not a valid header value",
        })
    }

    /// Parses and validates a `traceparent` value: lowercase hex, version not `ff`, ids not
    /// all zero; version `00` must be exactly 55 bytes, later versions may append `-...`.
    pub fn parse(value: &[u8]) -> Result<TraceParent, HboneError> {
        let bad = |reason| HboneError::BadHeader {
            header: "traceparent",
            reason,
        };
        if value.len() < TRACEPARENT_LEN {
            return Err(bad("too short"));
        }
        let version = parse_hex(&value[0..2]).ok_or(bad("invalid version"))?;
        if version == 0xff {
            return Err(bad("version ff is forbidden"));
        }
        if version == 0 && value.len() != TRACEPARENT_LEN {
            return Err(bad("version 00 must be 55 bytes"));
        }
        if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
            return Err(bad("invalid trailing data"));
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(bad("missing '-' separator"));
        }
        let trace_id = parse_hex(&value[3..35]).ok_or(bad("invalid trace id"))?;
        let parent_id = parse_hex(&value[36..52]).ok_or(bad("invalid parent id"))?;
        let flags = parse_hex(&value[53..55]).ok_or(bad("invalid flags"))?;
        if trace_id == 0 {
            return Err(bad("trace id is all zeros"));
        }
        if parent_id == 0 {
            return Err(bad("parent id is all zeros"));
        }
        Ok(TraceParent {
            trace_id,
            // Sixteen hex digits fit in 64 bits and two in 8.
            parent_id: u64::try_from(parent_id).map_err(|_| bad("invalid parent id"))?,
            flags: u8::try_from(flags).map_err(|_| bad("invalid flags"))?,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Writes `value` as lowercase hex filling `out` (most significant digit first).
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Lowercase hex only, at most 32 digits (no sign, no uppercase: W3C is strict).
fn parse_hex(s: &[u8]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    s.iter().try_fold(0u128, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(digit))
    })
}

#[cfg(test)]
mod tests;
