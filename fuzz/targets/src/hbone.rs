//! HBONE targets: the CONNECT `:authority`, the HBONE headers, and a whole CONNECT request
//! through the inbound validation that runs before policy.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, Method, Request, StatusCode, Uri};
use mesh_core::Identity;
use ztunnel::proxy::hbone::connect_request;
use ztunnel::proxy::hbone::headers::{self, Authority, Baggage, TraceParent};
use ztunnel::proxy::inbound::resolve_target;
use ztunnel::proxy::is_illegal_port;
use ztunnel::rbac::RbacConnection;
use ztunnel::socket::canonical;
use ztunnel::state::{ProxyState, Workload};

// === hbone_authority ===

/// `:authority` parsing. The input is taken as UTF-8, lossily: h2 hands ztunnel only what
/// `http` accepted as an authority (ASCII), but the parser takes any `&str` and must reject
/// the rest without panicking.
///
/// Invariants on what parses: Display re-parses to the same value, the port is never 0, and
/// the Display form is a valid CONNECT request for the HBONE client (what the outbound side
/// sends must be what the inbound side accepts).
pub fn hbone_authority(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = match headers::parse_authority(&text) {
        Ok(parsed) => parsed,
        Err(error) => return render(&error),
    };
    assert_ne!(parsed.port(), 0, "{text:?} parsed with port 0");
    let wire = parsed.to_string();
    match Authority::parse(&wire) {
        Ok(again) => assert_eq!(parsed, again, "{text:?} -> {wire:?} does not round-trip"),
        Err(error) => {
            panic!("{text:?} parsed as {parsed:?}, but its Display {wire:?} does not: {error}")
        }
    }
    if let Err(error) = connect_request(&wire, HeaderMap::new()) {
        panic!("{text:?} parsed as {parsed:?}, but the client cannot send {wire:?}: {error}");
    }
}

// === hbone_headers ===

/// `baggage`, `forwarded` (and `forwarded_host`) and `traceparent` on the same bytes: every
/// parser sees every input, so one corpus serves the three.
///
/// Invariants on what parses: baggage encodes and re-parses to the same fields; a `for=`
/// address (with a token `host=`) re-encodes and re-parses to the same parameters;
/// `forwarded_host` agrees with `parse_forwarded`; traceparent round-trips through Display
/// and `to_header`.
pub fn hbone_headers(data: &[u8]) {
    baggage(data);
    forwarded(data);
    traceparent(data);
}

fn baggage(data: &[u8]) {
    let parsed = match Baggage::parse(data) {
        Ok(parsed) => parsed,
        Err(error) => return render(&error),
    };
    // Values with characters outside the W3C baggage set are refused on encode: fine.
    let Ok(encoded) = parsed.to_header() else {
        return;
    };
    match Baggage::parse(encoded.as_bytes()) {
        Ok(again) => assert_eq!(
            comparable(parsed),
            comparable(again),
            "baggage {:?} re-encoded as {encoded:?} does not round-trip",
            String::from_utf8_lossy(data)
        ),
        Err(error) => panic!("baggage re-encoded as {encoded:?} does not parse: {error}"),
    }
}

/// The workload type is only on the wire with a workload name.
fn comparable(mut baggage: Baggage) -> Baggage {
    if baggage.workload_name.is_empty() {
        baggage.workload_type = Default::default();
    }
    baggage
}

fn forwarded(data: &[u8]) {
    let host = headers::forwarded_host(data).map_err(|e| e.to_string());
    let parsed = match headers::parse_forwarded(data) {
        Ok(parsed) => parsed,
        Err(error) => {
            assert_eq!(host, Err(error.to_string()), "forwarded_host disagrees");
            return render(&error);
        }
    };
    assert_eq!(host, Ok(parsed.host), "forwarded_host disagrees");
    let Some(client) = parsed.for_addr() else {
        return;
    };
    // A host that is not a token (a quoted-string with spaces, ...) is refused on encode.
    let Ok(encoded) = headers::forwarded_header(client, parsed.host) else {
        return;
    };
    match headers::parse_forwarded(encoded.as_bytes()) {
        Ok(again) => {
            assert_eq!(again.for_addr(), Some(client), "{encoded:?}: for= changed");
            assert_eq!(again.host, parsed.host, "{encoded:?}: host= changed");
        }
        Err(error) => panic!("forwarded re-encoded as {encoded:?} does not parse: {error}"),
    }
}

fn traceparent(data: &[u8]) {
    let parsed = match TraceParent::parse(data) {
        Ok(parsed) => parsed,
        Err(error) => return render(&error),
    };
    assert_ne!(parsed.trace_id, 0);
    assert_ne!(parsed.parent_id, 0);
    let text = parsed.to_string();
    match TraceParent::parse(text.as_bytes()) {
        Ok(again) => assert_eq!(parsed, again, "traceparent {text:?} does not round-trip"),
        Err(error) => panic!("traceparent Display {text:?} does not parse: {error}"),
    }
    match parsed.to_header() {
        Ok(value) => assert_eq!(value.as_bytes(), text.as_bytes()),
        Err(error) => panic!("traceparent {text:?} cannot be encoded: {error}"),
    }
}

// === hbone_request ===

/// The inbound state every request is resolved against: a workload with IPv4 and IPv6
/// addresses behind a service (with a target port mapped onto the HBONE port, and a named
/// port), a workload with an application tunnel, the same hostname in a second namespace,
/// and policies that deny one port and allow one principal.
const INBOUND_STATE: &str = r#"
workloads:
  - uid: Kubernetes//v1/Pod/default/echo
    name: echo
    namespace: default
    serviceAccount: echo
    workloadIps: ["10.0.0.5", "fd00::5"]
    protocol: HBONE
    services:
      "default/echo.default.svc.cluster.local": {80: 8080, 7000: 0, 9000: 15008}
  - uid: Kubernetes//v1/Pod/default/tunnel
    name: tunnel
    namespace: default
    serviceAccount: tunnel
    workloadIps: ["10.0.0.6"]
    protocol: HBONE
    applicationTunnel: {protocol: PROXY, port: 15088}
    services:
      "other/echo.default.svc.cluster.local": {80: 9090}
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    vips: ["/10.96.0.10"]
    ports: {80: 8080, 443: 8443, 7000: 0, 9000: 15008, 9001: 15001}
  - name: echo
    namespace: other
    hostname: echo.default.svc.cluster.local
    vips: ["/10.96.0.11"]
    ports: {80: 9090}
policies:
  - name: deny-9999
    namespace: default
    scope: Namespace
    action: Deny
    rules:
      - - - destinationPorts: [9999]
  - name: allow-client
    namespace: default
    scope: Namespace
    action: Allow
    rules:
      - - - principals: [{Exact: cluster.local/ns/default/sa/client}]
"#;

/// `(workload, the address its HBONE connection was accepted on)` pairs.
struct Inbound {
    state: ProxyState,
    targets: Vec<(Arc<Workload>, SocketAddr)>,
}

fn inbound() -> &'static Inbound {
    static INBOUND: OnceLock<Inbound> = OnceLock::new();
    INBOUND.get_or_init(|| {
        let state = match ztunnel::localconfig::parse(INBOUND_STATE) {
            Ok(state) => state,
            Err(error) => panic!("the hbone_request fixture does not parse: {error}"),
        };
        let mut targets = Vec::new();
        for uid in [
            "Kubernetes//v1/Pod/default/echo",
            "Kubernetes//v1/Pod/default/tunnel",
        ] {
            let Some(workload) = state.workloads.get(uid) else {
                panic!("the hbone_request fixture has no workload {uid}");
            };
            for ip in &workload.workload_ips {
                targets.push((workload.clone(), SocketAddr::new(*ip, 15008)));
            }
        }
        Inbound { state, targets }
    })
}

/// A whole CONNECT request, as h2 would hand it to the HBONE server, through the server's
/// method check and `inbound::resolve_target` for each fixture workload, then the header
/// parsing of the inbound metrics labels and the policy check.
///
/// Input format (so seeds are readable text): line 1 the method, line 2 the `:authority`
/// (empty: none), then `name: value` header lines. What `http` refuses to build is dropped,
/// as h2 would refuse it on the wire.
///
/// Invariants: a resolved target is on the accepting IP, never on port 0 or a proxy port,
/// and an IP authority resolves only to its own IP (unless the workload has an application
/// tunnel); a refusal is a 400 or a 503.
pub fn hbone_request(data: &[u8]) {
    let Some(request) = build_request(data) else {
        return;
    };
    if request.method() != Method::CONNECT {
        // `hbone::serve` answers 400 itself; the handler never sees it.
        return;
    }
    let authority = request.uri().authority().map_or("", |a| a.as_str());
    let headers = request.headers();

    // The inbound metrics labels read the baggage and, for a hostname, the service.
    if let Some(value) = headers.get(headers::BAGGAGE) {
        let _ = Baggage::parse(value.as_bytes());
    }
    let forwarded_for = headers
        .get(headers::FORWARDED)
        .and_then(|v| headers::parse_forwarded(v.as_bytes()).ok())
        .and_then(|f| f.for_addr());
    if let Some(value) = headers.get(headers::TRACEPARENT) {
        let _ = TraceParent::parse(value.as_bytes());
    }
    let parsed = headers::parse_authority(authority).ok();

    let inbound = inbound();
    let src = forwarded_for.unwrap_or_else(|| SocketAddr::from(([10, 0, 0, 1], 40000)));
    let src_identity = Some(Identity::new("cluster.local", "default", "client"));
    for (workload, local) in &inbound.targets {
        if let Some(Authority::Hostname { host, .. }) = &parsed {
            let _ = inbound.state.service_by_hostname(host, &workload.namespace);
        }
        let dst = match resolve_target(&inbound.state, workload, authority, *local) {
            Ok(dst) => dst,
            Err(error) => {
                let status = error.status();
                assert!(
                    status == StatusCode::BAD_REQUEST || status == StatusCode::SERVICE_UNAVAILABLE,
                    "{authority:?}: refused with {status}: {error}"
                );
                let _ = error.response_flag();
                render(&error);
                continue;
            }
        };
        assert_eq!(
            dst.ip(),
            local.ip(),
            "{authority:?}: resolved off the local IP"
        );
        assert_ne!(dst.port(), 0, "{authority:?}: resolved to port 0");
        assert!(
            !is_illegal_port(dst.port()),
            "{authority:?}: resolved to proxy port {dst}"
        );
        match &parsed {
            Some(Authority::Ip(addr)) => {
                assert_eq!(dst.port(), addr.port(), "{authority:?}: port changed");
                if workload.application_tunnel.is_none() {
                    let ip = canonical(*addr).ip();
                    assert_eq!(ip, local.ip(), "{authority:?}: IP mismatch accepted");
                }
            }
            Some(Authority::Hostname { .. }) => {}
            None => panic!("{authority:?} does not parse but resolved to {dst}"),
        }
        let conn = RbacConnection {
            src,
            src_identity: src_identity.clone(),
            dst,
            dst_network: workload.network.clone(),
        };
        let _ = inbound.state.assert_rbac(workload, &conn);
    }
}

/// Method line, authority line, header lines (see [`hbone_request`]).
fn build_request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let method = Method::from_bytes(lines.next()?).ok()?;
    let authority = lines.next().unwrap_or_default();
    let mut uri = http::uri::Parts::default();
    if !authority.is_empty() {
        // h2 parses `:authority` the same way before the request reaches ztunnel.
        uri.authority = Some(http::uri::Authority::try_from(authority).ok()?);
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(Uri::from_parts(uri).ok()?);
    for line in lines.filter(|line| !line.is_empty()) {
        let colon = line.iter().position(|b| *b == b':')?;
        let (name, value) = line.split_at(colon);
        let value = value[1..].trim_ascii_start();
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

// === shared ===

/// Error messages are built from hostile input too: rendering one must not panic.
pub(crate) fn render(error: &dyn std::error::Error) {
    std::hint::black_box(error.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_format() {
        let request = build_request(
            b"CONNECT\r\n10.0.0.5:8080\r\nbaggage: k8s.namespace.name=default\r\nforwarded:for=\"10.0.0.1:1\"\r\n\r\n",
        )
        .expect("a valid request");
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(
            request.uri().authority().map(|a| a.as_str()),
            Some("10.0.0.5:8080")
        );
        assert_eq!(
            request.headers()[headers::BAGGAGE],
            "k8s.namespace.name=default"
        );
        assert_eq!(request.headers()[headers::FORWARDED], "for=\"10.0.0.1:1\"");

        let request = build_request(b"CONNECT\n\n").expect("no authority");
        assert_eq!(request.uri().authority(), None);
        assert!(build_request(b"CONNECT\n10.0.0.5:8080\nno colon\n").is_none());
        assert!(build_request(b"").is_none());
    }

    /// Every seed but the ones meant to be dropped reaches the handler.
    #[test]
    fn seeds_build_requests() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/hbone_request");
        for entry in std::fs::read_dir(dir).expect("hbone_request corpus") {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("seed");
            let request = build_request(&data);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref() == Some("not-connect") {
                assert_ne!(request.map(|r| r.method().clone()), Some(Method::CONNECT));
            } else {
                assert!(request.is_some(), "{} is dropped", path.display());
            }
        }
    }
}
