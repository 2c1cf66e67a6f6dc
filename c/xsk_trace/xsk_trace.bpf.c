// SPDX-License-Identifier: GPL-2.0
/* flightrec's kernel events on kernels without kprobes: three
 * tracepoint programs that print the RX reserve, the RX flush and the TX read
 * of AF_XDP sockets with bpf_trace_printk, so they land in the same ftrace
 * buffer as the forwarder's markers. The line format is docs/markers.md's
 * "Kernel events from BPF tracepoints"; every value is printed as %llx of a
 * u64 because %p prints hashed pointers.
 *
 * Stand-ins for the kprobe sites:
 *   __xsk_rcv_zc    -> raw_tp/xdp_redirect (fires right after the redirect
 *                      into the socket wrote its RX descriptor; raw, not
 *                      tp_btf: 6.1's verifier refuses to read the void *tgt
 *                      argument of a BTF tracepoint, "arg2 type UNKNOWN is
 *                      not a struct", and every field here is read with
 *                      BPF_CORE_READ anyway)
 *   xsk_flush       -> tp_btf/napi_poll (fires after the poll's xdp_do_flush)
 *   xp_raw_get_data -> tp_btf/netif_rx on the peer, for skbs an XSK sent
 *
 * CO-RE: the ring layout comes from a vmlinux.h generated at build time. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "xsk_trace.h"

#define AF_XDP 44

/* Sockets to trace, keyed by (netns inode, ifindex) of the bound device; the
 * loader fills it. Empty = every AF_XDP socket. Other users' sockets on the
 * same machine would otherwise mix their events into the recording. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XSK_TRACE_MAX_DEVS);
	__type(key, struct xsk_trace_dev);
	__type(value, __u8);
} devs SEC(".maps");

/* Set by the loader when devs holds entries. */
const volatile __u32 filter_devs = 0;

/* The sockets this CPU redirected into since its last napi poll: exactly the
 * kernel's per-CPU XSK flush list, which xdp_do_flush() at the end of the poll
 * publishes. A flush line is printed for each, with the producer after it. */
struct pending {
	__u64 xs[XSK_TRACE_MAX_PENDING];
	__u32 n;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} pending SEC(".maps");

/* Per socket: the furthest producer a flush published (struct xsk_trace_pub). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XSK_TRACE_MAX_SOCKS);
	__type(key, __u64);
	__type(value, struct xsk_trace_pub);
} published SEC(".maps");

static __always_inline bool wanted(struct xdp_sock *xs)
{
	struct xsk_trace_dev key = {};
	struct net_device *dev;

	if (!filter_devs)
		return true;
	dev = BPF_CORE_READ(xs, dev);
	if (!dev)
		return false;
	key.ifindex = BPF_CORE_READ(dev, ifindex);
	key.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	return bpf_map_lookup_elem(&devs, &key) != NULL;
}

/* The online twin of flightrec/checks/kernel_publish.py: this CPU has just
 * written slot `slot` of xs, and a flush on another CPU had already published
 * the producer past it. On a sound kernel the writer's own flush publishes
 * its slots, after this program ran; so this is the veth race, and the line
 * printed here stops tracing through the instance's trigger with the
 * evidence (the flush line, this reserve line) still in the buffer. */
static __always_inline void detect_race(struct xdp_sock *xs, __u32 slot)
{
	__u64 key = (__u64)xs, now = bpf_ktime_get_ns();
	struct xsk_trace_pub *pub = bpf_map_lookup_elem(&published, &key);
	__u32 cpu = bpf_get_smp_processor_id();

	if (!pub || pub->cpu == cpu || now - pub->ns > XSK_TRACE_RACE_NS)
		return;
	if ((__u32)(pub->prod - slot - 1) >= XSK_TRACE_RACE_AHEAD)
		return;
	bpf_printk("flightrec race xs=0x%llx slot=0x%llx prod=0x%llx flush_cpu=0x%llx: " XSK_TRACE_RACE_TEXT,
		   key, (__u64)slot, (__u64)pub->prod, (__u64)pub->cpu);
}

/* A flush published `prod` for xs on this CPU: remember it when it is the furthest yet. */
static __always_inline void note_published(struct xdp_sock *xs, __u32 prod)
{
	__u64 key = (__u64)xs;
	struct xsk_trace_pub *pub = bpf_map_lookup_elem(&published, &key);
	struct xsk_trace_pub now = { .ns = bpf_ktime_get_ns(), .prod = prod, .cpu = bpf_get_smp_processor_id() };

	if (pub && (__s32)(prod - pub->prod) <= 0)
		return;
	bpf_map_update_elem(&published, &key, &now, BPF_ANY);
}

SEC("raw_tp/xdp_redirect")
int BPF_PROG(xsk_rx_reserve, const struct net_device *dev, const struct bpf_prog *xdp, const void *tgt,
	     int err, enum bpf_map_type map_type, u32 map_id, u32 index)
{
	struct xdp_sock *xs = (struct xdp_sock *)tgt;
	struct xdp_desc desc = {};
	struct xsk_queue *rx;
	struct xdp_ring *ring;
	struct pending *p;
	__u32 zero = 0, prod, mask, i;
	__u64 slot;

	if (err || map_type != BPF_MAP_TYPE_XSKMAP || !xs || !wanted(xs))
		return 0;
	rx = BPF_CORE_READ(xs, rx);
	if (!rx)
		return 0;
	prod = BPF_CORE_READ(rx, cached_prod);
	mask = BPF_CORE_READ(rx, ring_mask);
	ring = BPF_CORE_READ(rx, ring);
	/* __xsk_rcv_zc wrote the descriptor at cached_prod - 1 and left it
	 * unpublished (producer moves at the flush). desc[] follows the
	 * cacheline-padded struct xdp_ring (struct xdp_rxtx_ring). */
	slot = (__u32)(prod - 1);
	if (bpf_probe_read_kernel(&desc, sizeof(desc),
				  (void *)ring + bpf_core_type_size(struct xdp_ring) +
					  (__u64)(slot & mask) * sizeof(struct xdp_desc)))
		return 0;
	bpf_printk("flightrec rx_reserve xs=0x%llx q=0x%llx slot=0x%llx addr=0x%llx len=0x%llx", (__u64)xs,
		   (__u64)BPF_CORE_READ(xs, queue_id), slot, desc.addr, (__u64)desc.len);
	detect_race(xs, (__u32)slot);

	p = bpf_map_lookup_elem(&pending, &zero);
	if (!p)
		return 0;
	for (i = 0; i < XSK_TRACE_MAX_PENDING; i++) {
		if (i >= p->n)
			break;
		if (p->xs[i] == (__u64)xs)
			return 0;
	}
	if (p->n < XSK_TRACE_MAX_PENDING) {
		i = p->n;
		if (i < XSK_TRACE_MAX_PENDING) /* for the verifier */
			p->xs[i] = (__u64)xs;
		p->n = i + 1;
	}
	return 0;
}

SEC("tp_btf/napi_poll")
int BPF_PROG(xsk_flush, struct napi_struct *napi, int work, int budget)
{
	struct pending *p;
	struct xdp_sock *xs;
	struct xsk_queue *rx;
	__u32 zero = 0, i, prod;

	p = bpf_map_lookup_elem(&pending, &zero);
	if (!p || !p->n)
		return 0;
	for (i = 0; i < XSK_TRACE_MAX_PENDING; i++) {
		if (i >= p->n)
			break;
		xs = (struct xdp_sock *)p->xs[i];
		rx = BPF_CORE_READ(xs, rx);
		if (!rx)
			continue;
		prod = BPF_CORE_READ(rx, ring, producer);
		bpf_printk("flightrec flush xs=0x%llx q=0x%llx prod=0x%llx", (__u64)xs,
			   (__u64)BPF_CORE_READ(xs, queue_id), (__u64)prod);
		note_published(xs, prod);
	}
	p->n = 0;
	return 0;
}

/* What skb_shinfo(skb)->destructor_arg holds for a copy-mode TX skb: newer
 * kernels (struct xsk_addrs exists) store the address tagged with bit 0, or a
 * pointer to the addresses of a multi-buffer packet; older ones the address. */
static __always_inline __u64 tx_addr(struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	struct skb_shared_info *shinfo = (void *)(head + BPF_CORE_READ(skb, end));
	__u64 arg = (__u64)BPF_CORE_READ(shinfo, destructor_arg);

	if (bpf_core_type_exists(struct xsk_addrs)) {
		if (arg & 1)
			return arg & ~1ULL;
		return BPF_CORE_READ((struct xsk_addrs *)arg, addrs[0]);
	}
	return arg;
}

SEC("tp_btf/netif_rx")
int BPF_PROG(xsk_tx_get_data, struct sk_buff *skb)
{
	struct sock *sk = BPF_CORE_READ(skb, sk);
	struct xdp_sock *xs = (struct xdp_sock *)sk;

	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_XDP || !wanted(xs))
		return 0;
	bpf_printk("flightrec tx_get_data xs=0x%llx q=0x%llx addr=0x%llx", (__u64)xs,
		   (__u64)BPF_CORE_READ(xs, queue_id), tx_addr(skb));
	return 0;
}

char _license[] SEC("license") = "GPL";
