/* SPDX-License-Identifier: GPL-2.0 */
/* The shared UMEM and the AF_XDP sockets bound to it (XDP_SHARED_UMEM): one
 * socket per queue of each interface, each with its own FILL and COMPLETION
 * ring (the kernel requires that for a different device or queue). */
#ifndef FLIGHTREC_UMEM_H
#define FLIGHTREC_UMEM_H

#include <stdint.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#define FRAME_SIZE 4096u
/* Where the kernel puts the packet in a frame, and so the offset of every RX
 * descriptor address: xsk_buff_alloc() sets data = data_hard_start +
 * XDP_PACKET_HEADROOM, and xp_get_handle() adds that to the frame address. */
#define FRAME_DATA_OFFSET 256u

struct umem {
	void *area;
	uint64_t size;
	uint32_t frames;
	uint32_t ring_size; /* every ring of every socket */
	struct xsk_umem *xumem;
	/* the first socket's FILL/COMP live in the UMEM until it is created */
	struct xsk_ring_prod fill0;
	struct xsk_ring_cons comp0;
};

struct port_rings {
	struct xsk_ring_cons rx, comp;
	struct xsk_ring_prod tx, fill;
};

/* Must run in the first socket's netns: libxdp makes the UMEM's socket the
 * first AF_XDP socket, and a socket binds only in its own netns. */
int umem_init(struct umem *u, uint32_t frames, uint32_t ring_size);
void umem_free(struct umem *u);

/* Creates the socket for ifname/queue in the calling thread's netns, without
 * libxdp's program (we load our own). bind_flags (XDP_COPY, XDP_ZEROCOPY or 0
 * for the kernel's choice) count for the UMEM's first socket only: the others
 * share its UMEM and the kernel binds them in the mode the first one got
 * (xp_assign_dev_shared). r must be zeroed: libxdp leaves cached_prod of some
 * rings unset. On failure prints one line; driver names the device's driver
 * in it. */
int umem_socket_create(struct umem *u, struct xsk_socket **xsk, const char *ifname,
		       unsigned queue, struct port_rings *r, uint16_t bind_flags,
		       const char *driver);

/* A TX-only socket (--tx-twins) bound beside the socket primary_fd, to the
 * same device (ifindex, in the calling thread's netns) and queue: the kernel
 * then shares that socket's buffer pool with it, FILL and COMPLETION rings
 * included (xsk_bind, XDP_SHARED_UMEM on one device and queue). Made with
 * the syscalls, not libxdp: libxdp binds a shared socket beside the UMEM's
 * first socket, on another queue here. On failure prints one line and
 * returns -1, t closed. */
struct twin_socket {
	int fd;
	void *map;       /* the TX ring's mapping */
	size_t map_len;
};
int umem_twin_create(struct twin_socket *t, struct xsk_ring_prod *tx, int primary_fd, int ifindex,
		     const char *ifname, unsigned queue, uint32_t ring_size);
void umem_twin_free(struct twin_socket *t);

/* The mode the kernel gave a bound socket, read back with
 * getsockopt(XDP_OPTIONS): 1 zero-copy, 0 copy, -errno when unreadable. */
int umem_socket_zerocopy(int fd);

static inline uint32_t umem_frame_of(uint64_t addr)
{
	return (uint32_t)(xsk_umem__extract_addr(addr) / FRAME_SIZE);
}

/* The address a frame carries in every descriptor once the kernel received
 * into it; we put the same value into FILL so one descriptor has one name. */
static inline uint64_t umem_frame_addr(uint32_t frame)
{
	return (uint64_t)frame * FRAME_SIZE + FRAME_DATA_OFFSET;
}

static inline void *umem_ptr(const struct umem *u, uint64_t addr)
{
	return xsk_umem__get_data(u->area, addr);
}

#endif
