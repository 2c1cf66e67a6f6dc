// SPDX-License-Identifier: GPL-2.0
/* Redirect every packet to the AF_XDP socket of its rx queue, after storing
 * the length XDP saw in the metadata area so the forwarder can compare it with
 * the RX descriptor's len (the check from the post: a slot whose len does not
 * match what XDP saw was written by another packet). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_meta.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xdp_meta(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	struct xdp_meta *meta;
	void *data;

	/* Metadata is best effort: without it the forwarder skips the len check. */
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)) == 0) {
		meta = (void *)(long)ctx->data_meta;
		data = (void *)(long)ctx->data;
		if ((void *)(meta + 1) <= data) {
			meta->magic = XDP_META_MAGIC;
			meta->len = len;
		}
	}
	/* XDP_PASS when no socket is bound to this queue yet. */
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
