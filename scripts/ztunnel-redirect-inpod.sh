#!/bin/sh
# ztunnel-redirect-inpod.sh: Istio ambient's in-pod capture rules for ONE pod network namespace,
# as istio-cni installs them (see reference "istio-ambient-wire.md" section 3.4).
#
# Run it inside the pod's network namespace:
#   nsenter --net=/run/netns/<pod> -- sh scripts/ztunnel-redirect-inpod.sh          # install
#   nsenter --net=/run/netns/<pod> -- sh scripts/ztunnel-redirect-inpod.sh --clean  # remove
#
# Backend: iptables-nft / ip6tables-nft (the nf_tables backend of iptables 1.8). Rules are
# never written with iptables-legacy; do not mix the two backends in one namespace.
#
# Installing is idempotent: the ISTIO_* chains are created if missing and flushed, the jumps
# from the built-in chains are added only once, the policy-routing rule and route are replaced.
#
# What is installed (IPv4; the same for IPv6 when the namespace has IPv6):
#   mangle PREROUTING -> ISTIO_PRERT: packets marked 0x539/0xfff (ztunnel's own, looping back
#          to the pod's own IP with a spoofed source) set connmark 0x111/0xfff.
#   mangle OUTPUT -> ISTIO_OUTPUT: connections with connmark 0x111/0xfff restore it as the mark.
#   nat PREROUTING -> ISTIO_PRERT: accept TCP from the probe address 169.254.7.127; redirect TCP
#          not to 127.0.0.1, not to port 15008 and not marked 0x539 to 15006 (inbound plaintext).
#   nat OUTPUT -> ISTIO_OUTPUT: accept TCP to the probe address; accept TCP marked 0x111;
#          accept traffic out lo not to 127.0.0.1 (the app calling its own pod IP); redirect TCP
#          not to 127.0.0.1 and not marked 0x539 to 15001 (outbound).
#   ip rule fwmark 0x111/0xfff pref 32764 lookup 100; table 100: local 0.0.0.0/0 dev lo, so the
#          app's replies to a spoofed client source reach ztunnel's transparent socket.
#
# Left out on purpose:
#   - DNS capture (UDP/TCP 53 -> 15053 and the raw-table CT zone rules): this ztunnel has no
#     DNS proxy yet.
#   - virtual-interface and ingress-mode variants, and the host-netns probe SNAT rule.
set -eu

IPT4=iptables-nft
IPT6=ip6tables-nft
PROBE4=169.254.7.127/32
PROBE6=fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128
MARK=0x539/0xfff
CONNMARK=0x111/0xfff
TABLE=100
RULE_PREF=32764

die() {
	echo "ztunnel-redirect-inpod.sh: $*" >&2
	exit 1
}

has_ipv6() {
	[ -e /proc/net/if_inet6 ] && command -v "$IPT6" >/dev/null 2>&1
}

# ensure_chain IPT TABLE CHAIN HOOK: create CHAIN if missing, flush it, jump to it from HOOK once.
ensure_chain() {
	"$1" -w -t "$2" -n -L "$3" >/dev/null 2>&1 || "$1" -w -t "$2" -N "$3"
	"$1" -w -t "$2" -F "$3"
	"$1" -w -t "$2" -C "$4" -j "$3" >/dev/null 2>&1 || "$1" -w -t "$2" -A "$4" -j "$3"
}

# remove_chain IPT TABLE CHAIN HOOK: drop every jump from HOOK, then flush and delete CHAIN.
remove_chain() {
	while "$1" -w -t "$2" -D "$4" -j "$3" >/dev/null 2>&1; do :; done
	if "$1" -w -t "$2" -n -L "$3" >/dev/null 2>&1; then
		"$1" -w -t "$2" -F "$3"
		"$1" -w -t "$2" -X "$3"
	fi
}

# install_family IPT LOOPBACK PROBE
install_family() {
	ipt=$1
	loopback=$2
	probe=$3

	ensure_chain "$ipt" mangle ISTIO_PRERT PREROUTING
	ensure_chain "$ipt" mangle ISTIO_OUTPUT OUTPUT
	ensure_chain "$ipt" nat ISTIO_PRERT PREROUTING
	ensure_chain "$ipt" nat ISTIO_OUTPUT OUTPUT

	# mangle: remember ztunnel's looping-back connections, restore the mark on their replies.
	"$ipt" -w -t mangle -A ISTIO_PRERT -m mark --mark "$MARK" \
		-j CONNMARK --set-xmark "$CONNMARK"
	"$ipt" -w -t mangle -A ISTIO_OUTPUT -m connmark --mark "$CONNMARK" \
		-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff

	# nat PREROUTING: inbound plaintext capture.
	"$ipt" -w -t nat -A ISTIO_PRERT -s "$probe" -p tcp -m tcp -j ACCEPT
	"$ipt" -w -t nat -A ISTIO_PRERT ! -d "$loopback" -p tcp -m tcp ! --dport 15008 \
		-m mark ! --mark "$MARK" -j REDIRECT --to-ports 15006

	# nat OUTPUT: outbound capture.
	"$ipt" -w -t nat -A ISTIO_OUTPUT -d "$probe" -p tcp -m tcp -j ACCEPT
	"$ipt" -w -t nat -A ISTIO_OUTPUT -p tcp -m mark --mark "$CONNMARK" -j ACCEPT
	"$ipt" -w -t nat -A ISTIO_OUTPUT ! -d "$loopback" -o lo -j ACCEPT
	"$ipt" -w -t nat -A ISTIO_OUTPUT ! -d "$loopback" -p tcp -m mark ! --mark "$MARK" \
		-j REDIRECT --to-ports 15001
}

# clean_family IPT
clean_family() {
	for table in mangle nat; do
		remove_chain "$1" "$table" ISTIO_PRERT PREROUTING
		remove_chain "$1" "$table" ISTIO_OUTPUT OUTPUT
	done
}

# routing FAMILY(-4|-6) DEFAULT_PREFIX: the fwmark rule and the local route of table 100.
install_routing() {
	while ip "$1" rule del pref "$RULE_PREF" >/dev/null 2>&1; do :; done
	ip "$1" rule add fwmark "$CONNMARK" pref "$RULE_PREF" lookup "$TABLE"
	ip "$1" route replace local "$2" dev lo table "$TABLE"
}

clean_routing() {
	while ip "$1" rule del pref "$RULE_PREF" >/dev/null 2>&1; do :; done
	ip "$1" route flush table "$TABLE" >/dev/null 2>&1 || true
}

command -v "$IPT4" >/dev/null 2>&1 || die "$IPT4 not found (apt-get install iptables)"
command -v ip >/dev/null 2>&1 || die "ip not found (apt-get install iproute2)"

case "${1:-}" in
"")
	# Table 100's local route needs lo up (every real pod has it up); say so instead of
	# failing half-way with "Nexthop device is not up".
	ip link show dev lo | grep -q '[<,]UP[,>]' || die "lo is down in this network namespace (ip link set lo up)"
	install_family "$IPT4" 127.0.0.1/32 "$PROBE4"
	install_routing -4 0.0.0.0/0
	if has_ipv6; then
		install_family "$IPT6" ::1/128 "$PROBE6"
		install_routing -6 ::/0
	fi
	;;
--clean)
	clean_family "$IPT4"
	clean_routing -4
	if has_ipv6; then
		clean_family "$IPT6"
		clean_routing -6
	fi
	;;
*)
	die "usage: $0 [--clean]"
	;;
esac
