# syntax=docker/dockerfile:1.7
# The node agent (redirect-agent) and the chained CNI plugin (mesh-cni) in one image. Build
# from the repository root:
#   docker build -f docker/redirect-ebpf.Dockerfile -t $HUB/redirect-ebpf:$TAG .
# The eBPF programs (redirect-ebpf/bpf/*.c) are compiled by the loader's build.rs with clang
# and embedded in redirect-agent, so the image needs no compiler and no BPF object files.
# The agent runs privileged as root (BPF, setns, pidfd_getfd): the runtime image carries the
# tools it runs inside pod network namespaces (nsenter, ip, nft, sysctl) and /bin/sh for
# the CNI installer loop. Built for x86_64 (build.rs includes /usr/include/x86_64-linux-gnu).

FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev linux-libc-dev cmake \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p redirect-agent -p mesh-cni \
 && install -D -m 0755 target/release/redirect-agent /out/redirect-agent \
 && install -D -m 0755 target/release/mesh-cni /out/mesh-cni

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends iproute2 nftables procps util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/redirect-agent /out/mesh-cni /usr/local/bin/
ENTRYPOINT []
CMD ["redirect-agent", "run"]
