# syntax=docker/dockerfile:1.7
# The node proxy. Build from the repository root:
#   docker build -f docker/ztunnel.Dockerfile -t $HUB/ztunnel:$TAG .
# Runs as uid 0 with only NET_ADMIN and SYS_ADMIN (set by the Helm chart): Kubernetes grants
# added capabilities to root only. The runtime image has no shell and no package manager.

FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
# C toolchain for aws-lc-rs (the default TLS provider); protobuf is compiled by protox (no protoc).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang cmake \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ztunnel \
 && install -D -m 0755 target/release/ztunnel /out/ztunnel

FROM gcr.io/distroless/cc-debian12:latest
COPY --from=build /out/ztunnel /usr/local/bin/ztunnel
# Relative defaults (./var/run/secrets/...) resolve from /; the chart sets absolute paths.
WORKDIR /
ENTRYPOINT ["/usr/local/bin/ztunnel"]
CMD ["proxy"]
