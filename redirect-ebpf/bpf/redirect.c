// SPDX-License-Identifier: GPL-2.0
/*
 * Traffic redirection for enrolled pods, without iptables.
 *
 * cgroup/connect4, cgroup/connect6  outbound TCP connect from an enrolled netns ->
 *                                  127.0.0.1:15001 / [::1]:15001; original kept by socket cookie
 * sockops (TCP_CONNECT_CB)          re-key the original by {netns, client addr, client port};
 *                                  marked proxy connects to the netns' own pod IP -> `bypass`
 *                                  and re-marked `delivery_mark` (replies routed to lo)
 * cgroup/getsockopt                 SOL_IP/SOL_IPV6 SO_ORIGINAL_DST (80) answered from `orig_dst`
 * sk_lookup (per pod netns)         inbound TCP to a pod address -> the proxy's 15006 listener
 *
 * The maps and their key/value layouts are in maps.h; the loader writes `config`.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define SOL_SOCKET 1
#define SO_MARK 36

/* clang may merge adjacent 4-byte context stores into one 8-byte store, which the verifier
 * rejects for bpf_sock_addr: store through volatile. */
#define CTX_STORE(field, value) (*(volatile __u32 *)&(field) = (value))
/* Socket and context pointers allow no pointer arithmetic: read every field with its own load. */
#define SK_LOAD(field) (*(volatile __u32 *)&(field))

char LICENSE[] SEC("license") = "GPL";

struct sockaddr_in_bpf {
	__u16 sin_family;
	__be16 sin_port;
	__be32 sin_addr;
	__u8 sin_zero[8];
};

struct sockaddr_in6_bpf {
	__u16 sin6_family;
	__be16 sin6_port;
	__be32 sin6_flowinfo;
	__u32 sin6_addr[4];
	__u32 sin6_scope_id;
};

static __always_inline struct redirect_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline void key_v4(struct ip_key *k, __u32 addr_be)
{
	k->addr[0] = 0;
	k->addr[1] = 0;
	k->addr[2] = bpf_htonl(0xffff);
	k->addr[3] = addr_be;
}

static __always_inline void key_v6(struct ip_key *k, __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	k->addr[0] = a0;
	k->addr[1] = a1;
	k->addr[2] = a2;
	k->addr[3] = a3;
}

static __always_inline int is_v4mapped(const struct ip_key *k)
{
	return k->addr[0] == 0 && k->addr[1] == 0 && k->addr[2] == bpf_htonl(0xffff);
}

/* 127.0.0.0/8 (mapped), ::1 or the unspecified address. */
static __always_inline int is_loopback_or_any(const struct ip_key *k)
{
	if (is_v4mapped(k))
		return (bpf_ntohl(k->addr[3]) >> 24) == 127 || k->addr[3] == 0;
	return k->addr[0] == 0 && k->addr[1] == 0 && k->addr[2] == 0 &&
	       (k->addr[3] == bpf_htonl(1) || k->addr[3] == 0);
}

static __always_inline int ip_eq(const struct ip_key *a, const struct ip_key *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] &&
	       a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3];
}

static __always_inline int pod_has_ip(const struct pod_ips *pod, const struct ip_key *k)
{
	const struct ip_key *list = is_v4mapped(k) ? pod->v4 : pod->v6;
	__u32 n = is_v4mapped(k) ? pod->n_v4 : pod->n_v6;
#pragma unroll
	for (int i = 0; i < REDIRECT_MAX_POD_IPS; i++) {
		if (i < n && ip_eq(&list[i], k))
			return 1;
	}
	return 0;
}

/*
 * Common part of connect4/connect6: decides whether to redirect `dst`:`port_be` and, if so,
 * remembers it by socket cookie. Returns 1 to redirect.
 */
static __always_inline int capture_connect(struct bpf_sock_addr *ctx, const struct ip_key *dst,
					   __u16 port_be, const struct redirect_config *cfg)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct pod_ips *pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || SK_LOAD(sk->mark) == cfg->mark)
		return 0;
	if (is_loopback_or_any(dst) || bpf_ntohs(port_be) == cfg->skip_port)
		return 0;
	if (pod_has_ip(pod, dst))
		return 0;

	struct orig_dst orig;
	__builtin_memset(&orig, 0, sizeof(orig));
	orig.addr = *dst;
	orig.port_be = port_be;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&orig_cookie, &cookie, &orig, BPF_ANY);
	return 1;
}

SEC("cgroup/connect4")
int redir_connect4(struct bpf_sock_addr *ctx)
{
	struct redirect_config *cfg = get_config();
	if (!cfg)
		return 1;
	struct ip_key dst;
	key_v4(&dst, ctx->user_ip4);
	__u16 port_be = (__u16)ctx->user_port;
	if (!capture_connect(ctx, &dst, port_be, cfg))
		return 1;
	CTX_STORE(ctx->user_ip4, bpf_htonl(0x7f000001));
	CTX_STORE(ctx->user_port, (__u32)bpf_htons(cfg->outbound_port));
	return 1;
}

SEC("cgroup/connect6")
int redir_connect6(struct bpf_sock_addr *ctx)
{
	struct redirect_config *cfg = get_config();
	if (!cfg)
		return 1;
	struct ip_key dst;
	key_v6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	__u16 port_be = (__u16)ctx->user_port;
	if (!capture_connect(ctx, &dst, port_be, cfg))
		return 1;
	/* An IPv4-mapped destination goes to the IPv4 loopback listener. */
	int mapped = is_v4mapped(&dst);
	CTX_STORE(ctx->user_ip6[0], 0);
	CTX_STORE(ctx->user_ip6[1], 0);
	CTX_STORE(ctx->user_ip6[2], mapped ? bpf_htonl(0xffff) : 0);
	CTX_STORE(ctx->user_ip6[3], mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1));
	CTX_STORE(ctx->user_port, (__u32)bpf_htons(cfg->outbound_port));
	return 1;
}

SEC("sockops")
int redir_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;

	/* Every context field is read up front, unconditionally, each with its own (volatile)
	 * load: when loads sit in branches clang may share one pointer into the context between
	 * them and dereference it after the join, which the verifier refuses. */
	__u32 family = SK_LOAD(skops->family);
	__u32 l4 = SK_LOAD(skops->local_ip4), r4 = SK_LOAD(skops->remote_ip4);
	__u32 l6_0 = SK_LOAD(skops->local_ip6[0]), l6_1 = SK_LOAD(skops->local_ip6[1]);
	__u32 l6_2 = SK_LOAD(skops->local_ip6[2]), l6_3 = SK_LOAD(skops->local_ip6[3]);
	__u32 r6_0 = SK_LOAD(skops->remote_ip6[0]), r6_1 = SK_LOAD(skops->remote_ip6[1]);
	__u32 r6_2 = SK_LOAD(skops->remote_ip6[2]), r6_3 = SK_LOAD(skops->remote_ip6[3]);
	struct ip_key local, remote;
	if (family == AF_INET) {
		key_v4(&local, l4);
		key_v4(&remote, r4);
	} else if (family == AF_INET6) {
		key_v6(&local, l6_0, l6_1, l6_2, l6_3);
		key_v6(&remote, r6_0, r6_1, r6_2, r6_3);
	} else {
		return 1;
	}
	__u16 lport = (__u16)SK_LOAD(skops->local_port);

	__u64 cookie = bpf_get_socket_cookie(skops);
	struct orig_dst *orig = bpf_map_lookup_elem(&orig_cookie, &cookie);
	if (orig) {
		struct client_key ck;
		__builtin_memset(&ck, 0, sizeof(ck));
		ck.netns_cookie = bpf_get_netns_cookie(skops);
		ck.addr = local;
		ck.port = lport;
		struct orig_dst copy = *orig;
		bpf_map_update_elem(&orig_dst, &ck, &copy, BPF_ANY);
		bpf_map_delete_elem(&orig_cookie, &cookie);
		return 1;
	}

	/* The proxy (marked) delivering to the app of the pod whose netns the socket lives in
	 * (its own pod address): let sk_lookup pass it. Only the netns' OWN address counts: the
	 * proxy's HBONE connects from one enrolled pod to another pod of the node must keep
	 * the normal mark and route. */
	struct redirect_config *cfg = get_config();
	if (!cfg)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk || SK_LOAD(sk->mark) != cfg->mark)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	struct pod_ips *pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod || !pod_has_ip(pod, &remote))
		return 1;
	/* remote_port is network order; depending on the kernel it sits in the high or the
	 * low 16 bits of the field. A port is never 0, so take whichever half is set. */
	__u32 rp = skops->remote_port;
	__u16 rport_be = (rp >> 16) ? (__u16)(rp >> 16) : (__u16)rp;
	struct tuple_key tk;
	__builtin_memset(&tk, 0, sizeof(tk));
	tk.src = local;
	tk.dst = remote;
	tk.sport = lport;
	tk.dport = bpf_ntohs(rport_be);
	__u8 one = 1;
	bpf_map_update_elem(&bypass, &tk, &one, BPF_ANY);
	/* Re-mark it (the route is looked up again for the SYN): the app's accepted socket
	 * inherits this mark and the pod's `fwmark <delivery_mark> lookup 100` rule sends its
	 * replies to the spoofed client address back over lo to the proxy. The proxy's other
	 * sockets keep `mark` and route normally. */
	int dmark = cfg->delivery_mark;
	if (dmark)
		bpf_setsockopt(skops, SOL_SOCKET, SO_MARK, &dmark, sizeof(dmark));
	return 1;
}

SEC("cgroup/getsockopt")
int redir_getsockopt(struct bpf_sockopt *ctx)
{
	/* Fast exit: every other getsockopt of the cgroup passes through untouched. */
	if (ctx->optname != SO_ORIGINAL_DST)
		return 1;
	int level = ctx->level;
	if (level != SOL_IP && level != SOL_IPV6)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;

	struct client_key ck;
	__builtin_memset(&ck, 0, sizeof(ck));
	ck.netns_cookie = bpf_get_netns_cookie(ctx);
	/* Unconditional loads: clang would otherwise merge the per-family loads into
	 * arithmetic on the socket pointer. */
	__u32 family = SK_LOAD(sk->family);
	__u32 d4 = SK_LOAD(sk->dst_ip4);
	__u32 d0 = SK_LOAD(sk->dst_ip6[0]);
	__u32 d1 = SK_LOAD(sk->dst_ip6[1]);
	__u32 d2 = SK_LOAD(sk->dst_ip6[2]);
	__u32 d3 = SK_LOAD(sk->dst_ip6[3]);
	__u16 dport_be = *(volatile __u16 *)&sk->dst_port;
	if (family == AF_INET)
		key_v4(&ck.addr, d4);
	else if (family == AF_INET6)
		key_v6(&ck.addr, d0, d1, d2, d3);
	else
		return 1;
	ck.port = bpf_ntohs(dport_be);

	struct orig_dst *orig = bpf_map_lookup_elem(&orig_dst, &ck);
	if (!orig)
		return 1;

	if (level == SOL_IP) {
		if (!is_v4mapped(&orig->addr))
			return 1;
		struct sockaddr_in_bpf *sin = ctx->optval;
		if ((void *)(sin + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sin, 0, sizeof(*sin));
		sin->sin_family = AF_INET;
		sin->sin_port = orig->port_be;
		sin->sin_addr = orig->addr.addr[3];
		ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6_bpf *sin6 = ctx->optval;
		if ((void *)(sin6 + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = orig->port_be;
		sin6->sin6_addr[0] = orig->addr.addr[0];
		sin6->sin6_addr[1] = orig->addr.addr[1];
		sin6->sin6_addr[2] = orig->addr.addr[2];
		sin6->sin6_addr[3] = orig->addr.addr[3];
		ctx->optlen = sizeof(*sin6);
	}
	ctx->retval = 0;
	return 1;
}

SEC("sk_lookup")
int redir_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct redirect_config *cfg = get_config();
	if (!cfg)
		return SK_PASS;
	__u16 lport = (__u16)ctx->local_port;
	if (lport == cfg->outbound_port || lport == cfg->inbound_port ||
	    lport == cfg->hbone_port || lport == cfg->dns_port)
		return SK_PASS;

	struct ip_key local, remote;
	if (ctx->family == AF_INET) {
		key_v4(&local, ctx->local_ip4);
		key_v4(&remote, ctx->remote_ip4);
	} else if (ctx->family == AF_INET6) {
		key_v6(&local, ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
		       ctx->local_ip6[3]);
		key_v6(&remote, ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2],
		       ctx->remote_ip6[3]);
	} else {
		return SK_PASS;
	}
	if (is_loopback_or_any(&local))
		return SK_PASS;
	/* Only addresses of enrolled pods; a pod talking to itself is not captured. */
	if (!bpf_map_lookup_elem(&pod_ips, &local) || ip_eq(&local, &remote))
		return SK_PASS;
	/* Kubelet probes come from the node's own addresses. */
	if (bpf_map_lookup_elem(&node_addrs, &remote))
		return SK_PASS;

	struct tuple_key tk;
	__builtin_memset(&tk, 0, sizeof(tk));
	tk.src = remote;
	tk.dst = local;
	tk.sport = bpf_ntohs(ctx->remote_port);
	tk.dport = lport;
	if (bpf_map_lookup_elem(&bypass, &tk))
		return SK_PASS;

	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &local);
	if (!sk)
		return SK_DROP; /* enrolled but the proxy is not listening yet: fail closed */
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}
