// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include "umem.h"

int umem_init(struct umem *u, uint32_t frames, uint32_t ring_size)
{
	struct xsk_umem_config cfg = {
		.fill_size = ring_size,
		.comp_size = ring_size,
		.frame_size = FRAME_SIZE,
		.frame_headroom = 0,
		.flags = 0,
	};
	struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
	int err;

	memset(u, 0, sizeof(*u));
	/* Kernels since 5.11 charge the UMEM to memcg; raising the limit can fail
	 * even for root (measured here), and is then not needed. */
	(void)setrlimit(RLIMIT_MEMLOCK, &rl);
	u->frames = frames;
	u->ring_size = ring_size;
	u->size = (uint64_t)frames * FRAME_SIZE;
	u->area = mmap(NULL, u->size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (u->area == MAP_FAILED) {
		u->area = NULL;
		fprintf(stderr, "forwarder: cannot map %llu bytes of UMEM: %s; try fewer --frames\n",
			(unsigned long long)u->size, strerror(errno));
		return -1;
	}
	err = xsk_umem__create(&u->xumem, u->area, u->size, &u->fill0, &u->comp0, &cfg);
	if (err) {
		u->xumem = NULL;
		fprintf(stderr, "forwarder: cannot register the UMEM: %s; is CONFIG_XDP_SOCKETS "
			"on, and are you root?\n", strerror(-err));
		return -1;
	}
	return 0;
}

void umem_free(struct umem *u)
{
	if (u->xumem)
		xsk_umem__delete(u->xumem);
	if (u->area)
		munmap(u->area, u->size);
	u->xumem = NULL;
	u->area = NULL;
}

int umem_socket_create(struct umem *u, struct xsk_socket **xsk, const char *ifname,
		       unsigned queue, struct port_rings *r)
{
	struct xsk_socket_config cfg = {
		.rx_size = u->ring_size,
		.tx_size = u->ring_size,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = 0,
		/* Copy mode is what veth supports for AF_XDP. */
		.bind_flags = XDP_COPY,
	};
	int err;

	memset(r, 0, sizeof(*r));
	err = xsk_socket__create_shared(xsk, ifname, queue, u->xumem, &r->rx, &r->tx,
					&r->fill, &r->comp, &cfg);
	if (err) {
		*xsk = NULL;
		fprintf(stderr, "forwarder: cannot bind an AF_XDP socket to %s q:%u: %s; "
			"does %s exist in that namespace with at least %u queues "
			"(ip link add ... numrxqueues N numtxqueues N)?\n",
			ifname, queue, strerror(-err), ifname, queue + 1);
		return -1;
	}
	return 0;
}
