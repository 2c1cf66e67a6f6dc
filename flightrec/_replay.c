// SPDX-License-Identifier: GPL-2.0
/*
 * The replay's walk over the timeline, in C: the twin of the loop in
 * flightrec/model/replay.py, which stays the reference and holds the
 * meaning (its module doc). tests/unit/test_replay_native.py holds the two
 * equal. It knows rows, codes and numbers only: the state and event-kind
 * codes, the poison and the valid transitions come from the caller
 * (flightrec/model/replay_native.py, from flightrec/parse/format.py).
 *
 * Per row it keeps what replay.py keeps: each address's last state, each
 * socket's FILL-order deque, each xs's reserved and unread RX slots, which
 * xs each socket is tied to. It writes out only the rows that are out of the
 * ordinary (the reads and transitions replay.py makes an RxRead or a
 * BadTransition of). Whether a read out of slot order may still be paired
 * with the next reserved slot is the one question it cannot answer itself:
 * it asks the caller's `align` callback, which weighs the trace's history.
 *
 * Built by `make` as flightrec/_replay.so.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PENDING (1 << 16) /* replay.py's */
#define REM 8		      /* deque entries kept with a FILL-order mismatch */

/* --- a map from (k1, k2) to an int64, open addressing, no removal ---------------- */

struct map {
	uint64_t *k1, *k2;
	int64_t *val;
	uint8_t *used;
	uint64_t size, count;
};

/* splitmix64's finalizer over both keys: frame addresses share their low bits */
static uint64_t mix(uint64_t a, uint64_t b)
{
	uint64_t h = a ^ (b * 0x9E3779B97F4A7C15ULL);

	h ^= h >> 30;
	h *= 0xBF58476D1CE4E5B9ULL;
	h ^= h >> 27;
	h *= 0x94D049BB133111EBULL;
	return h ^ (h >> 31);
}

static int map_init(struct map *m, uint64_t size)
{
	m->size = size;
	m->count = 0;
	m->k1 = calloc(size, sizeof(*m->k1));
	m->k2 = calloc(size, sizeof(*m->k2));
	m->val = calloc(size, sizeof(*m->val));
	m->used = calloc(size, 1);
	return m->k1 && m->k2 && m->val && m->used ? 0 : -1;
}

static void map_free(struct map *m)
{
	free(m->k1);
	free(m->k2);
	free(m->val);
	free(m->used);
	memset(m, 0, sizeof(*m));
}

static int64_t *map_find(const struct map *m, uint64_t a, uint64_t b)
{
	for (uint64_t s = mix(a, b) & (m->size - 1);; s = (s + 1) & (m->size - 1)) {
		if (!m->used[s])
			return NULL;
		if (m->k1[s] == a && m->k2[s] == b)
			return &m->val[s];
	}
}

/* The value of (a, b), inserted as `dflt` when absent; NULL when out of memory. */
static int64_t *map_get(struct map *m, uint64_t a, uint64_t b, int64_t dflt)
{
	uint64_t s;

	if ((m->count + 1) * 2 > m->size) {
		struct map bigger;

		if (map_init(&bigger, m->size * 2))
			return NULL;
		for (uint64_t i = 0; i < m->size; i++)
			if (m->used[i])
				*map_get(&bigger, m->k1[i], m->k2[i], 0) = m->val[i];
		map_free(m);
		*m = bigger;
	}
	for (s = mix(a, b) & (m->size - 1);; s = (s + 1) & (m->size - 1)) {
		if (!m->used[s])
			break;
		if (m->k1[s] == a && m->k2[s] == b)
			return &m->val[s];
	}
	m->used[s] = 1;
	m->k1[s] = a;
	m->k2[s] = b;
	m->val[s] = dflt;
	m->count++;
	return &m->val[s];
}

static int64_t map_value(const struct map *m, uint64_t a, uint64_t b, int64_t dflt)
{
	const int64_t *v = map_find(m, a, b);

	return v ? *v : dflt;
}

/* --- a ring of int64 pairs, oldest first ----------------------------------------- */

struct ring {
	int64_t *a, *b;
	int64_t head, len, cap;
};

static int ring_push(struct ring *r, int64_t a, int64_t b)
{
	if (r->len == r->cap) {
		int64_t cap = r->cap ? r->cap * 2 : 64;
		int64_t *na = malloc(cap * sizeof(*na)), *nb = malloc(cap * sizeof(*nb));

		if (!na || !nb) {
			free(na);
			free(nb);
			return -1;
		}
		for (int64_t i = 0; i < r->len; i++) {
			na[i] = r->a[(r->head + i) % r->cap];
			nb[i] = r->b[(r->head + i) % r->cap];
		}
		free(r->a);
		free(r->b);
		r->a = na;
		r->b = nb;
		r->head = 0;
		r->cap = cap;
	}
	r->a[(r->head + r->len) % r->cap] = a;
	r->b[(r->head + r->len) % r->cap] = b;
	r->len++;
	return 0;
}

static int64_t ring_a(const struct ring *r, int64_t i)
{
	return r->a[(r->head + i) % r->cap];
}

static int64_t ring_b(const struct ring *r, int64_t i)
{
	return r->b[(r->head + i) % r->cap];
}

static void ring_drop_first(struct ring *r)
{
	r->head = (r->head + 1) % r->cap;
	r->len--;
}

/* Remove entry i, keeping the order of the others. */
static void ring_remove(struct ring *r, int64_t i)
{
	for (int64_t j = i; j + 1 < r->len; j++) {
		r->a[(r->head + j) % r->cap] = ring_a(r, j + 1);
		r->b[(r->head + j) % r->cap] = ring_b(r, j + 1);
	}
	r->len--;
}

static void ring_free(struct ring *r)
{
	free(r->a);
	free(r->b);
	memset(r, 0, sizeof(*r));
}

/* --- the walk ------------------------------------------------------------------------ */

struct fr_codes {
	int8_t marker, reserve;
	int8_t fill, rx; /* state codes */
	int32_t nstates;
	const uint8_t *valid; /* valid[to * (nstates + 1) + frm + 1]: frm may come before to (frm -1: none) */
	uint64_t poison;
};

struct fr_rows {
	int64_t n;
	const int8_t *kind;
	const uint64_t *addr;
	const uint64_t *xs;
	const int32_t *sock; /* 0 .. nsocks - 1 on every marker row */
	const int8_t *frm, *to;
	const uint8_t *det; /* 1: the row has a detection */
	const double *ts;
	int32_t nsocks;
	const uint8_t *unordered; /* per socket: its FILL order is not checked */
	double states_from;
	int64_t nloss;
	const double *loss_after, *loss_before; /* sorted by after */
};

/* An RX read out of the ordinary; -1 where replay.py has None. */
struct fr_read {
	int64_t row;
	int8_t state_before;
	uint8_t mismatch, slot_mismatch, has_expected, matched_link;
	int64_t state_row;
	uint64_t expected;
	int64_t expected_row;
	int64_t xs; /* the xs index (fr_out.xs_values) */
	int64_t slot_row;
	int64_t link_read, link_slot, prev_read; /* the Link: reads_between = prev_read != link_read */
	int64_t skipped;
	int64_t alignment_row; /* the read whose alignment claims are this read's */
	int32_t nrem;
	uint64_t rem[REM];
};

struct fr_bad {
	int64_t row, state_row;
	int8_t state_before, claimed;
};

struct fr_out {
	struct fr_read *reads;
	int64_t reads_cap, nreads;
	struct fr_bad *bad;
	int64_t bad_cap, nbad;
	int64_t *tie_read, *tie_reserve; /* per socket, -1: not tied */
	int64_t *sock_xs;		 /* per socket: xs index, -1: none */
	uint64_t *xs_values;		 /* per xs index */
	int64_t xs_cap, nxs;
};

/*
 * Whether the read at `row` of socket `sock` came from the slot reserved at
 * `slot_row`: replay.py's slot_alignment, all claims holding. The link is the
 * socket's last paired read (link_read -1: none). The caller keeps the
 * claims, by `row`.
 */
typedef int (*fr_align_fn)(int32_t sock, int64_t row, int64_t slot_row, int64_t link_read, int64_t link_slot,
			   int32_t link_matched, int64_t prev_read);

struct xsst {
	struct ring pend; /* a: reserve row; b: unused */
	int64_t sock;	  /* tied to, -1: none */
	uint8_t aligned, has_last, last_matched;
	int64_t broken; /* the read whose claims failed to align it, -1: none */
	int64_t last_read, last_slot;
};

struct walk {
	const struct fr_rows *in;
	const struct fr_codes *c;
	struct fr_out *out;
	struct map state;     /* addr -> row * 16 + state code */
	struct map fill_count; /* (sock, addr) -> count */
	struct map pcount;     /* (xs index, addr) -> pending count */
	struct map latest;     /* (xs index, addr) -> row of its latest pending reserve, -1: none */
	struct map xs_index;   /* xs value -> index */
	struct map newest;     /* addr -> the latest reserve of it on an xs then untied, -1: none pending */
	struct ring *fill;     /* per socket: (addr, row) */
	uint8_t *fill_started;
	int64_t *last_read; /* per socket, -1: none */
	struct xsst *xs;
};

static int64_t xs_of(struct walk *w, uint64_t value)
{
	struct fr_out *o = w->out;
	int64_t *idx = map_get(&w->xs_index, value, 0, -1);

	if (!idx)
		return -1;
	if (*idx >= 0)
		return *idx;
	if (o->nxs == o->xs_cap) {
		int64_t cap = o->xs_cap ? o->xs_cap * 2 : 16;
		uint64_t *nv = realloc(o->xs_values, cap * sizeof(*nv));
		struct xsst *ns = nv ? realloc(w->xs, cap * sizeof(*ns)) : NULL;

		if (nv)
			o->xs_values = nv;
		if (!ns)
			return -1;
		w->xs = ns;
		o->xs_cap = cap;
	}
	memset(&w->xs[o->nxs], 0, sizeof(w->xs[o->nxs]));
	w->xs[o->nxs].sock = -1;
	w->xs[o->nxs].broken = -1;
	o->xs_values[o->nxs] = value;
	*idx = o->nxs;
	return o->nxs++;
}

/* Pop the oldest pending reserve of xs x: its row. */
static int64_t pend_pop(struct walk *w, int64_t x)
{
	struct ring *p = &w->xs[x].pend;
	int64_t r = ring_a(p, 0);
	uint64_t a = w->in->addr[r];
	int64_t *latest = map_find(&w->latest, x, a), *count = map_find(&w->pcount, x, a);

	/* both were inserted with the reserve, and nothing is ever removed */
	ring_drop_first(p);
	if (count)
		(*count)--;
	if (latest && *latest == r)
		*latest = -1;
	return r;
}

/*
 * Pop up to and including the latest pending reserve of `a` (replay.py's
 * take_latest): its row; *skipped counts the older slots popped before it.
 */
static int64_t take_latest(struct walk *w, int64_t x, uint64_t a, int64_t *skipped)
{
	int64_t target = map_value(&w->latest, x, a, -1), r;

	while ((r = pend_pop(w, x)) != target)
		(*skipped)++;
	return r;
}

/* The socket's last paired read: its row, the reserve whose slot it read, whether by address. */
static void set_last(struct xsst *xt, int64_t read, int64_t slot, int matched)
{
	xt->has_last = 1;
	xt->last_read = read;
	xt->last_slot = slot;
	xt->last_matched = (uint8_t)matched;
}

static int pend_has(struct walk *w, int64_t x, uint64_t a)
{
	return map_value(&w->pcount, x, a, 0) > 0;
}

/* Whether reserve row r of `a` is pending on an xs tied to no socket. */
static int untied_pending(struct walk *w, int64_t r, uint64_t a)
{
	const int64_t *x = map_find(&w->xs_index, w->in->xs[r], 0);

	return x && w->xs[*x].sock < 0 && map_value(&w->latest, *x, a, -1) == r;
}

/*
 * replay.py's _learn_socket: the untied xs that reserved `a` last, or -1.
 * `newest` answers most reads of a socket not yet tied at once: a reserve of
 * `a` on an untied xs is the latest of all while it stays pending and its xs
 * untied; otherwise every untied xs is asked, as replay.py asks.
 */
static int64_t learn_socket(struct walk *w, uint64_t a, int32_t s, int64_t *reserve_row)
{
	int64_t best = -1, best_row = -1;
	int64_t *newest = map_get(&w->newest, a, 0, -1);

	if (!newest || *newest < 0)
		return -1;
	if (untied_pending(w, *newest, a)) {
		best_row = *newest;
		best = *map_find(&w->xs_index, w->in->xs[best_row], 0);
	} else {
		for (int64_t x = 0; x < w->out->nxs; x++) {
			int64_t r;

			if (w->xs[x].sock >= 0)
				continue;
			r = map_value(&w->latest, x, a, -1);
			if (r >= 0 && r > best_row) {
				best = x;
				best_row = r;
			}
		}
		*newest = best_row;
	}
	if (best >= 0) {
		w->out->sock_xs[s] = best;
		w->xs[best].sock = s;
		*reserve_row = best_row;
	}
	return best;
}

/*
 * Room for one more element in *arr (n used of *cap, each size bytes), doubling
 * from first: the out arrays grow here, as xs_values does, so one walk finds
 * however many rows. Returns -1 when out of memory.
 */
static int room_for_one(void **arr, int64_t n, int64_t *cap, size_t size, int64_t first)
{
	if (n == *cap) {
		int64_t c = *cap ? *cap * 2 : first;
		void *grown = realloc(*arr, c * size);

		if (!grown)
			return -1;
		*arr = grown;
		*cap = c;
	}
	return 0;
}

static int add_read(struct fr_out *o, const struct fr_read *rd)
{
	if (room_for_one((void **)&o->reads, o->nreads, &o->reads_cap, sizeof(*o->reads), 256))
		return -1;
	o->reads[o->nreads++] = *rd;
	return 0;
}

static int add_bad(struct fr_out *o, int64_t row, int8_t before, int64_t state_row, int8_t claimed)
{
	if (room_for_one((void **)&o->bad, o->nbad, &o->bad_cap, sizeof(*o->bad), 64))
		return -1;
	o->bad[o->nbad++] = (struct fr_bad){ row, state_row, before, claimed };
	return 0;
}

/*
 * Walk the rows. Returns 0, -1 when out of memory, -2 when a callback
 * failed. The reads, bad transitions and xs values are in arrays grown here
 * (start them NULL, capacity 0); the caller frees them with fr_replay_free.
 */
int fr_replay(const struct fr_rows *in, const struct fr_codes *c, fr_align_fn align, struct fr_out *out)
{
	struct walk w = { .in = in, .c = c, .out = out };
	int64_t next_loss = 0, ret = -1;
	double deque_from = in->states_from;
	double loss_at = in->nloss ? in->loss_after[0] : __builtin_inf();
	int states_cut = in->states_from > -__builtin_inf();

	out->nreads = out->nbad = out->nxs = 0;
	if (map_init(&w.state, 1024) || map_init(&w.fill_count, 1024) || map_init(&w.pcount, 1024) ||
	    map_init(&w.latest, 1024) || map_init(&w.xs_index, 64) || map_init(&w.newest, 1024))
		goto done;
	w.fill = calloc(in->nsocks + 1, sizeof(*w.fill));
	w.fill_started = calloc(in->nsocks + 1, 1);
	w.last_read = malloc((in->nsocks + 1) * sizeof(*w.last_read));
	if (!w.fill || !w.fill_started || !w.last_read)
		goto done;
	for (int32_t s = 0; s < in->nsocks; s++) {
		w.last_read[s] = -1;
		out->tie_read[s] = out->tie_reserve[s] = -1;
		out->sock_xs[s] = -1;
	}

	for (int64_t i = 0; i < in->n; i++) {
		int8_t k = in->kind[i];

		while (in->ts[i] > loss_at) {
			/* Lost events may have held FILL entries and reads: the deque starts over after them. */
			for (int32_t s = 0; s < in->nsocks; s++) {
				w.fill[s].len = 0;
				w.fill_started[s] = 0;
			}
			map_free(&w.fill_count);
			if (map_init(&w.fill_count, 1024))
				goto done;
			if (in->loss_before[next_loss] > deque_from)
				deque_from = in->loss_before[next_loss];
			next_loss++;
			loss_at = next_loss < in->nloss ? in->loss_after[next_loss] : __builtin_inf();
		}
		if (k == c->marker) {
			uint64_t a = in->addr[i];
			int32_t s = in->sock[i];
			int8_t to = in->to[i];
			int64_t *st = map_get(&w.state, a, 0, -1);
			int64_t prev_row = -1;
			int8_t prev_state = -1;

			if (!st)
				goto done;
			if (*st >= 0) {
				prev_row = *st >> 4;
				prev_state = (int8_t)(*st & 15);
				if (states_cut && in->ts[prev_row] < in->states_from) {
					prev_row = -1;
					prev_state = -1;
				}
			}
			if (to == c->rx) {
				struct fr_read rd = { .row = i, .xs = -1, .slot_row = -1, .link_read = -1, .link_slot = -1,
						      .expected_row = -1, .alignment_row = -1 };
				struct ring *dq = &w.fill[s];
				int64_t x = out->sock_xs[s], lp_read = -1, lp_slot = -1, prev_read;
				int lp_matched = 0;
				int64_t alignment_row = -1;

				/* -- FILL order (the post's deque) -- */
				if (in->ts[i] >= deque_from && !in->unordered[s]) {
					int64_t *count = map_get(&w.fill_count, s, a, 0);

					if (!count)
						goto done;
					if (dq->len && (uint64_t)ring_a(dq, 0) == a) {
						ring_drop_first(dq);
						(*count)--;
						w.fill_started[s] = 1;
					} else if (*count > 0) {
						rd.has_expected = 1;
						rd.expected = ring_a(dq, 0);
						rd.expected_row = ring_b(dq, 0);
						rd.mismatch = 1;
						for (int64_t j = 0; j < dq->len; j++)
							if ((uint64_t)ring_a(dq, j) == a) {
								ring_remove(dq, j);
								break;
							}
						(*count)--;
						w.fill_started[s] = 1;
					} else if (w.fill_started[s]) {
						rd.mismatch = 1;
						if (dq->len) {
							rd.has_expected = 1;
							rd.expected = ring_a(dq, 0);
							rd.expected_row = ring_b(dq, 0);
						}
					}
				}
				/* -- which kernel socket, and which slot -- */
				if (x < 0) {
					int64_t reserve_row;

					x = learn_socket(&w, a, s, &reserve_row);
					if (x >= 0) {
						out->tie_read[s] = i;
						out->tie_reserve[s] = reserve_row;
					}
				}
				if (x >= 0) {
					struct xsst *xt = &w.xs[x];
					struct ring *pq = &xt->pend;

					if (xt->has_last) {
						lp_read = xt->last_read;
						lp_slot = xt->last_slot;
						lp_matched = xt->last_matched;
					}
					if (pq->len && in->addr[ring_a(pq, 0)] == a) {
						rd.slot_row = pend_pop(&w, x);
						xt->aligned = 1;
						xt->broken = -1;
						set_last(xt, i, rd.slot_row, 1);
					} else if (xt->aligned && pq->len) {
						/* The read disagrees with the slot order: ask whether the history shows it. */
						int holds = align(s, i, ring_a(pq, 0), lp_read, lp_slot, lp_matched,
								  w.last_read[s]);

						if (holds < 0) {
							ret = -2;
							goto done;
						}
						alignment_row = i;
						if (holds) {
							rd.slot_row = ring_a(pq, 0);
							rd.slot_mismatch = 1;
							if (pend_has(&w, x, a)) {
								while ((uint64_t)in->addr[pend_pop(&w, x)] != a)
									;
							} else {
								pend_pop(&w, x);
							}
							set_last(xt, i, rd.slot_row, 0);
						} else {
							xt->aligned = 0;
							xt->broken = i;
							if (pend_has(&w, x, a)) {
								rd.slot_row = take_latest(&w, x, a, &rd.skipped);
								xt->aligned = 1;
								set_last(xt, i, rd.slot_row, 1);
							}
						}
					} else if (pend_has(&w, x, a)) {
						/* The first aligned read: older slots were read before it. */
						rd.slot_row = take_latest(&w, x, a, &rd.skipped);
						xt->aligned = 1;
						set_last(xt, i, rd.slot_row, 1);
					} else if (xt->broken >= 0) {
						alignment_row = xt->broken; /* still unaligned since those claims failed */
					}
				}
				prev_read = w.last_read[s];
				w.last_read[s] = i;
				if (rd.mismatch || rd.slot_mismatch || (prev_state >= 0 && prev_state != c->fill) ||
				    in->det[i] || a == c->poison) {
					rd.state_before = prev_state;
					rd.state_row = prev_row;
					rd.xs = x;
					rd.link_read = lp_read;
					rd.link_slot = lp_slot;
					rd.matched_link = (uint8_t)lp_matched;
					rd.prev_read = prev_read;
					rd.alignment_row = alignment_row;
					if (rd.mismatch)
						for (int64_t j = 0; j < dq->len && j < REM; j++)
							rd.rem[rd.nrem++] = ring_a(dq, j);
					if (add_read(out, &rd))
						goto done;
				}
				if (a != c->poison)
					*map_get(&w.state, a, 0, -1) = i * 16 + c->rx;
			} else {
				int8_t frm = in->frm[i];
				const uint8_t *valid = c->valid + (int64_t)to * (c->nstates + 1);

				if (!valid[frm + 1]) {
					if (add_bad(out, i, frm, i, 1)) /* the application's own word: a fact wherever it stands */
						goto done;
				} else if (prev_state >= 0 && !valid[prev_state + 1]) {
					if (add_bad(out, i, prev_state, prev_row, 0))
						goto done;
				}
				if (to == c->fill && in->ts[i] >= deque_from && !in->unordered[s]) {
					int64_t *count = map_get(&w.fill_count, s, a, 0);

					if (!count || ring_push(&w.fill[s], a, i))
						goto done;
					(*count)++;
				}
				*st = i * 16 + to;
			}
		} else if (k == c->reserve) {
			int64_t x = xs_of(&w, in->xs[i]);
			int64_t *count, *latest;
			struct ring *pq;

			if (x < 0)
				goto done;
			pq = &w.xs[x].pend;
			count = map_get(&w.pcount, x, in->addr[i], 0);
			if (!count || ring_push(pq, i, 0))
				goto done;
			(*count)++;
			latest = map_get(&w.latest, x, in->addr[i], -1);
			if (!latest)
				goto done;
			*latest = i;
			if (w.xs[x].sock < 0) {
				int64_t *newest = map_get(&w.newest, in->addr[i], 0, -1);

				if (!newest)
					goto done;
				*newest = i;
			}
			if (pq->len > MAX_PENDING)
				pend_pop(&w, x);
		}
	}
	ret = 0;
done:
	map_free(&w.state);
	map_free(&w.fill_count);
	map_free(&w.pcount);
	map_free(&w.latest);
	map_free(&w.xs_index);
	map_free(&w.newest);
	for (int32_t s = 0; w.fill && s < in->nsocks; s++)
		ring_free(&w.fill[s]);
	for (int64_t x = 0; w.xs && x < out->nxs; x++)
		ring_free(&w.xs[x].pend);
	free(w.fill);
	free(w.fill_started);
	free(w.last_read);
	free(w.xs);
	return (int)ret;
}

/* The caller frees out's reads, bad and xs_values with this (they grow in here). */
void fr_replay_free(struct fr_out *out)
{
	free(out->reads);
	free(out->bad);
	free(out->xs_values);
	out->reads = NULL;
	out->bad = NULL;
	out->xs_values = NULL;
	out->reads_cap = out->nreads = out->bad_cap = out->nbad = out->xs_cap = out->nxs = 0;
}
