// SPDX-License-Identifier: GPL-2.0
/* flightrec's AF_XDP forwarder: outer queue q <-> inner queue q over one
 * shared UMEM, one pinned thread per socket, a trace_marker line for every
 * descriptor transition, and the post's checks (FILL order, poison, state
 * machine, XDP length, and with --payload-port the stamped payload) that stop
 * tracing on the first anomaly.
 * See c/README.md for the interface. */
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "forwarder.h"
#include "status.h"
#include "stamp.h"
#include "xdp_meta.h"

#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
/* single-writer counters: a relaxed store is enough for the stats reader */
#define BUMP(x, n) STORE(x, (x) + (n))

enum { EXIT_CLEAN = 0, EXIT_SETUP = 2, EXIT_ANOMALY = 3 };

static struct fwd g;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(int sig)
{
	(void)sig;
	STORE(g.stop, 1);
}

static int stopping(const struct fwd *f)
{
	return LOAD(f->stop);
}

/* ---- anomalies ------------------------------------------------------- */

/* A descriptor's transition: a line now, or a word of the ring operation's
 * batched line, written by MARK_FLUSH before the operation makes it visible. */
#define MARK(f, p, addr, from, to) \
	do { \
		if (fr_markers_enabled(&(f)->markers)) \
			fr_markers_transition(&(f)->markers, &(p)->st.markers, &(p)->mb, (p)->name, (addr), \
					      fr_state_name(from), fr_state_name(to)); \
	} while (0)

#define MARK_FLUSH(f, p) \
	do { \
		if (fr_markers_enabled(&(f)->markers)) { \
			fr_markers_flush(&(f)->markers, &(p)->st.markers, &(p)->mb); \
			fr_markers_flush(&(f)->markers, &(p)->st.markers, &(p)->nb); \
		} \
	} while (0)

/* --flagged: keep the bytes the descriptor points at (its len of them, up to
 * FLAGGED_SNAP). Runs after tracing stopped; the frame is still ours. */
static void flag_packet(struct fwd *f, const struct port *p, const char *kind, uint64_t addr,
			uint32_t len, uint32_t xdp_len, const char *line)
{
	struct flagged_packet pkt = { .sock = p->name, .kind = kind, .addr = addr, .len = len,
				      .xdp_len = xdp_len, .line = line };
	uint32_t cap = len < FLAGGED_SNAP ? len : FLAGGED_SNAP;

	/* the poison or a stray address: no bytes to keep */
	if (cap && addr < f->umem.size && f->umem.size - addr >= cap) {
		pkt.data = umem_ptr(&f->umem, addr);
		pkt.caplen = cap;
	}
	flagged_write(&f->flagged, &pkt);
}

/* The first anomaly wins: mute the other threads' markers, write the
 * detection line, stop tracing at once, then record the details. extra->len
 * is the descriptor's len where known (the flagged packet's length). */
static void raise_anomaly(struct fwd *f, struct port *p, const char *kind, uint64_t addr,
			  enum fr_state from, enum fr_state to, const char *line,
			  const struct anomaly *extra)
{
	struct anomaly *a = &f->anomaly;
	int expected = 0;

	/* the descriptors of this ring operation before the bad one go first */
	MARK_FLUSH(f, p);
	if (!__atomic_compare_exchange_n(&a->raised, &expected, 1, 0, __ATOMIC_SEQ_CST,
					 __ATOMIC_SEQ_CST)) {
		STORE(f->stop, 1);
		return;
	}
	/* waits for the other threads' writes in flight: this line is the last */
	fr_markers_detect(&f->markers, &p->st.markers, line);
	/* The kernel's own counters at the detection, beside those at exit. */
	for (unsigned i = 0; i < f->nports; i++)
		f->ports[i].stats_ok =
			port_xdp_statistics(&f->ports[i], &f->ports[i].stats_at_anomaly) == 0;
	if (extra) {
		a->expected = extra->expected;
		a->len = extra->len;
		a->xdp_len = extra->xdp_len;
		snprintf(a->was, sizeof(a->was), "%s", extra->was);
	}
	a->tracing_stopped = fr_markers_enabled(&f->markers);
	snprintf(a->kind, sizeof(a->kind), "%s", kind);
	snprintf(a->sock, sizeof(a->sock), "%s", p->name);
	snprintf(a->from, sizeof(a->from), "%s", fr_state_name(from));
	snprintf(a->to, sizeof(a->to), "%s", fr_state_name(to));
	snprintf(a->line, sizeof(a->line), "%s", line);
	a->addr = addr;
	__atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
	flag_packet(f, p, kind, addr, extra ? extra->len : 0, extra ? extra->xdp_len : 0, line);
}

/* In zero-copy the driver posts FILL entries to its own ring long before
 * packets land in them and takes buffers it dropped (pool free list) before
 * FILL: RX order is not FILL order there, only ownership is (docs/markers.md,
 * "Zero-copy"). */
static bool fill_ordered(const struct port *p)
{
	return p->zerocopy != 1;
}

static void order_push(struct port *p, uint64_t addr)
{
	if (fill_ordered(p))
		fr_fill_order_push(&p->order, addr);
}

/* Moves frame of addr from -> to; on an invalid transition reports it and
 * returns false. len: the descriptor's, 0 where the ring has none. */
static bool track(struct fwd *f, struct port *p, uint64_t addr, enum fr_state from,
		  enum fr_state to, uint32_t len)
{
	struct anomaly extra = { .len = len };
	enum fr_state was;
	char line[160];

	if (fr_states_move(&f->states, umem_frame_of(addr), from, to, &was))
		return true;
	snprintf(extra.was, sizeof(extra.was), "%s", fr_state_name(was));
	snprintf(line, sizeof(line), "%s 0x%llx %s -> %s: invalid, was %s", p->name,
		 (unsigned long long)addr, fr_state_name(from), fr_state_name(to), extra.was);
	raise_anomaly(f, p, "invalid_transition", addr, from, to, line, &extra);
	return false;
}


static void wake(struct port *q)
{
	uint64_t one = 1;

	/* pairs with the fence in port_wait(): either it sees our publish or we
	 * see it sleeping */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (LOAD(q->sleeping) && write(q->efd, &one, sizeof(one)) < 0) {
		/* eventfd overflow cannot happen at 1 a write; nothing to do */
	}
}

/* After producing to FILL: a zero-copy driver that found FILL empty stops
 * refilling its own ring and sets need_wakeup (XDP_USE_NEED_WAKEUP, which
 * the zero-copy and auto binds ask for); recvfrom wakes its NAPI. Without
 * the flag virtio_net repolls NAPI for as long as FILL is empty
 * (virtnet_receive returns the budget), a CPU spinning in softirq. */
static void fill_kick(struct port *p)
{
	if (xsk_ring_prod__needs_wakeup(&p->r.fill) &&
	    recvfrom(p->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL) < 0 && errno != EAGAIN &&
	    errno != EBUSY && errno != ENETDOWN) {
		/* nothing useful to do: the next refill kicks again */
	}
}

/* ---- the fault injector: below the tracker ---------------------------- */

/* True once, when the injected bug is due. The FILL bugs go to an outer
 * socket: it receives the client's traffic, the busy direction, so the
 * duplicate comes out of its RX soon. An inner socket of a one-queue virtio
 * topology got 562 packets in 30 s (TCP ACKs), fewer than the 512 frames it
 * owns: the duplicate stayed in FILL and the run ended clean. */
static bool inject_due(struct fwd *f, const struct port *p, enum inject_kind kind)
{
	int no = 0;

	if ((kind == INJECT_DOUBLE_FILL || kind == INJECT_FILL_AND_TX) && p->side != OUTER)
		return false;
	if (f->opt.inject != kind || LOAD(f->injected) ||
	    __atomic_load_n(&f->rx_total, __ATOMIC_RELAXED) < f->opt.inject_after)
		return false;
	return __atomic_compare_exchange_n(&f->injected, &no, 1, 0, __ATOMIC_SEQ_CST,
					   __ATOMIC_SEQ_CST);
}

/* ---- the four ring operations of one socket ---------------------------- */

/* COMPLETION: frames we sent go back to the peer that received them. */
static uint32_t do_completions(struct fwd *f, struct port *p)
{
	struct handoff *ret = &p->peer->ret_in;
	uint32_t idx, i, n;

	n = xsk_ring_cons__peek(&p->r.comp, f->opt.batch, &idx);
	if (!n)
		return 0;
	if (handoff_space(ret) < n) /* cannot happen: ret_in holds all the peer owns */
		n = handoff_space(ret);
	for (i = 0; i < n; i++) {
		uint64_t addr = *xsk_ring_cons__comp_addr(&p->r.comp, idx + i);

		if (!track(f, p, addr, FR_TX, FR_COMP, 0))
			return i + 1;
		MARK(f, p, addr, FR_TX, FR_COMP);
		handoff_slot(ret, i)->addr = addr;
	}
	MARK_FLUSH(f, p);
	xsk_ring_cons__release(&p->r.comp, n);
	handoff_publish(ret, n);
	wake(p->peer);
	__atomic_fetch_sub(&p->tx_outstanding, n, __ATOMIC_RELAXED);
	BUMP(p->st.comp, n);
	return n;
}

/* ret_in -> FILL: our frames, sent by the peer, to receive into again. */
static uint32_t do_refill(struct fwd *f, struct port *p)
{
	uint32_t avail = handoff_avail(&p->ret_in), idx, i, n, extra = 0;
	uint64_t addr = 0;

	n = avail < f->opt.batch ? avail : f->opt.batch;
	if (!n)
		return 0;
	if (xsk_prod_nb_free(&p->r.fill, n + 1) > n && inject_due(f, p, INJECT_DOUBLE_FILL))
		extra = 1;
	if (xsk_ring_prod__reserve(&p->r.fill, n + extra, &idx) != n + extra)
		return 0; /* cannot happen: FILL is as big as all we own */
	for (i = 0; i < n; i++) {
		addr = umem_frame_addr(umem_frame_of(handoff_peek(&p->ret_in, i)->addr));
		if (!track(f, p, addr, FR_COMP, FR_FILL, 0))
			return i + 1;
		order_push(p, addr);
		MARK(f, p, addr, FR_COMP, FR_FILL);
		*xsk_ring_prod__fill_addr(&p->r.fill, idx + i) = addr;
	}
	if (extra) {
		/* double-fill: the ring write and its marker, but neither the deque
		 * nor the state machine hears of it, as with a real resubmit bug */
		MARK(f, p, addr, FR_COMP, FR_FILL);
		*xsk_ring_prod__fill_addr(&p->r.fill, idx + n) = addr;
	}
	MARK_FLUSH(f, p);
	xsk_ring_prod__submit(&p->r.fill, n + extra);
	fill_kick(p);
	handoff_release(&p->ret_in, n);
	BUMP(p->st.fill, n + extra);
	return n;
}

static void kick_tx(struct port *p)
{
	/* In copy mode one sendto sends at most 32 packets (xsk_generic_xmit):
	 * callers keep kicking while TX is outstanding. */
	if (sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
	    errno != EBUSY && errno != ENOBUFS && errno != ENETDOWN) {
		/* nothing useful to do: the next kick retries */
	}
	BUMP(p->st.kicks, 1);
}

/* reuse-in-flight: the application takes a frame it has just put into TX
 * as sent once sendto() returns, without waiting for its COMPLETION entry:
 * its own bookkeeping moves the frame TX -> COMP (no marker: no COMPLETION
 * entry was read) and hands it back to its owner, whose refill writes
 * `COMP -> FILL` while the kernel still has it to send. The TX ring is
 * submitted only once the owner has refilled it (or after 1 s), so the
 * reuse is in the trace before the kernel can complete the frame; the real
 * completion then meets a frame in FILL, and the state machine catches it
 * (`TX -> COMP: invalid, was FILL`). */
static void inject_reuse(struct fwd *f, struct port *p, uint64_t addr)
{
	struct handoff *ret = &p->peer->ret_in;
	uint32_t frame = umem_frame_of(addr);
	enum fr_state was;
	double until = now() + 1.0;

	if (!handoff_space(ret) || !fr_states_move(&f->states, frame, FR_TX, FR_COMP, &was))
		return;
	handoff_slot(ret, 0)->addr = addr;
	handoff_publish(ret, 1);
	wake(p->peer);
	while (fr_states_peek(&f->states, frame) == FR_COMP && !stopping(f) && now() < until)
		sched_yield(); /* the owner's thread may share our CPU */
}

/* fwd_in -> TX: packets the peer received, out of our interface. */
static uint32_t do_transmit(struct fwd *f, struct port *p)
{
	uint32_t avail = handoff_avail(&p->fwd_in), idx, i, n;

	n = avail < f->opt.batch ? avail : f->opt.batch;
	n = xsk_prod_nb_free(&p->r.tx, n) < n ? xsk_prod_nb_free(&p->r.tx, n) : n;
	if (!n || xsk_ring_prod__reserve(&p->r.tx, n, &idx) != n)
		return 0;
	for (i = 0; i < n; i++) {
		const struct handoff_item *it = handoff_peek(&p->fwd_in, i);
		struct xdp_desc *d = xsk_ring_prod__tx_desc(&p->r.tx, idx + i);

		if (!track(f, p, it->addr, FR_RX, FR_TX, it->len))
			return i + 1;
		MARK(f, p, it->addr, FR_RX, FR_TX);
		d->addr = it->addr;
		d->len = it->len;
		d->options = 0;
	}
	MARK_FLUSH(f, p);
	/* not from a twin: the peer's ret_in has one producer, the primary's thread */
	if (!p->primary && inject_due(f, p, INJECT_REUSE_IN_FLIGHT))
		inject_reuse(f, p, xsk_ring_prod__tx_desc(&p->r.tx, idx + n - 1)->addr);
	xsk_ring_prod__submit(&p->r.tx, n);
	handoff_release(&p->fwd_in, n);
	/* completed on the primary's COMPLETION ring, which a twin shares */
	__atomic_fetch_add(p->primary ? &p->primary->tx_outstanding : &p->tx_outstanding, n,
			   __ATOMIC_RELAXED);
	BUMP(p->st.tx, n);
	kick_tx(p);
	return n;
}

/* RX -> FILL of our own socket, for a packet we do not forward. */
static bool drop_to_fill(struct fwd *f, struct port *p, uint64_t addr)
{
	uint32_t idx;

	if (xsk_ring_prod__reserve(&p->r.fill, 1, &idx) != 1)
		return false;
	addr = umem_frame_addr(umem_frame_of(addr));
	if (!track(f, p, addr, FR_RX, FR_FILL, 0))
		return false;
	order_push(p, addr);
	MARK(f, p, addr, FR_RX, FR_FILL);
	MARK_FLUSH(f, p);
	*xsk_ring_prod__fill_addr(&p->r.fill, idx) = addr;
	xsk_ring_prod__submit(&p->r.fill, 1);
	fill_kick(p);
	BUMP(p->st.fill, 1);
	BUMP(p->st.drops, 1);
	return true;
}

/* The checks of one RX descriptor, in the post's order: FILL order (and so
 * the poison; in zero-copy the poison alone), state machine, XDP length. */
static bool check_rx(struct fwd *f, struct port *p, uint64_t addr, uint32_t len)
{
	struct anomaly extra = { 0 };
	struct xdp_meta *meta;
	char line[2048], rest[1800];
	uint64_t exp = 0;

	if (!fill_ordered(p)) {
		/* the state machine below proves the kernel owned it; the poison
		 * still proves a slot published unwritten */
		if (addr == FR_POISON) {
			snprintf(line, sizeof(line), "%s 0x%llx FILL -> RX: poison", p->name,
				 (unsigned long long)addr);
			extra.len = len;
			raise_anomaly(f, p, "poison", addr, FR_FILL, FR_RX, line, &extra);
			return false;
		}
	} else if (fr_fill_order_pop(&p->order, &exp) < 0 || addr != exp) {
		fr_fill_order_format(&p->order, FR_REMAINING_MAX, rest, sizeof(rest));
		snprintf(line, sizeof(line), "%s 0x%llx FILL -> RX: expected 0x%llx remaining: %s",
			 p->name, (unsigned long long)addr, (unsigned long long)exp, rest);
		extra.expected = exp;
		extra.len = len;
		raise_anomaly(f, p, addr == FR_POISON ? "poison" : "fill_order", addr, FR_FILL, FR_RX,
			      line, &extra);
		return false;
	}
	if (!track(f, p, addr, FR_FILL, FR_RX, len))
		return false;
	if (addr >= sizeof(*meta) && addr + len <= f->umem.size) {
		meta = umem_ptr(&f->umem, addr - sizeof(*meta));
		if (meta->magic == XDP_META_MAGIC && meta->len != len) {
			extra.len = len;
			extra.xdp_len = meta->len;
			snprintf(line, sizeof(line), "%s 0x%llx FILL -> RX: len %u xdp_len %u",
				 p->name, (unsigned long long)addr, len, meta->len);
			raise_anomaly(f, p, "len_mismatch", addr, FR_FILL, FR_RX, line, &extra);
			return false;
		}
		if (meta->magic == XDP_META_MAGIC)
			BUMP(p->st.meta_checked, 1);
		meta->magic = 0; /* a later packet without metadata must not match */
	}
	return true;
}

/* short-len: the application shortens the len of one IPv4 descriptor (by up
 * to 16 bytes, keeping the IPv4 header whole), a user error below the
 * tracker that the XDP length check must catch. Returns the len to use. */
static uint32_t inject_short_len(struct fwd *f, const struct port *p, struct xdp_desc *d, uint64_t addr,
				 uint32_t len)
{
	const uint8_t *eth;
	uint32_t cut;

	if (f->opt.inject != INJECT_SHORT_LEN || len <= 14 + 20 || addr >= f->umem.size ||
	    f->umem.size - addr < len)
		return len;
	eth = umem_ptr(&f->umem, addr);
	if (eth[12] != 0x08 || eth[13] != 0x00 || !inject_due(f, p, INJECT_SHORT_LEN))
		return len;
	cut = len - (14 + 20) < 16 ? len - (14 + 20) : 16;
	d->len = len - cut; /* the ring slot itself, as the bug would */
	return len - cut;
}

/* --payload-port: a stamped UDP payload (c/stamp/stamp.h) must be what its stamp
 * and length say before the frame is forwarded. *pkt gets the packet number
 * (-1 when the frame is no stamped packet). False after raising the anomaly. */
static bool check_payload(struct fwd *f, struct port *p, uint64_t addr, uint32_t len, long long *pkt)
{
	struct anomaly extra = { .len = len };
	const uint8_t *payload;
	struct stamp_bad bad;
	uint32_t have;
	char line[256];
	int n;

	*pkt = -1;
	if (!f->opt.payload_port || addr >= f->umem.size || f->umem.size - addr < len ||
	    stamp_udp_payload(umem_ptr(&f->umem, addr), len, f->opt.payload_port, &payload, &have) < 0)
		return true;
	BUMP(p->st.payload_checked, 1);
	if (stamp_check(payload, have, &bad)) {
		*pkt = stamp_load(payload + 4);
		return true;
	}
	n = snprintf(line, sizeof(line), "%s 0x%llx FILL -> RX: ", p->name, (unsigned long long)addr);
	stamp_format(line + n, sizeof(line) - (size_t)n, &bad);
	extra.expected = bad.expected < 0 ? 0 : (uint64_t)bad.expected;
	raise_anomaly(f, p, "payload", addr, FR_FILL, FR_RX, line, &extra);
	return false;
}

/* flip-payload: after the frame was checked and handed to the peer's TX, the
 * application scribbles on it (bytes of the stamped body, never the header,
 * so the receiver still knows which packet it was): a user bug below every
 * check of the forwarder, for the receiver's check to catch. Every stamped
 * packet whose number is a multiple of 61, from --inject-after on, up to
 * --inject-count of them. */
static void inject_flip(struct fwd *f, uint64_t addr, uint32_t len, uint32_t pkt)
{
	const uint8_t *payload;
	uint8_t *b;
	uint32_t have, at, nflip, i;
	int n;

	if (f->opt.inject != INJECT_FLIP_PAYLOAD || pkt % 61 ||
	    __atomic_load_n(&f->rx_total, __ATOMIC_RELAXED) < f->opt.inject_after ||
	    stamp_udp_payload(umem_ptr(&f->umem, addr), len, f->opt.payload_port, &payload, &have) < 0 ||
	    have <= STAMP_HDR_LEN)
		return;
	n = LOAD(f->injected);
	do {
		if (n >= (int)f->opt.inject_count)
			return;
	} while (!__atomic_compare_exchange_n(&f->injected, &n, n + 1, 0, __ATOMIC_SEQ_CST,
					      __ATOMIC_SEQ_CST));
	f->flipped[n] = pkt;
	b = (uint8_t *)payload;
	nflip = 1 + pkt % 3; /* 1 to 3 neighbouring bytes */
	at = STAMP_HDR_LEN + (pkt * 7919u) % (have - STAMP_HDR_LEN);
	for (i = 0; i < nflip && at + i < have; i++)
		b[at + i] ^= 0xff;
}

/* The note `ADDR egress_tx_queue forward [pkt N]`: the frame goes to the peer's TX. */
static void mark_forward(struct fwd *f, struct port *p, uint64_t addr, long long pkt)
{
	static const char text[] = "egress_tx_queue forward pkt ";
	char buf[sizeof(text) + 24];
	size_t n = sizeof(text) - 1;

	if (!fr_markers_enabled(&f->markers))
		return;
	memcpy(buf, text, n);
	if (pkt < 0) {
		n -= 5; /* no " pkt " */
	} else {
		char digits[24];
		int k = 0;
		unsigned long long v = (unsigned long long)pkt;

		do
			digits[k++] = (char)('0' + v % 10);
		while (v /= 10);
		while (k)
			buf[n++] = digits[--k];
	}
	fr_markers_note(&f->markers, &p->st.markers, &p->nb, addr, buf, n);
}

/* RX -> the peer's fwd_in (its thread puts them on its TX), or every other
 * ring operation its twin's. */
static uint32_t do_receive(struct fwd *f, struct port *p)
{
	struct port *dst = p->peer;
	struct handoff *fwd;
	uint32_t idx, i, n, nfwd = 0, space;

	n = xsk_ring_cons__peek(&p->r.rx, f->opt.batch, &idx);
	if (!n)
		return 0;
	if (dst->twin && (p->rx_ops++ & 1))
		dst = dst->twin;
	fwd = &dst->fwd_in;
	space = handoff_space(fwd);
	for (i = 0; i < n; i++) {
		struct xdp_desc *d = (struct xdp_desc *)xsk_ring_cons__rx_desc(&p->r.rx, idx + i);
		uint64_t addr = d->addr;
		uint32_t len = inject_short_len(f, p, d, addr, d->len);
		long long pkt = -1;

		/* poison the slot: reading it back means the kernel published a
		 * slot it had not written */
		d->addr = FR_POISON;
		if (!check_rx(f, p, addr, len) || !check_payload(f, p, addr, len, &pkt)) {
			xsk_ring_cons__release(&p->r.rx, i + 1);
			return i + 1;
		}
		MARK(f, p, addr, FR_FILL, FR_RX);
		if (nfwd < space && len && len <= FRAME_SIZE - FRAME_DATA_OFFSET) {
			struct handoff_item *it = handoff_slot(fwd, nfwd++);

			it->addr = addr;
			it->len = len;
			/* a stamped packet's number ties what the receiver reports to this frame */
			mark_forward(f, p, addr, pkt);
			if (pkt >= 0)
				inject_flip(f, addr, len, (uint32_t)pkt);
			if (xsk_prod_nb_free(&p->r.fill, 1) && inject_due(f, p, INJECT_FILL_AND_TX)) {
				uint32_t fidx;

				/* fill-and-tx: also into our FILL, untracked; its own ring
				 * operation, so this RX's lines so far go first */
				MARK_FLUSH(f, p);
				xsk_ring_prod__reserve(&p->r.fill, 1, &fidx);
				MARK(f, p, addr, FR_RX, FR_FILL);
				MARK_FLUSH(f, p);
				*xsk_ring_prod__fill_addr(&p->r.fill, fidx) = addr;
				xsk_ring_prod__submit(&p->r.fill, 1);
			}
		} else {
			/* a FILL submit of its own: this RX's lines so far go first */
			MARK_FLUSH(f, p);
			if (!drop_to_fill(f, p, addr)) {
				xsk_ring_cons__release(&p->r.rx, i + 1);
				return i + 1;
			}
		}
	}
	MARK_FLUSH(f, p);
	xsk_ring_cons__release(&p->r.rx, n);
	handoff_publish(fwd, nfwd);
	wake(dst);
	__atomic_fetch_add(&f->rx_total, n, __ATOMIC_RELAXED);
	BUMP(p->st.rx, n);
	return n;
}

static bool tx_pending(const struct port *p)
{
	return __atomic_load_n(p->r.tx.consumer, __ATOMIC_ACQUIRE) != p->r.tx.cached_prod;
}

static void port_wait(struct fwd *f, struct port *p, int timeout_ms)
{
	struct pollfd pfd[2] = {
		{ .fd = p->fd, .events = POLLIN },
		{ .fd = p->efd, .events = POLLIN },
	};
	uint64_t v;

	__atomic_store_n(&p->sleeping, 1, __ATOMIC_SEQ_CST);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!handoff_avail(&p->fwd_in) && !handoff_avail(&p->ret_in) && !stopping(f))
		poll(pfd, 2, timeout_ms);
	__atomic_store_n(&p->sleeping, 0, __ATOMIC_SEQ_CST);
	if (read(p->efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nobody woke us */
	}
}

/* A round with nothing done. While TX is outstanding keep kicking (copy mode
 * sends only what a sendto() asks for, and low-rate TCP stalls if we wait for
 * a full batch) and poll every 1 ms; else sleep until woken, 100 ms at most. */
static void idle_round(struct fwd *f, struct port *p, bool tx_busy, unsigned *idle)
{
	if (!tx_busy) {
		port_wait(f, p, 100);
		return;
	}
	if (tx_pending(p))
		kick_tx(p);
	if (++*idle > 64)
		port_wait(f, p, 1);
}

static void *port_thread(void *arg)
{
	struct port *p = arg;
	struct fwd *f = &g;
	unsigned idle = 0;

	while (!stopping(f)) {
		uint32_t work = do_completions(f, p);

		if (!stopping(f))
			work += do_refill(f, p);
		if (!stopping(f))
			work += do_transmit(f, p);
		if (!stopping(f))
			work += do_receive(f, p);
		if (work)
			idle = 0;
		else
			idle_round(f, p, LOAD(p->tx_outstanding) != 0, &idle);
	}
	return NULL;
}

/* A twin only transmits: its primary reads the COMPLETION ring they share. */
static void *twin_thread(void *arg)
{
	struct port *p = arg;
	struct fwd *f = &g;
	unsigned idle = 0;

	while (!stopping(f)) {
		if (do_transmit(f, p))
			idle = 0;
		else
			idle_round(f, p, tx_pending(p), &idle);
	}
	return NULL;
}

/* ---- set-up and tear-down -------------------------------------------- */

static uint32_t pow2_at_least(uint32_t v)
{
	uint32_t r = 1;

	while (r < v)
		r <<= 1;
	return r;
}

/* Each port's twin: its name (its markers are its queue's), its peer (where
 * its packets come from and their frames go back to) and its own handoff. */
static int twins_init(struct fwd *f)
{
	unsigned i;

	f->twins = calloc(f->nports, sizeof(*f->twins));
	if (!f->twins)
		return -1;
	for (i = 0; i < f->nports; i++) /* what ports_free() closes */
		f->twins[i].efd = f->twins[i].fd = f->twins[i].own.fd = -1;
	for (i = 0; i < f->nports; i++) {
		struct port *p = &f->ports[i], *t = &f->twins[i];

		t->zerocopy = -ENOTCONN;
		t->side = p->side;
		t->queue = p->queue;
		t->peer = p->peer;
		t->primary = p;
		p->twin = t;
		snprintf(t->name, sizeof(t->name), "%s", p->name);
		if (handoff_init(&t->fwd_in, f->umem.ring_size))
			return -1;
		t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (t->efd < 0 || fr_markers_add_writer(&f->markers, &t->st.markers))
			return -1;
	}
	return 0;
}

static int ports_init(struct fwd *f)
{
	unsigned q, s, i;
	uint32_t fps = f->opt.frames / (2 * f->opt.queues);

	f->ports = calloc(2 * f->opt.queues, sizeof(*f->ports));
	if (!f->ports)
		return -1;
	f->nports = 2 * f->opt.queues;
	for (i = 0; i < f->nports; i++) {
		f->ports[i].efd = f->ports[i].fd = -1;
		f->ports[i].zerocopy = -ENOTCONN;
	}
	for (s = 0; s < 2; s++) {
		for (q = 0; q < f->opt.queues; q++) {
			struct port *p = &f->ports[s * f->opt.queues + q];

			p->side = s;
			p->queue = q;
			p->owned = fps;
			p->peer = &f->ports[(1 - s) * f->opt.queues + q];
			snprintf(p->name, sizeof(p->name), "%s q:%u", s ? "inner" : "outer", q);
			/* the deque has room for one injected extra; handoffs hold all
			 * the frames a socket owns, so they never fill up */
			if (fr_fill_order_init(&p->order, f->umem.ring_size) ||
			    handoff_init(&p->fwd_in, f->umem.ring_size) ||
			    handoff_init(&p->ret_in, f->umem.ring_size))
				return -1;
			p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			if (p->efd < 0 || fr_markers_add_writer(&f->markers, &p->st.markers))
				return -1;
		}
	}
	return f->opt.tx_twins ? twins_init(f) : 0;
}

static void ports_free(struct fwd *f)
{
	unsigned i;

	if (!f->ports)
		return;
	/* the twins first: they share their primaries' pools */
	for (i = 0; f->twins && i < f->nports; i++) {
		struct port *t = &f->twins[i];

		umem_twin_free(&t->own);
		if (t->efd >= 0)
			close(t->efd);
		handoff_free(&t->fwd_in);
	}
	free(f->twins);
	f->twins = NULL;
	for (i = 0; i < f->nports; i++) {
		struct port *p = &f->ports[i];

		if (p->xsk)
			xsk_socket__delete(p->xsk);
		if (p->efd >= 0)
			close(p->efd);
		fr_fill_order_free(&p->order);
		handoff_free(&p->fwd_in);
		handoff_free(&p->ret_in);
	}
	free(f->ports);
	f->ports = NULL;
}

/* Start-up: every frame a socket owns goes FREE -> FILL. */
static int initial_fill(struct fwd *f, struct port *p, uint32_t first_frame)
{
	uint32_t idx, i;

	if (xsk_ring_prod__reserve(&p->r.fill, p->owned, &idx) != p->owned) {
		fprintf(stderr, "forwarder: FILL ring of %s too small for %u frames\n", p->name,
			p->owned);
		return -1;
	}
	for (i = 0; i < p->owned; i++) {
		uint64_t addr = umem_frame_addr(first_frame + i);

		if (!track(f, p, addr, FR_FREE, FR_FILL, 0))
			return -1;
		order_push(p, addr);
		MARK(f, p, addr, FR_FREE, FR_FILL);
		*xsk_ring_prod__fill_addr(&p->r.fill, idx + i) = addr;
	}
	MARK_FLUSH(f, p);
	xsk_ring_prod__submit(&p->r.fill, p->owned);
	fill_kick(p);
	BUMP(p->st.fill, p->owned);
	return 0;
}

/* Rx queues of ifname in the current netns (ETHTOOL_GCHANNELS), 0 if unknown. */
static unsigned rx_queues(const char *ifname)
{
	struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	unsigned n = 0;

	if (fd < 0)
		return 0;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	ifr.ifr_data = (void *)&ch;
	if (ioctl(fd, SIOCETHTOOL, &ifr) == 0)
		n = ch.rx_count ? ch.rx_count : ch.combined_count;
	close(fd);
	return n;
}

/* The driver of ifname in the current netns (ETHTOOL_GDRVINFO), "" if unknown. */
static void driver_name(const char *ifname, char *out, size_t len)
{
	struct ethtool_drvinfo info = { .cmd = ETHTOOL_GDRVINFO };
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	out[0] = '\0';
	if (fd < 0)
		return;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	ifr.ifr_data = (void *)&info;
	if (ioctl(fd, SIOCETHTOOL, &ifr) == 0)
		snprintf(out, len, "%s", info.driver);
	close(fd);
}

int port_xdp_statistics(const struct port *p, struct xdp_statistics *xs)
{
	socklen_t len = sizeof(*xs);

	memset(xs, 0, sizeof(*xs));
	if (p->fd < 0 || getsockopt(p->fd, SOL_XDP, XDP_STATISTICS, xs, &len) < 0)
		return -1;
	return 0;
}

const char *port_mode_name(const struct port *p)
{
	return p->zerocopy == 1 ? "zerocopy" : p->zerocopy == 0 ? "copy" : "unknown";
}

static uint16_t bind_flags(enum bind_mode m)
{
	/* need_wakeup where a driver may run zero-copy: see fill_kick(). Copy
	 * mode keeps the bind veth has always been recorded with. */
	return m == MODE_ZEROCOPY ? XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP :
	       m == MODE_COPY ? XDP_COPY : XDP_USE_NEED_WAKEUP;
}

static int setup_side(struct fwd *f, enum side s)
{
	const char *ifname = s ? f->opt.inner_if : f->opt.outer_if;
	unsigned q;
	bool zc = false;

	if (netns_enter(&f->ns[s]))
		return -1;
	f->ifindex[s] = (int)if_nametoindex(ifname);
	if (!f->ifindex[s]) {
		fprintf(stderr, "forwarder: no interface %s in network namespace %s; check "
			"`ip -n NAME link show`\n", ifname, f->ns[s].path);
		return -1;
	}
	if (s == INNER && f->ifindex[INNER] == f->ifindex[OUTER]) {
		/* libxdp keys a socket's FILL/COMP rings by (ifindex, queue), without
		 * the namespace: equal ifindexes would share rings */
		fprintf(stderr, "forwarder: %s and %s have the same ifindex %d in their namespaces; "
			"recreate one with another index (ip link add ... index N)\n",
			f->opt.outer_if, ifname, f->ifindex[s]);
		return -1;
	}
	driver_name(ifname, f->driver[s], sizeof(f->driver[s]));
	q = rx_queues(ifname);
	if (q > f->opt.queues)
		/* the XDP program passes what arrives on an unbound queue to the stack */
		fprintf(stderr, "forwarder: %s has %u rx queues but --queues %u: packets on queues "
			"%u..%u are not forwarded; pass --queues %u\n", ifname, q, f->opt.queues,
			f->opt.queues, q - 1, q);
	if (s == OUTER && umem_init(&f->umem, f->opt.frames, f->umem.ring_size))
		return -1;
	for (q = 0; q < f->opt.queues; q++) {
		struct port *p = &f->ports[s * f->opt.queues + q];

		if (umem_socket_create(&f->umem, &p->xsk, ifname, q, &p->r, bind_flags(f->opt.mode),
				       f->driver[s]))
			return -1;
		p->fd = xsk_socket__fd(p->xsk);
		/* what the kernel gave, not what was asked: auto and the shared
		 * sockets take the first socket's mode */
		p->zerocopy = umem_socket_zerocopy(p->fd);
		if (f->opt.mode == MODE_ZEROCOPY && p->zerocopy != 1) {
			fprintf(stderr, "forwarder: --mode zerocopy: %s is bound but XDP_OPTIONS reads %s\n",
				p->name, p->zerocopy == 0 ? "copy mode" : strerror(-p->zerocopy));
			return -1;
		}
		zc = zc || p->zerocopy == 1;
		if (initial_fill(f, p, (s * f->opt.queues + q) * p->owned))
			return -1;
		if (xdp_prog_set_xsk(&f->prog[s], q, p->fd))
			return -1;
		if (p->twin) {
			struct port *t = p->twin;

			if (umem_twin_create(&t->own, &t->r.tx, p->fd, f->ifindex[s], ifname, q,
					     f->umem.ring_size))
				return -1;
			t->fd = t->own.fd;
			t->zerocopy = umem_socket_zerocopy(t->fd);
		}
	}
	return xdp_prog_attach(&f->prog[s], f->ifindex[s], f->opt.skb_mode, zc);
}

static int setup(struct fwd *f)
{
	uint32_t fps = f->opt.frames / (2 * f->opt.queues);
	int s;

	/* markers only with --trace-dir: "" keeps the library from taking
	 * $FLIGHTREC_TRACEDIR, which `record --app` sets */
	if (fr_markers_open(&f->markers, f->opt.trace_dir ? f->opt.trace_dir : "") || /* before any setns */
	    flagged_open(&f->flagged, f->opt.flagged_path))
		return -1;
	f->markers.batched = !f->opt.per_descriptor;
	if (netns_open(&f->home, "-") || netns_open(&f->ns[OUTER], f->opt.outer_ns) ||
	    netns_open(&f->ns[INNER], f->opt.inner_ns))
		return -1;
	for (s = 0; s < 2; s++)
		if (xdp_prog_load(&f->prog[s], f->opt.xdp_prog,
				  s ? f->opt.inner_if : f->opt.outer_if))
			return -1;
	/* RX at least as big as all a socket owns: a full RX ring makes the
	 * kernel reuse a frame out of FILL order (xsk_buff_free -> free_list),
	 * which the order check would call a bug. Twice that, because the kernel
	 * publishes FILL's consumer index lazily (only when its cached entries
	 * run out, __xskq_cons_peek), so FILL looks fuller than it is. */
	f->umem.ring_size = pow2_at_least(2 * fps);
	if (fr_states_init(&f->states, f->opt.frames) || ports_init(f)) {
		fprintf(stderr, "forwarder: out of memory; try fewer --frames\n");
		return -1;
	}
	for (s = 0; s < 2; s++)
		if (setup_side(f, s))
			return -1;
	return netns_enter(&f->home);
}

static void teardown(struct fwd *f)
{
	int s;

	for (s = 0; s < 2; s++) {
		if (f->prog[s].ifindex && f->ns[s].fd >= 0 && netns_enter(&f->ns[s]) == 0)
			xdp_prog_detach(&f->prog[s]);
	}
	if (f->home.fd >= 0)
		netns_enter(&f->home);
	ports_free(f);
	umem_free(&f->umem);
	fr_states_free(&f->states);
	for (s = 0; s < 2; s++) {
		xdp_prog_free(&f->prog[s]);
		netns_close(&f->ns[s]);
	}
	netns_close(&f->home);
	fr_markers_close(&f->markers);
	flagged_close(&f->flagged);
}

/* One thread a port, then one a twin. */
static unsigned nthreads(const struct fwd *f)
{
	return (f->twins ? 2 : 1) * f->nports;
}

static struct port *thread_port(struct fwd *f, unsigned i)
{
	return i < f->nports ? &f->ports[i] : &f->twins[i - f->nports];
}

static int start_threads(struct fwd *f)
{
	cpu_set_t online, one;
	int cpus[CPU_SETSIZE], ncpu = 0, c;
	unsigned i;
	sigset_t block, old;

	if (sched_getaffinity(0, sizeof(online), &online) == 0)
		for (c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &online))
				cpus[ncpu++] = c;
	/* signals go to the main thread only */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	for (i = 0; i < nthreads(f); i++) {
		struct port *p = thread_port(f, i);
		/* a twin on the CPU after its primary's: two CPUs reserving in one ring */
		unsigned k = p->primary ? i - f->nports + 1 : i;
		char tname[16];

		p->cpu = ncpu ? cpus[k % (unsigned)ncpu] : -1;
		if (pthread_create(&p->thread, NULL, p->primary ? twin_thread : port_thread, p)) {
			fprintf(stderr, "forwarder: cannot start a thread for %s\n", p->name);
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			return -1;
		}
		p->thread_started = 1;
		snprintf(tname, sizeof(tname), "fwd-%s%s-q%u", p->side ? "in" : "out",
			 p->primary ? "2" : "", p->queue);
		pthread_setname_np(p->thread, tname);
		if (p->cpu >= 0) {
			CPU_ZERO(&one);
			CPU_SET(p->cpu, &one);
			pthread_setaffinity_np(p->thread, sizeof(one), &one);
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return 0;
}

static void stop_threads(struct fwd *f)
{
	uint64_t one = 1;
	unsigned i;

	__atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < nthreads(f); i++)
		if (thread_port(f, i)->efd >= 0 && write(thread_port(f, i)->efd, &one, sizeof(one)) < 0) {
			/* the thread still wakes within its poll timeout */
		}
	for (i = 0; i < nthreads(f); i++) {
		struct port *p = thread_port(f, i);

		if (p->thread_started) {
			pthread_join(p->thread, NULL);
			p->thread_started = 0;
		}
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	int code = EXIT_SETUP, rc;
	double t, next_stats = 1.0;
	struct timespec tick = { 0, 100 * 1000 * 1000 };
	unsigned s;

	rc = options_parse(&g.opt, argc, argv);
	if (rc)
		return rc > 0 ? 0 : EXIT_SETUP;
	for (s = 0; s < 2; s++) {
		g.ns[s].fd = -1;
		g.prog[s].prog_fd = -1;
	}
	g.home.fd = -1;
	g.markers.marker_fd = g.markers.tracing_on_fd = -1;
	g.flagged.fd = -1;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (setup(&g) || start_threads(&g)) {
		g.exit_reason = "setup failed";
		goto out;
	}
	g.t_start = now();
	status_print_ready(&g);
	for (;;) {
		nanosleep(&tick, NULL); /* EINTR on a signal: fine */
		t = now() - g.t_start;
		if (LOAD(g.anomaly.raised)) {
			g.exit_reason = "anomaly";
			break;
		}
		if (stopping(&g)) {
			g.exit_reason = "signal";
			break;
		}
		if (g.opt.duration && t >= g.opt.duration) {
			g.exit_reason = "duration";
			break;
		}
		if (t >= next_stats) {
			status_print_stats_event(&g, t);
			next_stats += 1.0;
		}
	}
	stop_threads(&g);
	t = now() - g.t_start;
	if (g.anomaly.raised) {
		g.exit_reason = "anomaly";
		code = EXIT_ANOMALY;
		status_print_anomaly(&g);
	} else {
		code = EXIT_CLEAN;
	}
	status_print_stats_event(&g, t);
	if (g.opt.stats_path)
		status_write_stats(&g, g.opt.stats_path, code, t);
	status_print_exit(&g, code, t);
out:
	stop_threads(&g);
	if (code == EXIT_SETUP && g.opt.stats_path)
		status_write_stats(&g, g.opt.stats_path, code, 0);
	teardown(&g);
	return code;
}
