//! Compiles the BPF C programs (`redirect-ebpf/bpf/*.c`) with clang into `$OUT_DIR/redirect.o`.
#![allow(
    clippy::expect_used,
    reason = "a build script reports failures by panicking"
)]

use std::{path::PathBuf, process::Command};

const APT_HINT: &str = "install the BPF toolchain: apt-get install clang llvm libbpf-dev linux-libc-dev \
                        (or run scripts/install-deps.sh)";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("redirect.o");
    for file in ["redirect.c", "maps.h"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());

    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!("`{clang}` not found or not working; {APT_HINT}"),
    }
    if !PathBuf::from("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("/usr/include/bpf/bpf_helpers.h is missing; {APT_HINT}");
    }
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-c")
        .arg(bpf_dir.join("redirect.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}; {APT_HINT}"));
    if !status.success() {
        panic!("{clang} failed to compile redirect-ebpf/bpf/redirect.c ({status}); {APT_HINT}");
    }
}
