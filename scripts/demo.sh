#!/usr/bin/env bash
# demo.sh: build ztunnel, istiod-compat, the node agent (redirect-agent) and the CNI plugin
# (mesh-cni), then run the two-node ambient demo (ztunnel/examples/demo.rs): istiod-compat on
# local files in node1's network namespace, a node agent and ONE shared-mode ztunnel per node,
# pods enrolled by the CNI plugin and captured with eBPF (REDIRECT_MODE=nftables for the
# fallback), and a report of which connections were captured with which identities.
#
# Needs: Debian 12 (or similar), root (network namespaces, cgroups, BPF), a Rust toolchain.
# Installs what is missing with apt-get: iproute2, util-linux, tcpdump, nftables, iptables,
# perl, and clang/llvm/libbpf-dev/linux-libc-dev to compile the BPF programs.
# Exits non-zero if any step fails.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh: run as root (network namespaces, cgroups and BPF programs need it)" >&2
	exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v iptables-save >/dev/null 2>&1 || missing+=(iptables)
command -v perl >/dev/null 2>&1 || missing+=(perl-base)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v llvm-strip >/dev/null 2>&1 || compgen -G '/usr/bin/llvm-strip-*' >/dev/null || missing+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || missing+=(linux-libc-dev)
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

cargo build -p ztunnel -p istiod-compat -p redirect-agent -p mesh-cni --bins
cargo build -p ztunnel --examples

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
"$target_dir/debug/examples/demo" "$target_dir/debug/ztunnel"
