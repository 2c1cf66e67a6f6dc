// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include "umem.h"

#ifndef SOL_XDP
#define SOL_XDP 283
#endif

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

/* Why a zero-copy bind failed, from its errno and the kernel's checks
 * (xp_assign_dev; for virtio_net, virtnet_xsk_pool_enable in 7.3). */
static const char *zerocopy_refusal(int err, const char *driver)
{
	int virtio = driver && !strcmp(driver, "virtio_net");

	switch (err) {
	case EOPNOTSUPP:
		return "the driver offers no AF_XDP zero-copy on this kernel "
		       "(no ndo_xsk_wakeup, or NETDEV_XDP_ACT_XSK_ZEROCOPY unset; "
		       "virtio_net has it from Linux 6.13, veth never)";
	case EINVAL:
		return virtio ? "virtio_net refused the UMEM: it needs the DMA API "
				"(VIRTIO_F_ACCESS_PLATFORM: QEMU iommu_platform=on), room for its "
				"header in the headroom, and a queue below the current queue pairs "
				"(ethtool -L DEV combined N)"
			      : "the driver refused this UMEM or queue (queue id above the "
				"current channels? see ethtool -l; frame too small for the MTU?)";
	case ENOENT:
		return virtio ? "virtio_net has no page pool on this queue (big-packets mode: "
				"guest TSO/UFO or an MTU above 1500 turn XDP off)"
			      : "the driver has no XDP setup on this queue";
	case EBUSY:
		return "the queue is taken (another AF_XDP socket, or a memory provider)";
	default:
		return "see dmesg for the driver's reason";
	}
}

int umem_socket_create(struct umem *u, struct xsk_socket **xsk, const char *ifname,
		       unsigned queue, struct port_rings *r, uint16_t bind_flags,
		       const char *driver)
{
	struct xsk_socket_config cfg = {
		.rx_size = u->ring_size,
		.tx_size = u->ring_size,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = 0,
		.bind_flags = bind_flags,
	};
	int err;

	memset(r, 0, sizeof(*r));
	err = xsk_socket__create_shared(xsk, ifname, queue, u->xumem, &r->rx, &r->tx,
					&r->fill, &r->comp, &cfg);
	if (!err)
		return 0;
	*xsk = NULL;
	if (bind_flags & XDP_ZEROCOPY)
		/* never a silent fallback: one line that says what is missing */
		fprintf(stderr, "forwarder: --mode zerocopy: %s q:%u (driver %s) refused "
			"XDP_ZEROCOPY: %s; %s\n", ifname, queue, driver && *driver ? driver : "unknown",
			strerror(-err), zerocopy_refusal(-err, driver));
	else
		fprintf(stderr, "forwarder: cannot bind an AF_XDP socket to %s q:%u: %s; "
			"does %s exist in that namespace with at least %u queues "
			"(ip link add ... numrxqueues N numtxqueues N, or ethtool -L)?\n",
			ifname, queue, strerror(-err), ifname, queue + 1);
	return -1;
}

int umem_socket_zerocopy(int fd)
{
	struct xdp_options opts = { 0 };
	socklen_t len = sizeof(opts);

	if (getsockopt(fd, SOL_XDP, XDP_OPTIONS, &opts, &len) < 0)
		return -errno;
	return (opts.flags & XDP_OPTIONS_ZEROCOPY) ? 1 : 0;
}

int umem_twin_create(struct twin_socket *t, struct xsk_ring_prod *tx, int primary_fd, int ifindex,
		     const char *ifname, unsigned queue, uint32_t ring_size)
{
	struct sockaddr_xdp sxdp = {
		.sxdp_family = AF_XDP,
		.sxdp_ifindex = (uint32_t)ifindex,
		.sxdp_queue_id = queue,
		/* no mode flags: a shared bind takes the pool's (the kernel refuses them) */
		.sxdp_flags = XDP_SHARED_UMEM,
		.sxdp_shared_umem_fd = (uint32_t)primary_fd,
	};
	struct xdp_mmap_offsets off;
	socklen_t len = sizeof(off);
	const char *step = "socket(AF_XDP)";
	char *map;

	t->map = NULL;
	t->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (t->fd < 0)
		goto fail;
	step = "setsockopt(XDP_TX_RING)";
	if (setsockopt(t->fd, SOL_XDP, XDP_TX_RING, &ring_size, sizeof(ring_size)))
		goto fail;
	step = "getsockopt(XDP_MMAP_OFFSETS)";
	if (getsockopt(t->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len))
		goto fail;
	step = "mmap(TX ring)";
	t->map_len = off.tx.desc + (size_t)ring_size * sizeof(struct xdp_desc);
	map = mmap(NULL, t->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, t->fd,
		   XDP_PGOFF_TX_RING);
	if (map == MAP_FAILED)
		goto fail;
	t->map = map;
	memset(tx, 0, sizeof(*tx));
	tx->mask = ring_size - 1;
	tx->size = ring_size;
	tx->producer = (uint32_t *)(map + off.tx.producer);
	tx->consumer = (uint32_t *)(map + off.tx.consumer);
	tx->flags = (uint32_t *)(map + off.tx.flags);
	tx->ring = map + off.tx.desc;
	tx->cached_prod = *tx->producer;
	tx->cached_cons = *tx->consumer + ring_size; /* free entries, as libxdp keeps it */
	step = "bind(XDP_SHARED_UMEM)";
	if (bind(t->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)))
		goto fail;
	return 0;
fail:
	fprintf(stderr, "forwarder: --tx-twins: cannot make the twin socket of %s q:%u: %s: %s\n",
		ifname, queue, step, strerror(errno));
	umem_twin_free(t);
	return -1;
}

void umem_twin_free(struct twin_socket *t)
{
	if (t->map)
		munmap(t->map, t->map_len);
	if (t->fd >= 0)
		close(t->fd);
	t->map = NULL;
	t->fd = -1;
}
