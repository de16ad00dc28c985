#!/usr/bin/env bash
# demo.sh: build ztunnel and istiod-compat and run the two-node ambient demo
# (ztunnel/examples/demo.rs): istiod-compat on local files in node1's network namespace,
# one ztunnel per pod configured over delta xDS with certificates from its CA.
#
# Needs: Debian 12 (or similar), root (it creates network namespaces), a Rust toolchain.
# Installs iproute2, iptables and tcpdump with apt-get when they are missing.
# Exits non-zero if any step fails.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh: run as root (network namespaces, veths and iptables need it)" >&2
	exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables-nft >/dev/null 2>&1 || missing+=(iptables)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "demo.sh: installing ${missing[*]}"
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
	echo "demo.sh: cargo not found; install Rust first (https://rustup.rs)" >&2
	exit 1
}

cargo build -p ztunnel -p istiod-compat --bins
cargo build -p ztunnel --examples

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
"$target_dir/debug/examples/demo" "$target_dir/debug/ztunnel" "$target_dir/debug/istiod-compat"
