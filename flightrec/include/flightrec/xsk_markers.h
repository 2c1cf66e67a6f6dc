/* SPDX-License-Identifier: GPL-2.0 */
/*
 * flightrec's marker library for AF_XDP programs: one header, no library to
 * link. It writes the lines of docs/markers.md to a tracefs instance's
 * trace_marker (one write() per line, hex by hand: no printf on the hot path),
 * keeps the FILL-order deque and the descriptor state machine, poisons
 * consumed RX slots, and on the first anomaly writes the detection line and
 * stops tracing at once. flightrec's own forwarder (c/forwarder) is built on
 * it.
 *
 *     cc $(flightrec markers --cflags) -c myprog.c
 *
 * Two levels:
 *  - the parts (fr_markers_*, fr_fill_order_*, fr_states_*), as the
 *    forwarder uses them;
 *  - struct fr_sock, one per AF_XDP socket, whose calls do all of it for one
 *    descriptor: fr_fill(), fr_rx(), fr_tx(), fr_comp(), fr_release(), then
 *    fr_flush() before the ring operation (submit or release) makes the
 *    descriptors visible. Each returns 0, or -1 once it has reported an
 *    anomaly (tracing is then off; stop the program).
 *
 * Threads: one fr_sock is used by one thread at a time (the one that owns its
 * rings). Several threads may write markers at once: each line is one
 * write(), which ftrace keeps whole. Register every writer's counts with
 * fr_markers_add_writer() before the threads start, so that a detection
 * waits for the others' writes in flight and its line is the trace's last.
 * The state table is shared by the sockets of one UMEM; a frame is in one
 * ring at a time, so one thread at a time touches its byte.
 *
 * Addresses: the analyzer follows a descriptor by its address, and in
 * aligned mode the kernel gives RX descriptors the frame's address plus
 * XDP_PACKET_HEADROOM (256) and the UMEM's headroom. So put that same address
 * into FILL (the kernel takes the frame it is in): one frame, one address in
 * every line. fr_sock's own checks compare frames (addr / frame_size).
 */
#ifndef FLIGHTREC_XSK_MARKERS_H
#define FLIGHTREC_XSK_MARKERS_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_xdp.h>

/* Written into every consumed RX slot: reading it back from RX means the
 * kernel published a slot it had not written yet. */
#define FR_POISON 0xdeadbeefdeadbeefULL
/* The longest batched line (BATCH_LINE_MAX of flightrec/parse/format.py): under
 * the 1024 bytes a trace_marker write keeps before Linux 6.8. */
#define FR_LINE_MAX 1000
/* Writers fr_markers_detect() waits for. */
#define FR_WRITERS_MAX 256
/* Entries of the FILL-order deque a detection line lists (as the post did). */
#define FR_REMAINING_MAX 100
/* The environment variable `flightrec record --app` sets to the instance folder. */
#define FR_TRACEDIR_ENV "FLIGHTREC_TRACEDIR"

/* ---- the line writer ----------------------------------------------------- */

/* One per writing thread or socket (so no cache line is shared). */
struct fr_marker_counts {
	uint64_t written;
	uint64_t failed;
	int busy; /* inside a write: fr_markers_detect() waits for it */
};

struct fr_markers {
	int marker_fd;     /* DIR/trace_marker, -1 when markers are off */
	int tracing_on_fd; /* DIR/tracing_on */
	int muted;         /* set once an anomaly is being reported */
	int batched;       /* one line per ring operation (docs/markers.md "Batched lines") */
	unsigned nwriters;
	struct fr_marker_counts *writers[FR_WRITERS_MAX];
};

/* One ring operation's lines being gathered by one thread: its transitions
 * (`SOCK q:Q FROM -> TO ADDR ...`) or its notes (`ADDR TEXT; ADDR TEXT`). */
struct fr_marker_batch {
	size_t len;                   /* bytes in line, 0: empty */
	const char *sock, *from, *to; /* the current group of a transition line */
	char line[FR_LINE_MAX + 1];
};

/* Opens DIR/trace_marker and DIR/tracing_on; dir NULL takes $FLIGHTREC_TRACEDIR,
 * and without it leaves markers off (every call then returns at once). Call it
 * before entering another network namespace: `ip netns exec` remounts /sys
 * and hides tracefs. Batched lines by default. Returns 0, or -1 with one line
 * on stderr. */
static inline int fr_markers_open(struct fr_markers *m, const char *dir)
{
	char path[PATH_MAX];

	memset(m, 0, sizeof(*m));
	m->marker_fd = m->tracing_on_fd = -1;
	m->batched = 1;
	if (!dir)
		dir = getenv(FR_TRACEDIR_ENV);
	if (!dir || !*dir)
		return 0;
	snprintf(path, sizeof(path), "%s/trace_marker", dir);
	m->marker_fd = open(path, O_WRONLY | O_CLOEXEC);
	if (m->marker_fd < 0) {
		fprintf(stderr, "markers: cannot open %s: %s; is tracefs mounted "
			"(mount -t tracefs nodev /sys/kernel/tracing) and the instance created?\n",
			path, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/tracing_on", dir);
	m->tracing_on_fd = open(path, O_WRONLY | O_CLOEXEC);
	if (m->tracing_on_fd < 0) {
		fprintf(stderr, "markers: cannot open %s: %s; the trace folder must be a "
			"tracefs instance directory\n", path, strerror(errno));
		close(m->marker_fd);
		m->marker_fd = -1;
		return -1;
	}
	return 0;
}

static inline void fr_markers_close(struct fr_markers *m)
{
	if (m->marker_fd >= 0)
		close(m->marker_fd);
	if (m->tracing_on_fd >= 0)
		close(m->tracing_on_fd);
	m->marker_fd = m->tracing_on_fd = -1;
}

static inline bool fr_markers_enabled(const struct fr_markers *m)
{
	return m->marker_fd >= 0;
}

/* c writes markers from now on; call before the writing threads start.
 * Returns -1 when FR_WRITERS_MAX are registered already. */
static inline int fr_markers_add_writer(struct fr_markers *m, struct fr_marker_counts *c)
{
	if (m->nwriters >= FR_WRITERS_MAX)
		return -1;
	m->writers[m->nwriters++] = c;
	return 0;
}

static inline void fr__write_line(struct fr_markers *m, struct fr_marker_counts *c, const char *buf, size_t len)
{
	if (write(m->marker_fd, buf, len) == (ssize_t)len)
		__atomic_store_n(&c->written, c->written + 1, __ATOMIC_RELAXED);
	else
		__atomic_store_n(&c->failed, c->failed + 1, __ATOMIC_RELAXED);
}

/* A write unless muted; announced first, as fr_markers_detect() expects (Dekker). */
static inline void fr__guarded_write(struct fr_markers *m, struct fr_marker_counts *c, const char *buf,
				     size_t len)
{
	if (m->marker_fd < 0 || !len)
		return;
	__atomic_store_n(&c->busy, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&m->muted, __ATOMIC_SEQ_CST))
		fr__write_line(m, c, buf, len);
	__atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
}

/* "0x" and v in lowercase hex, as printf's 0x%llx; returns the bytes written (at most 18). */
static inline size_t fr_hex(char *out, uint64_t v)
{
	static const char digits[] = "0123456789abcdef";
	int n = 1;

	while (n < 16 && v >> (4 * n))
		n++;
	out[0] = '0';
	out[1] = 'x';
	for (int i = n - 1; i >= 0; i--, v >>= 4)
		out[2 + i] = digits[v & 15];
	return (size_t)n + 2;
}

/* s at out, cut to the room left (names are short; this only keeps a
 * runaway name from overrunning the line). */
static inline size_t fr__put(char *out, size_t room, const char *s)
{
	size_t n = strnlen(s, room);

	memcpy(out, s, n);
	return n;
}

/* " FROM -> TO", or nothing when it does not fit in room */
static inline size_t fr__put_group(char *out, size_t room, const char *from, const char *to)
{
	size_t n = 0;

	if (strlen(from) + strlen(to) + 5 > room)
		return 0;
	out[n++] = ' ';
	n += fr__put(out + n, room - n, from);
	n += fr__put(out + n, room - n, " -> ");
	n += fr__put(out + n, room - n, to);
	return n;
}

/* Writes b's line if it holds one: call before the ring operation it
 * describes makes its descriptors visible. */
static inline void fr_markers_flush(struct fr_markers *m, struct fr_marker_counts *c, struct fr_marker_batch *b)
{
	fr__guarded_write(m, c, b->line, b->len);
	b->len = 0;
}

/* The descriptor addr moves from -> to on socket sock ("outer q:0"; the
 * strings must outlive the batch): one line now, or (batched) a word of b's
 * line, written by fr_markers_flush() or when the line is full. */
static inline void fr_markers_transition(struct fr_markers *m, struct fr_marker_counts *c, struct fr_marker_batch *b,
					 const char *sock, uint64_t addr, const char *from, const char *to)
{
	char word[20];
	size_t wl;

	if (m->marker_fd < 0)
		return;
	if (!m->batched) {
		/* SOCK ADDR FROM -> TO */
		char line[128];
		size_t n = fr__put(line, 64, sock);

		line[n++] = ' ';
		n += fr_hex(line + n, addr);
		n += fr__put_group(line + n, sizeof(line) - n, from, to);
		fr__guarded_write(m, c, line, n);
		return;
	}
	word[0] = ' ';
	wl = 1 + fr_hex(word + 1, addr);
	if (b->len && (b->sock != sock || b->from != from || b->to != to)) {
		/* another group on the same line: " FROM -> TO" (another socket: a new line) */
		if (b->sock != sock || b->len + 2 + strlen(from) + 4 + strlen(to) + wl > FR_LINE_MAX)
			fr_markers_flush(m, c, b);
		else
			b->len += fr__put_group(b->line + b->len, FR_LINE_MAX - b->len, from, to);
	} else if (b->len && b->len + wl > FR_LINE_MAX) {
		fr_markers_flush(m, c, b);
	}
	b->sock = sock;
	b->from = from;
	b->to = to;
	if (!b->len) {
		b->len = fr__put(b->line, 64, sock);
		b->len += fr__put_group(b->line + b->len, FR_LINE_MAX - b->len, from, to);
	}
	memcpy(b->line + b->len, word, wl);
	b->len += wl;
}

/* A note `ADDR TEXT` about addr (text at most 200 bytes, no "; "): one line
 * now, or (batched) a piece of b's line. Use a batch of its own, not the
 * transitions' one. */
static inline void fr_markers_note(struct fr_markers *m, struct fr_marker_counts *c, struct fr_marker_batch *b,
				   uint64_t addr, const char *text, size_t text_len)
{
	char line[FR_LINE_MAX];
	size_t n;

	if (m->marker_fd < 0 || text_len > 200)
		return;
	n = fr_hex(line, addr);
	line[n++] = ' ';
	memcpy(line + n, text, text_len);
	n += text_len;
	if (!m->batched) {
		fr__guarded_write(m, c, line, n);
		return;
	}
	if (b->len && b->len + 2 + n > FR_LINE_MAX)
		fr_markers_flush(m, c, b);
	if (b->len) {
		b->line[b->len++] = ';';
		b->line[b->len++] = ' ';
	}
	memcpy(b->line + b->len, line, n);
	b->len += n;
}

/* Writes "0" to tracing_on; returns 0 on success. */
static inline int fr_markers_stop_tracing(struct fr_markers *m)
{
	if (m->tracing_on_fd < 0)
		return -1;
	return write(m->tracing_on_fd, "0", 1) == 1 ? 0 : -1;
}

/* The detection line: mutes every writer, waits until no registered writer
 * but c is mid-write (so this line is the last marker in the trace), writes
 * line even though muted, then stops tracing at once. c's own batch must be
 * flushed first (the descriptors before the bad one). */
static inline void fr_markers_detect(struct fr_markers *m, struct fr_marker_counts *c, const char *line)
{
	if (m->marker_fd < 0)
		return;
	__atomic_store_n(&m->muted, 1, __ATOMIC_SEQ_CST);
	for (unsigned i = 0; i < m->nwriters; i++)
		while (m->writers[i] != c && __atomic_load_n(&m->writers[i]->busy, __ATOMIC_ACQUIRE))
			sched_yield(); /* the writer may share our CPU */
	fr__write_line(m, c, line, strlen(line));
	fr_markers_stop_tracing(m);
}

/* ---- the FILL-order deque ------------------------------------------------ */

/* Per socket, the addresses in the order they were produced to FILL. In copy
 * mode the kernel consumes FILL in order and produces RX in the same order,
 * so the head is the address the next RX descriptor must carry. Not in
 * zero-copy (docs/markers.md, "Zero-copy"). */
struct fr_fill_order {
	uint64_t *addr;
	uint32_t mask;
	uint32_t head; /* next to pop */
	uint32_t tail; /* next to push */
};

static inline int fr_fill_order_init(struct fr_fill_order *q, uint32_t capacity)
{
	uint32_t size = 1;

	while (size < capacity)
		size <<= 1;
	q->addr = (uint64_t *)calloc(size, sizeof(*q->addr));
	q->mask = size - 1;
	q->head = q->tail = 0;
	return q->addr ? 0 : -1;
}

static inline void fr_fill_order_free(struct fr_fill_order *q)
{
	free(q->addr);
	q->addr = NULL;
}

/* Returns -1 when full (the caller produced more than it owns: a bug). */
static inline int fr_fill_order_push(struct fr_fill_order *q, uint64_t addr)
{
	if (q->tail - q->head > q->mask)
		return -1;
	q->addr[q->tail++ & q->mask] = addr;
	return 0;
}

/* Returns -1 when empty. */
static inline int fr_fill_order_pop(struct fr_fill_order *q, uint64_t *addr)
{
	if (q->head == q->tail)
		return -1;
	*addr = q->addr[q->head++ & q->mask];
	return 0;
}

static inline uint32_t fr_fill_order_len(const struct fr_fill_order *q)
{
	return q->tail - q->head;
}

/* "[hex, hex, ...]" of up to max entries from the head (cut with "..."),
 * as the detection line's `remaining:` wants it. */
static inline void fr_fill_order_format(const struct fr_fill_order *q, unsigned max, char *buf, size_t size)
{
	size_t off = 0;
	uint32_t i, n = fr_fill_order_len(q);
	int w;

	if (size < 8) {
		if (size)
			buf[0] = '\0';
		return;
	}
	buf[off++] = '[';
	for (i = 0; i < n && i < max; i++) {
		/* Keep room for ", ...]" so a cut list still closes. */
		w = snprintf(buf + off, size - off, "%s%llx", i ? ", " : "",
			     (unsigned long long)q->addr[(q->head + i) & q->mask]);
		if (w < 0 || (size_t)w + off + 8 > size)
			break;
		off += (size_t)w;
	}
	if (i < n)
		off += (size_t)snprintf(buf + off, size - off, "%s...", i ? ", " : "");
	snprintf(buf + off, size - off, "]");
}

/* ---- the descriptor state machine --------------------------------------- */

/* Where the application believes each UMEM frame is (docs/markers.md). */
enum fr_state { FR_FREE, FR_FILL, FR_RX, FR_TX, FR_COMP, FR_STATES };

/* One byte per frame; calloc: every frame starts FREE. */
struct fr_states {
	uint8_t *st;
	uint32_t frames;
};

static inline int fr_states_init(struct fr_states *t, uint32_t frames)
{
	t->st = (uint8_t *)calloc(frames, 1);
	t->frames = frames;
	return t->st ? 0 : -1;
}

static inline void fr_states_free(struct fr_states *t)
{
	free(t->st);
	t->st = NULL;
}

static inline const char *fr_state_name(enum fr_state s)
{
	static const char *const names[FR_STATES] = { "FREE", "FILL", "RX", "TX", "COMP" };

	return (unsigned)s < FR_STATES ? names[s] : "?";
}

static inline bool fr_transition_valid(enum fr_state from, enum fr_state to)
{
	/* valid[from]: a bit mask of the states reachable from it */
	static const uint8_t valid[FR_STATES] = {
		[FR_FREE] = 1u << FR_FILL | 1u << FR_TX,
		[FR_FILL] = 1u << FR_RX,
		[FR_RX] = 1u << FR_TX | 1u << FR_FILL | 1u << FR_FREE,
		[FR_TX] = 1u << FR_COMP,
		[FR_COMP] = 1u << FR_FILL | 1u << FR_TX | 1u << FR_FREE,
	};

	return (unsigned)from < FR_STATES && (unsigned)to < FR_STATES && (valid[from] >> to & 1u);
}

/* Moves frame from FROM to TO. Returns true when the frame was in FROM and the
 * transition is valid; otherwise leaves the state alone, stores the state the
 * frame was really in into *was (FR_STATES: no such frame) and returns false. */
static inline bool fr_states_move(struct fr_states *t, uint32_t frame, enum fr_state from, enum fr_state to,
				  enum fr_state *was)
{
	enum fr_state cur;

	if (frame >= t->frames) {
		*was = FR_STATES;
		return false;
	}
	cur = (enum fr_state)t->st[frame];
	if (cur != from || !fr_transition_valid(from, to)) {
		*was = cur;
		return false;
	}
	__atomic_store_n(&t->st[frame], (uint8_t)to, __ATOMIC_RELEASE);
	return true;
}

/* The frame's state as another thread left it (FR_STATES: no such frame). */
static inline enum fr_state fr_states_peek(const struct fr_states *t, uint32_t frame)
{
	return frame < t->frames ? (enum fr_state)__atomic_load_n(&t->st[frame], __ATOMIC_ACQUIRE) : FR_STATES;
}

/* ---- one socket, all of it ---------------------------------------------- */

struct fr_sock {
	struct fr_markers *m;
	struct fr_states *states;     /* shared by the UMEM's sockets; NULL: not tracked */
	char name[48];                /* "IFACE q:QUEUE", the SOCK of every line */
	uint32_t frame_size;          /* aligned mode's chunk size; 0: unaligned */
	bool ordered;                 /* FILL order checked: copy mode */
	struct fr_fill_order order;
	struct fr_marker_counts counts;
	struct fr_marker_batch batch;
};

/* For the socket bound to iface/queue of a UMEM of frames frames.
 * zerocopy: the mode the socket got (getsockopt XDP_OPTIONS), which turns the
 * FILL-order check off. Registers its writer: call before the threads start.
 * Returns 0, or -1 (out of memory, too many sockets). */
static inline int fr_sock_init(struct fr_sock *s, struct fr_markers *m, struct fr_states *states, const char *iface,
			       unsigned queue, uint32_t frame_size, uint32_t frames, bool zerocopy)
{
	memset(s, 0, sizeof(*s));
	s->m = m;
	s->states = states;
	s->frame_size = frame_size;
	s->ordered = !zerocopy;
	snprintf(s->name, sizeof(s->name), "%.31s q:%u", iface, queue); /* IFNAMSIZ is 16 */
	/* room for every frame: the socket never owns more */
	if (s->ordered && fr_fill_order_init(&s->order, frames))
		return -1;
	return fr_markers_add_writer(m, &s->counts);
}

static inline void fr_sock_free(struct fr_sock *s)
{
	fr_fill_order_free(&s->order);
}

/* The frame an address is in: the chunk in aligned mode, the base address
 * (the low 48 bits) in unaligned mode. */
static inline uint32_t fr_sock_frame(const struct fr_sock *s, uint64_t addr)
{
	uint64_t base = addr & XSK_UNALIGNED_BUF_ADDR_MASK;

	return (uint32_t)(s->frame_size ? base / s->frame_size : base);
}

/* Writes this ring operation's lines: before xsk_ring_prod__submit() (FILL,
 * TX) or xsk_ring_cons__release() (RX, COMPLETION). */
static inline void fr_flush(struct fr_sock *s)
{
	fr_markers_flush(s->m, &s->counts, &s->batch);
}

/* Flushes what came before, writes `SOCK ADDR FROM -> TO: what` and stops tracing. */
static inline int fr_sock_detect(struct fr_sock *s, uint64_t addr, enum fr_state from, enum fr_state to,
				 const char *what)
{
	char line[2200];

	fr_flush(s);
	snprintf(line, sizeof(line), "%s 0x%llx %s -> %s: %s", s->name, (unsigned long long)addr,
		 fr_state_name(from), fr_state_name(to), what);
	fr_markers_detect(s->m, &s->counts, line);
	return -1;
}

/* from -> to of addr, checked against the state table, then marked. */
static inline int fr_move(struct fr_sock *s, uint64_t addr, enum fr_state from, enum fr_state to)
{
	enum fr_state was;
	char what[32];

	if (s->states && !fr_states_move(s->states, fr_sock_frame(s, addr), from, to, &was)) {
		snprintf(what, sizeof(what), "invalid, was %s", fr_state_name(was));
		return fr_sock_detect(s, addr, from, to, what);
	}
	if (fr_markers_enabled(s->m))
		fr_markers_transition(s->m, &s->counts, &s->batch, s->name, addr, fr_state_name(from),
				      fr_state_name(to));
	return 0;
}

/* addr goes into this socket's FILL ring, coming from FREE, RX or COMP. */
static inline int fr_fill(struct fr_sock *s, uint64_t addr, enum fr_state from)
{
	if (fr_move(s, addr, from, FR_FILL))
		return -1;
	if (s->ordered)
		fr_fill_order_push(&s->order, addr); /* room for every frame: cannot fail */
	return 0;
}

/* addr was read from this socket's RX ring: the poison, FILL order (copy
 * mode), then FILL -> RX. Poison the slot (fr_poison) after reading it. */
static inline int fr_rx(struct fr_sock *s, uint64_t addr)
{
	char what[2048];
	uint64_t exp = 0;
	size_t n;

	if (!s->ordered) {
		if (addr == FR_POISON)
			return fr_sock_detect(s, addr, FR_FILL, FR_RX, "poison");
	} else if (fr_fill_order_pop(&s->order, &exp) < 0 || fr_sock_frame(s, addr) != fr_sock_frame(s, exp) ||
		   addr == FR_POISON) {
		n = (size_t)snprintf(what, sizeof(what), "expected 0x%llx remaining: ", (unsigned long long)exp);
		fr_fill_order_format(&s->order, FR_REMAINING_MAX, what + n, sizeof(what) - n);
		return fr_sock_detect(s, addr, FR_FILL, FR_RX, what);
	}
	return fr_move(s, addr, FR_FILL, FR_RX);
}

/* The RX slot just read: the poison goes in, so a slot the kernel publishes
 * again without writing it reads back as FR_POISON. */
static inline void fr_poison(struct xdp_desc *d)
{
	d->addr = FR_POISON;
}

/* addr goes into this socket's TX ring, coming from RX, COMP or FREE. */
static inline int fr_tx(struct fr_sock *s, uint64_t addr, enum fr_state from)
{
	return fr_move(s, addr, from, FR_TX);
}

/* addr was read from this socket's COMPLETION ring. */
static inline int fr_comp(struct fr_sock *s, uint64_t addr)
{
	return fr_move(s, addr, FR_TX, FR_COMP);
}

/* The application keeps addr (out of every ring), coming from RX or COMP. */
static inline int fr_release(struct fr_sock *s, uint64_t addr, enum fr_state from)
{
	return fr_move(s, addr, from, FR_FREE);
}

#endif
