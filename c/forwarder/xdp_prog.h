/* SPDX-License-Identifier: GPL-2.0 */
/* Our own XDP program, loaded and attached with libbpf: libxdp's multiprog
 * dispatcher would pin files in bpffs that a crash could leave behind. */
#ifndef FLIGHTREC_XDP_PROG_H
#define FLIGHTREC_XDP_PROG_H

#include <stdbool.h>

struct bpf_object;

struct xdp_prog {
	struct bpf_object *obj;
	int prog_fd;
	int xsks_fd;      /* the XSKMAP, indexed by rx queue */
	int ifindex;      /* 0 while not attached */
	unsigned flags;   /* XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE */
	const char *ifname;
};

/* Loads path (one object per interface: each needs its own XSKMAP). */
int xdp_prog_load(struct xdp_prog *p, const char *path, const char *ifname);
/* Attaches to ifindex in the calling thread's netns: native mode first,
 * generic (SKB) mode if the driver refuses, with a message; skb_only skips
 * native mode; native_only fails instead of falling back (zero-copy sockets
 * receive only through the driver's own XDP). */
int xdp_prog_attach(struct xdp_prog *p, int ifindex, bool skb_only, bool native_only);
/* Detaches only if our program is still the one attached (XDP_FLAGS_REPLACE). */
void xdp_prog_detach(struct xdp_prog *p);
int xdp_prog_set_xsk(struct xdp_prog *p, unsigned queue, int xsk_fd);
void xdp_prog_free(struct xdp_prog *p);

#endif
