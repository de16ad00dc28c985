/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Map keys, values and map definitions shared by the redirect programs.
 *
 * The struct layouts are mirrored by the Rust crate `redirect-ebpf-common`
 * (redirect-ebpf/common/src/lib.rs); its tests compile this header with the
 * host C compiler and compare every size and offset. The map definitions are
 * only visible to the BPF target (clang -target bpf defines __bpf__).
 *
 * Conventions:
 *  - every address is a `struct ip_key`: 16 bytes in network order, IPv4 as an
 *    IPv4-mapped IPv6 address (::ffff:a.b.c.d);
 *  - ports are host order unless the field name ends in `_be`.
 */
#ifndef REDIRECT_MAPS_H
#define REDIRECT_MAPS_H

#include <linux/types.h>

/* How many addresses of each family one pod may have. */
#define REDIRECT_MAX_POD_IPS 4

/* Single entry of the `config` array map, written by the loader at every load. */
struct redirect_config {
	__u32 mark;          /* SO_MARK of the proxy's own sockets (0x539) */
	__u16 outbound_port; /* 15001: outbound capture listener on loopback */
	__u16 inbound_port;  /* 15006: inbound plaintext listener */
	__u16 hbone_port;    /* 15008: inbound HBONE, never redirected */
	__u16 dns_port;      /* 15053: DNS proxy, never redirected */
	__u16 skip_port;     /* 53: outbound destination port left alone */
	__u16 _pad;
	__u32 delivery_mark; /* 0x1539: put on the proxy's connects to the app (sockops); the pod
			      * routes sockets with this mark (the app's accepted one inherits it
			      * via tcp_fwmark_accept) to lo, so replies to a spoofed client IP
			      * reach the proxy. Low 12 bits stay 0x539 (Istio's mask 0xfff). */
};

/* An IPv4 (mapped) or IPv6 address, network order. */
struct ip_key {
	__u32 addr[4];
};

/* Value of `enrolled` (key: netns cookie, __u64). */
struct pod_ips {
	struct ip_key v4[REDIRECT_MAX_POD_IPS]; /* IPv4-mapped */
	struct ip_key v6[REDIRECT_MAX_POD_IPS];
	__u32 n_v4;
	__u32 n_v6;
};

/* Original destination of a redirected connect (value of `orig_cookie` and `orig_dst`). */
struct orig_dst {
	struct ip_key addr;
	__u16 port_be; /* network order */
	__u16 _pad;
};

/* Key of `orig_dst`: the redirected client socket, as the proxy sees its peer. */
struct client_key {
	__u64 netns_cookie;
	struct ip_key addr;
	__u16 port;
	__u16 _pad[3];
};

/* Key of `bypass`: a connection the proxy makes to an enrolled pod (src = proxy side). */
struct tuple_key {
	struct ip_key src;
	struct ip_key dst;
	__u16 sport;
	__u16 dport;
};

#if defined(__bpf__)
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redirect_config);
} config SEC(".maps");

/* Enrolled pod network namespaces: netns cookie -> the pod's addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pod_ips);
} enrolled SEC(".maps");

/* Reverse index: enrolled pod address -> netns cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ip_key);
	__type(value, __u64);
} pod_ips SEC(".maps");

/* Original destination by client socket cookie, until TCP_CONNECT_CB knows the source port. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct orig_dst);
} orig_cookie SEC(".maps");

/* Original destination by the client's {netns, local address, local port}. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, struct orig_dst);
} orig_dst SEC(".maps");

/* Connections from the proxy (marked) to enrolled pods: sk_lookup lets them through. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple_key);
	__type(value, __u8);
} bypass SEC(".maps");

/* The node's own addresses (kubelet probes come from them): never redirected inbound. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct ip_key);
	__type(value, __u8);
} node_addrs SEC(".maps");

/* The proxy's inbound (15006) listener per enrolled pod address. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16384);
	__type(key, struct ip_key);
	__type(value, __u32); /* socket fd on update (aya: 4 bytes) */
} listeners SEC(".maps");
#endif /* __bpf__ */

#endif /* REDIRECT_MAPS_H */
