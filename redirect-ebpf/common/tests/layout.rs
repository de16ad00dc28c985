//! The Rust types have exactly the C layout of `redirect-ebpf/bpf/maps.h`: this compiles the
//! header with the host C compiler (clang, as for the BPF object, else cc) and compares every
//! size and offset. Fails (never skips) when no C compiler is installed.

use std::{collections::HashMap, mem::size_of, path::PathBuf, process::Command};

use redirect_ebpf_common::{
    ClientKey, IpKey, MAX_POD_IPS, OrigDst, PodIps, RedirectConfig, TupleKey,
};

/// (C expression, Rust value) pairs.
fn rust_layout() -> Vec<(&'static str, usize)> {
    use std::mem::offset_of;
    vec![
        ("REDIRECT_MAX_POD_IPS", MAX_POD_IPS),
        (
            "sizeof(struct redirect_config)",
            size_of::<RedirectConfig>(),
        ),
        (
            "offsetof(struct redirect_config, mark)",
            offset_of!(RedirectConfig, mark),
        ),
        (
            "offsetof(struct redirect_config, delivery_mark)",
            offset_of!(RedirectConfig, delivery_mark),
        ),
        (
            "offsetof(struct redirect_config, outbound_port)",
            offset_of!(RedirectConfig, outbound_port),
        ),
        (
            "offsetof(struct redirect_config, inbound_port)",
            offset_of!(RedirectConfig, inbound_port),
        ),
        (
            "offsetof(struct redirect_config, hbone_port)",
            offset_of!(RedirectConfig, hbone_port),
        ),
        (
            "offsetof(struct redirect_config, dns_port)",
            offset_of!(RedirectConfig, dns_port),
        ),
        (
            "offsetof(struct redirect_config, skip_port)",
            offset_of!(RedirectConfig, skip_port),
        ),
        ("sizeof(struct ip_key)", size_of::<IpKey>()),
        ("sizeof(struct pod_ips)", size_of::<PodIps>()),
        ("offsetof(struct pod_ips, v4)", offset_of!(PodIps, v4)),
        ("offsetof(struct pod_ips, v6)", offset_of!(PodIps, v6)),
        ("offsetof(struct pod_ips, n_v4)", offset_of!(PodIps, n_v4)),
        ("offsetof(struct pod_ips, n_v6)", offset_of!(PodIps, n_v6)),
        ("sizeof(struct orig_dst)", size_of::<OrigDst>()),
        ("offsetof(struct orig_dst, addr)", offset_of!(OrigDst, addr)),
        (
            "offsetof(struct orig_dst, port_be)",
            offset_of!(OrigDst, port_be),
        ),
        ("sizeof(struct client_key)", size_of::<ClientKey>()),
        (
            "offsetof(struct client_key, netns_cookie)",
            offset_of!(ClientKey, netns_cookie),
        ),
        (
            "offsetof(struct client_key, addr)",
            offset_of!(ClientKey, addr),
        ),
        (
            "offsetof(struct client_key, port)",
            offset_of!(ClientKey, port),
        ),
        ("sizeof(struct tuple_key)", size_of::<TupleKey>()),
        ("offsetof(struct tuple_key, src)", offset_of!(TupleKey, src)),
        ("offsetof(struct tuple_key, dst)", offset_of!(TupleKey, dst)),
        (
            "offsetof(struct tuple_key, sport)",
            offset_of!(TupleKey, sport),
        ),
        (
            "offsetof(struct tuple_key, dport)",
            offset_of!(TupleKey, dport),
        ),
    ]
}

fn c_compiler() -> String {
    for cc in ["clang", "cc"] {
        if Command::new(cc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return cc.to_string();
        }
    }
    panic!(
        "no C compiler (clang or cc) to check maps.h: apt-get install clang llvm libbpf-dev linux-libc-dev"
    );
}

#[test]
fn rust_types_match_maps_h() {
    let layout = rust_layout();
    let bpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bpf");
    let dir = std::env::temp_dir().join(format!("redirect-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut program = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"maps.h\"\nint main(void) {\n",
    );
    for (expr, _) in &layout {
        program.push_str(&format!(
            "  printf(\"%s=%zu\\n\", \"{expr}\", (size_t)({expr}));\n"
        ));
    }
    program.push_str("  return 0;\n}\n");
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, program).expect("write layout.c");
    let out = Command::new(c_compiler())
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "compiling layout.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("run layout");
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    let c: HashMap<String, usize> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().expect("number")))
        .collect();
    assert_eq!(c.len(), layout.len(), "C output: {c:?}");
    for (expr, rust) in layout {
        assert_eq!(c[expr], rust, "{expr}: C {} vs Rust {rust}", c[expr]);
    }
}

#[test]
fn ip_keys_round_trip_and_map_ipv4() {
    let v4: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
    let key = IpKey::from_ip(v4);
    // ::ffff:10.1.2.3 in network order.
    let bytes: Vec<u8> = key.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(
        bytes,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
    );
    assert_eq!(key.to_ip(), v4);
    let v6: std::net::IpAddr = "fd00::1:2".parse().expect("ip");
    assert_eq!(IpKey::from_ip(v6).to_ip(), v6);
}
