//! HBONE request building and parsing: what the client proxy does for every outbound
//! connection (baggage, forwarded, traceparent headers, CONNECT request) and what the server
//! proxy parses from it (authority, baggage, forwarded, traceparent).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use ztunnel::proxy::hbone::connect_request;
use ztunnel::proxy::hbone::headers::{
    self, BAGGAGE, Baggage, FORWARDED, TRACEPARENT, TraceParent, parse_authority,
};
use ztunnel::state::Workload;

const AUTHORITY: &str = "10.0.2.2:8080";

fn client_workload() -> Workload {
    Workload {
        uid: "Kubernetes//v1/Pod/frontend/client-7d9f8b6c5-x2x4z".into(),
        name: "client-7d9f8b6c5-x2x4z".into(),
        namespace: "frontend".into(),
        service_account: "client".into(),
        canonical_name: "client".into(),
        canonical_revision: "v1".into(),
        workload_name: "client".into(),
        workload_type: "deployment".into(),
        ..Workload::default()
    }
}

/// The outbound side: the headers and request `outbound.rs` builds per connection.
fn build_request(source: &Workload, peer: SocketAddr) -> http::Request<()> {
    let mut extra = HeaderMap::with_capacity(3);
    if let Ok(v) = Baggage::from_workload(source, "Kubernetes").to_header() {
        extra.insert(BAGGAGE, v);
    }
    if let Ok(v) = headers::forwarded_header(peer, Some("echo.backend.svc.cluster.local")) {
        extra.insert(FORWARDED, v);
    }
    if let Ok(v) = TraceParent::random().to_header() {
        extra.insert(TRACEPARENT, v);
    }
    match connect_request(AUTHORITY, extra) {
        Ok(req) => req,
        Err(err) => panic!("building the CONNECT request: {err}"),
    }
}

fn hbone_build(c: &mut Criterion) {
    let source = client_workload();
    let peer: SocketAddr = ([10, 0, 1, 2], 45_678).into();
    let mut group = c.benchmark_group("hbone_build");
    group.bench_function("connect_request_with_headers", |b| {
        b.iter(|| build_request(black_box(&source), black_box(peer)))
    });
    group.bench_function("connect_request_bare", |b| {
        b.iter(|| connect_request(black_box(AUTHORITY), HeaderMap::new()))
    });
    group.bench_function("baggage", |b| {
        b.iter(|| Baggage::from_workload(black_box(&source), "Kubernetes").to_header())
    });
    group.bench_function("forwarded", |b| {
        b.iter(|| headers::forwarded_header(black_box(peer), None))
    });
    group.bench_function("traceparent_random", |b| {
        b.iter(|| TraceParent::random().to_header())
    });
    group.finish();
}

fn hbone_parse(c: &mut Criterion) {
    let req = build_request(&client_workload(), ([10, 0, 1, 2], 45_678).into());
    let header = |name: http::HeaderName| match req.headers().get(&name) {
        Some(value) => value.as_bytes().to_vec(),
        None => panic!("the built request has no {name} header"),
    };
    let (baggage, forwarded, traceparent) =
        (header(BAGGAGE), header(FORWARDED), header(TRACEPARENT));
    // Parse once outside the timing: the bench must measure successful parses.
    assert!(Baggage::parse(&baggage).is_ok());
    assert!(headers::parse_forwarded(&forwarded).is_ok());
    assert!(TraceParent::parse(&traceparent).is_ok());

    let mut group = c.benchmark_group("hbone_parse");
    for (name, authority) in [
        ("authority_ipv4", AUTHORITY),
        ("authority_ipv6", "[fd00:10:244::7]:8080"),
        ("authority_hostname", "echo.backend.svc.cluster.local:80"),
    ] {
        assert!(parse_authority(authority).is_ok(), "{authority}");
        group.bench_function(name, |b| b.iter(|| parse_authority(black_box(authority))));
    }
    group.bench_function("baggage", |b| {
        b.iter(|| Baggage::parse(black_box(&baggage)))
    });
    group.bench_function("forwarded", |b| {
        b.iter(|| headers::parse_forwarded(black_box(&forwarded)).map(|f| f.for_addr()))
    });
    group.bench_function("traceparent", |b| {
        b.iter(|| TraceParent::parse(black_box(&traceparent)))
    });
    group.finish();
}

criterion_group!(benches, hbone_build, hbone_parse);
criterion_main!(benches);
