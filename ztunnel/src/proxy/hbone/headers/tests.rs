use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use test_case::test_case;

use super::*;

fn ip(s: &str) -> Authority {
    Authority::Ip(s.parse::<SocketAddr>().unwrap())
}

fn host(h: &str, port: u16) -> Authority {
    Authority::Hostname {
        host: h.to_owned(),
        port,
    }
}

// === Authority ===

#[test_case("10.0.0.5:8080", ip("10.0.0.5:8080"); "ipv4")]
#[test_case("[fd00::5]:8080", ip("[fd00::5]:8080"); "ipv6")]
#[test_case("[::ffff:10.0.0.5]:1", ip("[::ffff:10.0.0.5]:1"); "v4 mapped v6 kept")]
#[test_case("echo.default.svc.cluster.local:80", host("echo.default.svc.cluster.local", 80); "service hostname")]
#[test_case("localhost:65535", host("localhost", 65535); "max port")]
#[test_case("My_Host-1.example:15008", host("My_Host-1.example", 15008); "mixed case underscore dash")]
#[test_case("1.2.3.4.example:80", host("1.2.3.4.example", 80); "numeric labels then name")]
fn authority_parses(input: &str, want: Authority) {
    let got = parse_authority(input).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.to_string(), input);
    assert_eq!(input.parse::<Authority>().unwrap(), want);
}

#[test_case(""; "empty")]
#[test_case(":80"; "empty host")]
#[test_case("10.0.0.5"; "no port")]
#[test_case("10.0.0.5:"; "empty port")]
#[test_case("10.0.0.5:0"; "zero port")]
#[test_case("10.0.0.5:65536"; "port too large")]
#[test_case("10.0.0.5:000080"; "port too long")]
#[test_case("10.0.0.5:+80"; "signed port")]
#[test_case("10.0.0.5:8a"; "non numeric port")]
#[test_case("host:-1"; "negative port")]
#[test_case("fd00::5:80"; "unbracketed ipv6")]
#[test_case("[fd00::5]"; "ipv6 no port")]
#[test_case("[fd00::5]80"; "ipv6 no colon")]
#[test_case("[fd00::5]:"; "ipv6 empty port")]
#[test_case("[fd00::5:80"; "unterminated bracket")]
#[test_case("[10.0.0.5]:80"; "ipv4 in brackets")]
#[test_case("[fe80::1%eth0]:80"; "zone id")]
#[test_case("[]:80"; "empty brackets")]
#[test_case(" 10.0.0.5:80"; "leading space")]
#[test_case("10.0.0.5 :80"; "inner space")]
#[test_case("10.0.0.5:80\n"; "trailing newline")]
#[test_case("host\t:80"; "tab")]
#[test_case("user@10.0.0.5:80"; "userinfo")]
#[test_case("host:80/path"; "path")]
#[test_case("host:80?q=1"; "query")]
#[test_case("host:80#frag"; "fragment")]
#[test_case("http://host:80"; "scheme")]
#[test_case("10.0.0.256:80"; "bad ipv4 octet")]
#[test_case("010.0.0.1:80"; "octal looking ipv4")]
#[test_case("1.2.3:80"; "short ipv4")]
#[test_case("-host:80"; "label starts with dash")]
#[test_case("host-.example:80"; "label ends with dash")]
#[test_case("a..b:80"; "empty label")]
#[test_case("host.:80"; "trailing dot")]
#[test_case("hö:80"; "non ascii")]
#[test_case("ho*st:80"; "bad character")]
fn authority_rejects(input: &str) {
    let err = Authority::parse(input).unwrap_err();
    assert!(matches!(err, HboneError::BadAuthority { .. }), "{err}");
}

#[test]
fn authority_rejects_long_hostnames() {
    let label = "a".repeat(64);
    assert!(Authority::parse(&format!("{label}:80")).is_err());
    let long = ["a".repeat(63).as_str(); 4].join(".");
    assert_eq!(long.len(), 255);
    assert!(Authority::parse(&format!("{long}:80")).is_err());
    let huge = "a".repeat(100_000);
    let err = Authority::parse(&huge).unwrap_err().to_string();
    assert!(err.len() < 300, "error message is bounded: {}", err.len());
}

// === Baggage ===

fn full_baggage() -> Baggage {
    Baggage {
        cluster: "Kubernetes".into(),
        namespace: "default".into(),
        workload_name: "echo".into(),
        workload_type: WorkloadType::Deployment,
        service_name: "echo-svc".into(),
        service_version: "v1".into(),
        region: "us-east1".into(),
        zone: "us-east1-b".into(),
    }
}

#[test]
fn baggage_keys_in_order() {
    assert_eq!(
        full_baggage().to_header().unwrap(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=echo,\
         service.name=echo-svc,service.version=v1,cloud.region=us-east1,\
         cloud.availability_zone=us-east1-b"
    );
}

#[test]
fn baggage_omits_empty_fields() {
    let baggage = Baggage {
        namespace: "default".into(),
        workload_name: "echo-7d9f".into(),
        workload_type: WorkloadType::Pod,
        zone: "z1".into(),
        ..Default::default()
    };
    assert_eq!(
        baggage.to_header().unwrap(),
        "k8s.namespace.name=default,k8s.pod.name=echo-7d9f,cloud.availability_zone=z1"
    );
    assert_eq!(Baggage::default().to_header().unwrap(), "");
}

#[test_case(WorkloadType::Deployment, "k8s.deployment.name")]
#[test_case(WorkloadType::CronJob, "k8s.cronjob.name")]
#[test_case(WorkloadType::Pod, "k8s.pod.name")]
#[test_case(WorkloadType::Job, "k8s.job.name")]
fn baggage_workload_types_round_trip(workload_type: WorkloadType, key: &str) {
    let baggage = Baggage {
        workload_type,
        ..full_baggage()
    };
    let header = baggage.to_header().unwrap();
    assert!(header.to_str().unwrap().contains(&format!("{key}=echo")));
    assert_eq!(Baggage::parse(header.as_bytes()).unwrap(), baggage);
}

#[test]
fn baggage_from_workload() {
    let mut workload = crate::state::Workload {
        name: "echo-7d9f-abcde".into(),
        namespace: "default".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_name: "echo".into(),
        workload_type: "deployment".into(),
        ..Default::default()
    };
    workload.locality.region = "r".into();
    workload.locality.zone = "z".into();
    assert_eq!(
        Baggage::from_workload(&workload, "Kubernetes")
            .to_header()
            .unwrap(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=echo,\
         service.name=echo,service.version=v1,cloud.region=r,cloud.availability_zone=z"
    );
    workload.workload_type = "replicaset".into();
    let baggage = Baggage::from_workload(&workload, "");
    assert_eq!(baggage.workload_type, WorkloadType::Pod);
    assert_eq!(baggage.workload_name, "echo-7d9f-abcde");
}

#[test]
fn baggage_parse_is_lenient() {
    let parsed = Baggage::parse(
        b" k8s.namespace.name = ns1 ,unknown.key=x, garbage ,k8s.job.name=j;prop=1,,\
          service.version=v=2,cloud.region=r1,cloud.region=r2",
    )
    .unwrap();
    assert_eq!(
        parsed,
        Baggage {
            namespace: "ns1".into(),
            workload_name: "j".into(),
            workload_type: WorkloadType::Job,
            service_version: "v=2".into(),
            region: "r2".into(),
            ..Default::default()
        }
    );
    assert_eq!(Baggage::parse(b"").unwrap(), Baggage::default());
    assert!(Baggage::parse(b"k8s.namespace.name=\xff").is_err());
}

#[test_case("a,b"; "comma")]
#[test_case("a;b"; "semicolon")]
#[test_case("a b"; "space")]
#[test_case("a\"b"; "quote")]
#[test_case("a\\b"; "backslash")]
#[test_case("a\nb"; "newline")]
#[test_case("é"; "non ascii")]
fn baggage_rejects_unencodable_values(value: &str) {
    let baggage = Baggage {
        namespace: value.into(),
        ..Default::default()
    };
    assert!(baggage.to_header().is_err());
}

// === Forwarded ===

#[test]
fn forwarded_header_formats() {
    let v4: SocketAddr = "10.0.0.1:34567".parse().unwrap();
    let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
    assert_eq!(
        forwarded_header(v4, None).unwrap(),
        "for=\"10.0.0.1:34567\""
    );
    assert_eq!(
        forwarded_header(v6, Some("echo.default.svc.cluster.local")).unwrap(),
        "for=\"[fd00::1]:443\";host=echo.default.svc.cluster.local"
    );
    assert!(forwarded_header(v4, Some("bad host")).is_err());
    assert!(forwarded_header(v4, Some("")).is_err());
}

#[test]
fn forwarded_round_trips() {
    let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
    let header = forwarded_header(v6, Some("svc.ns.svc.cluster.local")).unwrap();
    let parsed = parse_forwarded(header.as_bytes()).unwrap();
    assert_eq!(parsed.for_addr(), Some(v6));
    assert_eq!(parsed.host, Some("svc.ns.svc.cluster.local"));
    assert_eq!(
        forwarded_host(header.as_bytes()).unwrap(),
        Some("svc.ns.svc.cluster.local")
    );
}

#[test_case("for=\"10.0.0.1:1\"", Some("10.0.0.1:1"), None; "for only")]
#[test_case("host=a.b", None, Some("a.b"); "host only")]
#[test_case("HOST=\"a.b\" ; For=x", Some("x"), Some("a.b"); "case and spaces")]
#[test_case("proto=https;host=a;by=\"[::1]:1\"", None, Some("a"); "other params ignored")]
#[test_case("for=a;host=h1, for=b;host=h2", Some("a"), Some("h1"); "first element only")]
#[test_case("host=\"\"", None, Some(""); "empty quoted")]
fn forwarded_parses(input: &str, for_node: Option<&str>, host: Option<&str>) {
    let parsed = parse_forwarded(input.as_bytes()).unwrap();
    assert_eq!(parsed, Forwarded { for_node, host });
}

#[test_case(""; "empty")]
#[test_case("for"; "no equals")]
#[test_case("=x"; "no name")]
#[test_case("host="; "no value")]
#[test_case("host=a;host=b"; "repeated")]
#[test_case("host=\"a"; "unterminated quote")]
#[test_case("host=\"a\\\"b\""; "escape")]
#[test_case("host=a b"; "space in token")]
#[test_case("host=a;"; "trailing semicolon")]
#[test_case("host=\u{e9}"; "non ascii")]
fn forwarded_rejects(input: &str) {
    assert!(parse_forwarded(input.as_bytes()).is_err(), "{input:?}");
}

// === Traceparent ===

#[test]
fn traceparent_random_is_valid() {
    for _ in 0..100 {
        let tp = TraceParent::random();
        let header = tp.to_header().unwrap();
        let s = header.to_str().unwrap();
        assert_eq!(s.len(), 55);
        assert!(s.starts_with("00-") && s.ends_with("-00"), "{s}");
        assert_eq!(s, tp.to_string());
        assert_eq!(TraceParent::parse(header.as_bytes()).unwrap(), tp);
    }
    assert_ne!(TraceParent::random(), TraceParent::random());
}

#[test]
fn traceparent_parses_w3c_example() {
    let tp =
        TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
    assert_eq!(tp.flags, 1);
    // A future version may append fields.
    assert!(
        TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab").is_ok()
    );
}

#[test_case(""; "empty")]
#[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"; "short")]
#[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"; "v00 too long")]
#[test_case("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"; "v01 junk")]
#[test_case("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; "version ff")]
#[test_case("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; "bad version")]
#[test_case("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"; "uppercase")]
#[test_case("00-00000000000000000000000000000000-00f067aa0ba902b7-01"; "zero trace")]
#[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"; "zero parent")]
#[test_case("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; "bad separator")]
#[test_case("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; "plus sign")]
#[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z"; "bad flags")]
fn traceparent_rejects(input: &str) {
    assert!(TraceParent::parse(input.as_bytes()).is_err(), "{input:?}");
}

// === Hostile input ===

/// Runs every parser over random and mutated inputs: they must return, never panic.
#[test]
fn parsers_never_panic_on_arbitrary_bytes() {
    const ALPHABET: &[u8] = b"0123456789abcdefxAF:[]@/?#.;,=\" \t\\-_%+\x00\xff\xc3\xa9";
    let seeds: [&[u8]; 5] = [
        b"10.0.0.5:8080",
        b"[fd00::5]:8080",
        b"k8s.namespace.name=default,k8s.pod.name=p",
        b"for=\"[fd00::1]:443\";host=a.b",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    let mut rng = StdRng::seed_from_u64(0x4b0e);
    for round in 0..50_000 {
        let mut input: Vec<u8> = if round % 2 == 0 {
            let len = rng.random_range(0..80);
            (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect()
        } else {
            seeds[rng.random_range(0..seeds.len())].to_vec()
        };
        for _ in 0..rng.random_range(0..4) {
            if input.is_empty() {
                break;
            }
            let at = rng.random_range(0..input.len());
            match rng.random_range(0..3) {
                0 => input[at] = ALPHABET[rng.random_range(0..ALPHABET.len())],
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, rng.random()),
            }
        }
        let _ = Authority::parse(&String::from_utf8_lossy(&input));
        let _ = Baggage::parse(&input);
        let _ = parse_forwarded(&input);
        let _ = TraceParent::parse(&input);
    }
}
