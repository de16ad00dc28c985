#!/usr/bin/env bash
# Installs the Debian packages the demo and the tests need, only if something is missing.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
# nftables: the agent's REDIRECT_MODE=nftables fallback and the "nothing in the host netns" checks.
command -v nft >/dev/null || need+=(nftables)
# perl: the ambient netns tests' echo server (reports the peer address it saw).
command -v perl >/dev/null || need+=(perl)
command -v nsenter >/dev/null || need+=(util-linux)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v cmake >/dev/null || need+=(cmake)
# BPF toolchain for redirect-ebpf (build.rs compiles bpf/*.c with clang -target bpf).
for pkg in clang llvm libbpf-dev linux-libc-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v g++ >/dev/null || need+=(g++)
# The chart tests (charts/tests/run.sh) run in a Python venv.
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
