// SPDX-License-Identifier: GPL-2.0
/*
 * xsk_fwd: a small AF_XDP forwarder instrumented with flightrec's marker
 * library, as an example of what instrumenting a program takes.
 *
 *     xsk_fwd [--queues N] [--no-markers] [--inject double-fill] IF_A IF_B
 *
 * For each queue q, packets received on IF_A q are sent on IF_B q and the
 * other way round, over one shared UMEM, in one thread. libxdp loads its
 * default XDP program (every packet of the queue to its socket). Every
 * descriptor transition is written to the trace instance of
 * $FLIGHTREC_TRACEDIR (as `flightrec record --app` sets it); the RX reads are
 * checked (poison, FILL order in copy mode, the frame's state) and the first
 * anomaly stops tracing. --inject double-fill puts one frame into FILL twice
 * after 1000 packets, the bug the checks are there to catch.
 *
 * Exit: 0 stopped by SIGINT/SIGTERM, 2 set-up failed, 3 an anomaly.
 *
 * Build: cc $(flightrec markers --cflags) -o xsk_fwd xsk_fwd.c $(pkg-config --libs libxdp libbpf)
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xdp/xsk.h>
#include <flightrec/xsk_markers.h>

#define FRAME_SIZE 4096u
/* Where the kernel puts a packet in a frame (XDP_PACKET_HEADROOM) and so the
 * address every RX descriptor carries: FILL gets the same, so that a frame
 * has one address in every line the analyzer follows. */
#define FRAME_ADDR(frame) ((uint64_t)(frame) * FRAME_SIZE + 256u)
#define FRAMES_PER_SOCK 2048u
/* RX and FILL hold everything a socket owns: a full RX ring would make the
 * kernel reuse a frame out of FILL order (docs/markers.md). */
#define RING_SIZE (2 * FRAMES_PER_SOCK)
#define BATCH 64u
#define MAX_QUEUES 16u
#define EXIT_SETUP 2
#define EXIT_ANOMALY 3

struct sock {
	struct xsk_socket *xsk;
	struct xsk_ring_cons rx, comp;
	struct xsk_ring_prod tx, fill;
	struct fr_sock fr; /* markers and checks */
	struct sock *peer; /* where its packets go, and whose frames it completes */
};

static volatile sig_atomic_t stop;
static struct fr_markers markers;
static struct fr_states states;
static unsigned long long received;
static int inject_double_fill;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int sock_open(struct sock *s, struct xsk_umem *umem, const char *ifname, unsigned q, uint32_t first)
{
	struct xsk_socket_config cfg = {
		.rx_size = RING_SIZE,
		.tx_size = RING_SIZE,
		.bind_flags = XDP_USE_NEED_WAKEUP,
	};
	struct xdp_options opts = { 0 };
	socklen_t len = sizeof(opts);
	uint32_t idx, i;
	int err;

	err = xsk_socket__create_shared(&s->xsk, ifname, q, umem, &s->rx, &s->tx, &s->fill, &s->comp, &cfg);
	if (err) {
		fprintf(stderr, "xsk_fwd: cannot bind an AF_XDP socket to %s q:%u: %s\n", ifname, q, strerror(-err));
		return -1;
	}
	getsockopt(xsk_socket__fd(s->xsk), SOL_XDP, XDP_OPTIONS, &opts, &len);
	if (fr_sock_init(&s->fr, &markers, &states, ifname, q, FRAME_SIZE, states.frames,
			 opts.flags & XDP_OPTIONS_ZEROCOPY)) {
		fprintf(stderr, "xsk_fwd: out of memory\n");
		return -1;
	}
	/* every frame the socket owns goes into its FILL ring */
	if (xsk_ring_prod__reserve(&s->fill, FRAMES_PER_SOCK, &idx) != FRAMES_PER_SOCK)
		return -1;
	for (i = 0; i < FRAMES_PER_SOCK; i++) {
		uint64_t addr = FRAME_ADDR(first + i);

		if (fr_fill(&s->fr, addr, FR_FREE))
			return -1;
		*xsk_ring_prod__fill_addr(&s->fill, idx + i) = addr;
	}
	fr_flush(&s->fr);
	xsk_ring_prod__submit(&s->fill, FRAMES_PER_SOCK);
	return 0;
}

/* Frames s sent that the kernel completed go back to the FILL ring of the
 * socket they came from (s->peer). Each ring operation's lines are flushed
 * before the next one's begin, so a detection line comes after all of them.
 * Returns the count, or -1 on an anomaly. */
static int complete(struct sock *s)
{
	struct sock *src = s->peer;
	uint64_t addrs[BATCH];
	uint32_t n, cidx, fidx, i, extra;

	n = xsk_ring_cons__peek(&s->comp, BATCH, &cidx);
	if (!n)
		return 0;
	for (i = 0; i < n; i++) {
		addrs[i] = *xsk_ring_cons__comp_addr(&s->comp, cidx + i);
		if (fr_comp(&s->fr, addrs[i]))
			return -1;
	}
	fr_flush(&s->fr);
	xsk_ring_cons__release(&s->comp, n);

	extra = inject_double_fill && received >= 1000;
	if (xsk_ring_prod__reserve(&src->fill, n + extra, &fidx) != n + extra)
		return -1; /* cannot happen: FILL holds every frame the socket owns */
	for (i = 0; i < n + extra; i++) {
		/* the injected bug: the last frame into FILL a second time */
		uint64_t addr = addrs[i < n ? i : n - 1];

		if (fr_fill(&src->fr, addr, FR_COMP))
			return -1;
		*xsk_ring_prod__fill_addr(&src->fill, fidx + i) = addr;
	}
	inject_double_fill &= !extra;
	fr_flush(&src->fr);
	xsk_ring_prod__submit(&src->fill, n + extra);
	if (xsk_ring_prod__needs_wakeup(&src->fill))
		recvfrom(xsk_socket__fd(src->xsk), NULL, 0, MSG_DONTWAIT, NULL, NULL);
	return (int)n;
}

/* s's RX to its peer's TX. Returns the count, or -1 on an anomaly. */
static int forward(struct sock *s)
{
	struct sock *dst = s->peer;
	struct xdp_desc descs[BATCH];
	uint32_t n, ridx, tidx, i;

	n = xsk_ring_cons__peek(&s->rx, BATCH, &ridx);
	if (!n)
		return 0;
	for (i = 0; i < n; i++) {
		struct xdp_desc *rd = (struct xdp_desc *)xsk_ring_cons__rx_desc(&s->rx, ridx + i);

		descs[i] = *rd;
		fr_poison(rd);
		if (fr_rx(&s->fr, descs[i].addr))
			return -1;
	}
	fr_flush(&s->fr);
	xsk_ring_cons__release(&s->rx, n);
	received += n;

	while (xsk_ring_prod__reserve(&dst->tx, n, &tidx) != n) {
		/* TX full: make room from the peer's COMPLETION ring */
		if (complete(dst) < 0)
			return -1;
		sendto(xsk_socket__fd(dst->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0);
		if (stop)
			return 0;
	}
	for (i = 0; i < n; i++) {
		if (fr_tx(&dst->fr, descs[i].addr, FR_RX))
			return -1;
		*xsk_ring_prod__tx_desc(&dst->tx, tidx + i) = descs[i];
	}
	fr_flush(&dst->fr);
	xsk_ring_prod__submit(&dst->tx, n);
	/* copy mode sends only when asked */
	sendto(xsk_socket__fd(dst->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0);
	return (int)n;
}

static void usage(void)
{
	fprintf(stderr, "usage: xsk_fwd [--queues N] [--no-markers] [--inject double-fill] IF_A IF_B\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "queues", required_argument, NULL, 'q' },
		{ "no-markers", no_argument, NULL, 'n' },
		{ "inject", required_argument, NULL, 'i' },
		{ NULL, 0, NULL, 0 },
	};
	struct xsk_umem_config ucfg = { .fill_size = RING_SIZE, .comp_size = RING_SIZE, .frame_size = FRAME_SIZE };
	struct sock socks[2 * MAX_QUEUES];
	struct pollfd pfd[2 * MAX_QUEUES];
	struct xsk_ring_prod fill0;
	struct xsk_ring_cons comp0;
	struct xsk_umem *umem = NULL;
	unsigned queues = 1, nsocks, i;
	int opt, no_markers = 0, rc = EXIT_SETUP, moved;
	size_t size;
	void *area;

	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (opt == 'q') {
			queues = (unsigned)atoi(optarg);
		} else if (opt == 'n') {
			no_markers = 1;
		} else if (opt == 'i' && !strcmp(optarg, "double-fill")) {
			inject_double_fill = 1;
		} else {
			usage();
			return EXIT_SETUP;
		}
	}
	if (argc - optind != 2 || queues < 1 || queues > MAX_QUEUES) {
		usage();
		return EXIT_SETUP;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	/* markers off: no folder, and none from the environment either */
	if (fr_markers_open(&markers, no_markers ? "" : NULL))
		return EXIT_SETUP;
	nsocks = 2 * queues;
	if (fr_states_init(&states, nsocks * FRAMES_PER_SOCK))
		return EXIT_SETUP;
	size = (size_t)states.frames * FRAME_SIZE;
	area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (area == MAP_FAILED || xsk_umem__create(&umem, area, size, &fill0, &comp0, &ucfg)) {
		fprintf(stderr, "xsk_fwd: cannot set up the UMEM (are you root?)\n");
		return EXIT_SETUP;
	}
	memset(socks, 0, sizeof(socks));
	for (i = 0; i < nsocks; i++) {
		/* socks[2q] on IF_A, socks[2q+1] on IF_B, each the other's peer */
		socks[i].peer = &socks[i ^ 1];
		if (sock_open(&socks[i], umem, argv[optind + (i & 1)], i / 2, i * FRAMES_PER_SOCK))
			goto out;
		pfd[i] = (struct pollfd){ .fd = xsk_socket__fd(socks[i].xsk), .events = POLLIN };
	}
	fprintf(stderr, "xsk_fwd: forwarding %s <-> %s, %u queue(s)%s\n", argv[optind], argv[optind + 1], queues,
		fr_markers_enabled(&markers) ? ", markers on" : "");
	rc = 0;
	while (!stop) {
		moved = 0;
		for (i = 0; i < nsocks && rc == 0; i++) {
			int n = forward(&socks[i]), c = complete(&socks[i]);

			if (n < 0 || c < 0)
				rc = EXIT_ANOMALY;
			moved += n + c;
		}
		if (rc)
			break;
		if (!moved)
			poll(pfd, nsocks, 10); /* completions come back within 10 ms too */
	}
out:
	if (rc == EXIT_ANOMALY)
		fprintf(stderr, "xsk_fwd: anomaly found, tracing stopped\n");
	for (i = 0; i < nsocks; i++) {
		if (socks[i].xsk)
			xsk_socket__delete(socks[i].xsk);
		fr_sock_free(&socks[i].fr);
	}
	if (umem)
		xsk_umem__delete(umem);
	fr_states_free(&states);
	fr_markers_close(&markers);
	return rc;
}
