#!/usr/bin/env bash
# The whole test suite: lint gates, unit tests, in-process and network-namespace end-to-end
# tests, and the TLS tests under each TLS provider. Needs root for the namespace tests; it
# installs the system packages it needs (Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "error: the test suite needs root (network namespaces, iptables, IP_TRANSPARENT)" >&2
  exit 1
fi

scripts/install-deps.sh

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace: unit, in-process and network-namespace end-to-end)"
cargo test --workspace --no-fail-fast

step "TLS tests with the ring provider"
cargo test -p ztunnel --no-default-features --features tls-ring --lib tls

step "TLS tests with the BoringSSL provider"
cargo test -p ztunnel --no-default-features --features tls-boring --lib tls

step "Helm charts: strict lint, Kubernetes schema validation, golden renders"
bash charts/tests/run.sh

echo
echo "all test steps passed"
