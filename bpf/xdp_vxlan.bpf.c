// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vxdp's XDP steering program.
 *
 * Redirects VXLAN (UDP to this node's VTEP address and VXLAN port, with this network's VNI) into
 * the AF_XDP socket bound to the receiving queue, and passes everything else to the kernel
 * untouched. Anything it is unsure about is passed: the kernel keeps handling ARP, fragments,
 * other VNIs (a kernel vxlan device may own them) and all non-VXLAN traffic.
 *
 * Knobs are read-only globals set by the loader before the program is loaded, so the verifier
 * sees constants and the checks cost nothing at run time.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Keep in sync with dataplane/src/xdp.rs (XdpCounter). */
enum xdp_counter {
	XDP_CNT_REDIRECTED = 0, /* handed to the AF_XDP socket of the queue */
	XDP_CNT_OTHER_VNI = 1, /* VXLAN for us with a VNI we do not serve: passed to the kernel */
	XDP_CNT_PASSED = 2, /* everything else: passed to the kernel */
	XDP_CNT_MAX = 3,
};

/* Network order: this node's VTEP addresses. An all-zero IPv6 address never matches. */
const volatile __u32 local_ip4 = 0;
const volatile __u32 local_ip6[4] = { 0, 0, 0, 0 };
/* Host order. */
const volatile __u16 vxlan_port = 8472;
const volatile __u32 vxlan_vni = 1;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct vxlanhdr {
	__be32 flags;
	__be32 vni; /* VNI in the upper 24 bits */
};

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

static __always_inline int pass(void)
{
	count(XDP_CNT_PASSED);
	return XDP_PASS;
}

SEC("xdp")
int xdp_vxlan_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if ((void *)(eth + 1) > data_end)
		return pass();

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return pass();
		if (ip->protocol != IPPROTO_UDP || ip->daddr != local_ip4)
			return pass();
		/* Fragments are reassembled by the kernel, never by us. */
		if (ip->frag_off & bpf_htons(0x3fff))
			return pass();
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip) || ihl > 60)
			return pass();
		udp = (void *)ip + ihl;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return pass();
		/* Extension headers are left to the kernel; flannel peers never send them. */
		if (ip6->nexthdr != IPPROTO_UDP)
			return pass();
		if (ip6->daddr.in6_u.u6_addr32[0] != local_ip6[0] ||
		    ip6->daddr.in6_u.u6_addr32[1] != local_ip6[1] ||
		    ip6->daddr.in6_u.u6_addr32[2] != local_ip6[2] ||
		    ip6->daddr.in6_u.u6_addr32[3] != local_ip6[3] ||
		    (local_ip6[0] | local_ip6[1] | local_ip6[2] | local_ip6[3]) == 0)
			return pass();
		udp = (void *)(ip6 + 1);
	} else {
		return pass();
	}

	if ((void *)(udp + 1) > data_end)
		return pass();
	if (udp->dest != bpf_htons(vxlan_port))
		return pass();

	/*
	 * A datagram too short to carry a VXLAN header is still ours: userspace counts it as
	 * truncated instead of the kernel answering with ICMP port unreachable.
	 */
	struct vxlanhdr *vx = (void *)(udp + 1);
	if ((void *)(vx + 1) <= data_end && (bpf_ntohl(vx->vni) >> 8) != vxlan_vni) {
		count(XDP_CNT_OTHER_VNI);
		return XDP_PASS;
	}

	count(XDP_CNT_REDIRECTED);
	/* No socket on this queue: the kernel gets it (XDP_PASS), nothing is black-holed. */
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
