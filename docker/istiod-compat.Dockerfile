# syntax=docker/dockerfile:1.7
# The control plane. Build from the repository root:
#   docker build -f docker/istiod-compat.Dockerfile -t $HUB/istiod-compat:$TAG .
# Non-root (distroless `nonroot`, uid 65532), no shell, no package manager.

FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang cmake \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p istiod-compat \
 && install -D -m 0755 target/release/istiod-compat /out/istiod-compat

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/istiod-compat /usr/local/bin/istiod-compat
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/istiod-compat"]
CMD ["serve"]
