//! Compiles the .proto files with the pure-Rust `protox` parser (no system protoc) and
//! generates prost messages and tonic clients/servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/istio/workload/workload.proto",
        "proto/istio/security/authorization.proto",
        "proto/istio/v1/auth/ca.proto",
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/istio/workload/zds/zds.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=proto/google/rpc/status.proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Consumers bring their own transport (channel with TLS, or a test duplex).
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
