// SPDX-License-Identifier: GPL-2.0
/*
 * Each descriptor's trips as flow points, in one pass over the timeline: the
 * C twin of flightrec/model/trips.py's flow_points (its numpy walk is the
 * reference; tests/unit/test_trips_native.py holds the two equal).
 *
 * A trip runs from a descriptor's insertion into FILL to its next one, the
 * next insertion closing it and opening the following; a flush joins the trip
 * of every descriptor whose reserve of that xs it is the first flush after,
 * unless the descriptor went back into FILL in between. Trips are numbered
 * by descriptor address, then time; points come out in row order, by trip
 * within a row; a trip of one point is dropped.
 *
 * Built by `make` as flightrec/_trips.so.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* open addressing over 64-bit keys; a slot holds its entry's index + 1 (0: empty) */
struct table {
	uint64_t mask;
	int64_t *slot;
};

/* A table sized for the distinct keys as they come, not for the rows: a table of a slot per
 * row would have a few thousand descriptors touch a page each (16 MiB for a million rows). */
static int table_init(struct table *t)
{
	t->mask = 1023;
	t->slot = calloc(t->mask + 1, sizeof(*t->slot));
	return t->slot ? 0 : -1;
}

static uint64_t hash64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

/* twice the slots, the count entries of keys put in again; -1 when out of memory */
static int table_grow(struct table *t, const uint64_t *keys, int64_t count)
{
	uint64_t mask = t->mask * 2 + 1;
	int64_t *slot = calloc(mask + 1, sizeof(*slot));

	if (!slot)
		return -1;
	for (int64_t e = 0; e < count; e++) {
		uint64_t s = hash64(keys[e]) & mask;

		while (slot[s])
			s = (s + 1) & mask;
		slot[s] = e + 1;
	}
	free(t->slot);
	t->slot = slot;
	t->mask = mask;
	return 0;
}

/* the entry of key k (keys[entry] == k), or a new entry *count appended; -1 when out of memory */
static int64_t table_get(struct table *t, uint64_t *keys, int64_t *count, uint64_t k)
{
	for (uint64_t s = hash64(k) & t->mask;; s = (s + 1) & t->mask) {
		int64_t e = t->slot[s] - 1;

		if (e < 0) {
			keys[*count] = k;
			t->slot[s] = ++*count;
			if ((uint64_t)*count * 2 > t->mask && table_grow(t, keys, *count))
				return -1; /* at most half full: probes stay short */
			return *count - 1;
		}
		if (keys[e] == k)
			return e;
	}
}

struct keyed {
	uint64_t key;
	int64_t index;
};

static int by_key(const void *a, const void *b)
{
	uint64_t x = ((const struct keyed *)a)->key, y = ((const struct keyed *)b)->key;

	return x < y ? -1 : x > y;
}

struct point {
	int64_t trip; /* the descriptor's own trip number until the numbering pass */
	int64_t desc;
	int64_t row;
};

static int by_trip(const void *a, const void *b)
{
	const struct point *p = a, *q = b;

	return p->trip < q->trip ? -1 : p->trip > q->trip;
}

/*
 * Rows 0 .. n-1 in time order. desc_row[i]: row i is an event of the
 * descriptor addr[i]; ins[i]: it puts that descriptor into FILL; reserve[i]:
 * it is a kernel reserve (of xs[i]); flush[i]: a flush of xs[i]. Writes the
 * points into fid (trip number + 1), row and phase (0 starts a flow, 1 steps
 * it, 2 ends it), which hold 2 * (descriptor rows) + (reserve rows) entries.
 * Returns how many, or -1 when out of memory.
 */
int64_t fr_flow_points(int64_t n, const uint64_t *addr, const uint8_t *desc_row, const uint8_t *ins,
		       const uint8_t *reserve, const uint8_t *flush, const uint64_t *xs, int64_t *fid, int64_t *row,
		       int64_t *phase)
{
	int64_t nd = 0, nr = 0, ndesc = 0, nxs = 0, np = 0, ret = -1;
	uint64_t *daddr = NULL, *xkey = NULL;
	struct keyed *order = NULL;
	int64_t *trips = NULL, *base = NULL, *pend_head = NULL, *pend_next = NULL, *pend_desc = NULL;
	int64_t *pend_trip = NULL, *count = NULL, *first = NULL, *last = NULL;
	struct point *pts = NULL;
	struct table dt = { 0 }, xt = { 0 };

	for (int64_t i = 0; i < n; i++) {
		nd += desc_row[i] != 0;
		nr += desc_row[i] && reserve[i];
	}
	daddr = malloc((nd + 1) * sizeof(*daddr));
	trips = calloc(nd + 1, sizeof(*trips)); /* per descriptor: its trips so far */
	xkey = malloc((nr + 1) * sizeof(*xkey));
	pend_head = malloc((nr + 1) * sizeof(*pend_head));
	pend_next = malloc((nr + 1) * sizeof(*pend_next));
	pend_desc = malloc((nr + 1) * sizeof(*pend_desc));
	pend_trip = malloc((nr + 1) * sizeof(*pend_trip));
	pts = malloc((2 * nd + nr + 1) * sizeof(*pts));
	if (!daddr || !trips || !xkey || !pend_head || !pend_next || !pend_desc || !pend_trip || !pts ||
	    table_init(&dt) || table_init(&xt))
		goto out;

	/* the walk: trips per descriptor, and which reserves each flush publishes */
	for (int64_t i = 0, npend = 0; i < n; i++) {
		if (desc_row[i]) {
			int64_t d = table_get(&dt, daddr, &ndesc, addr[i]);

			if (d < 0)
				goto out;

			if (trips[d] == 0) {
				trips[d] = 1; /* its first event opens its first trip */
			} else if (ins[i]) {
				pts[np++] = (struct point){ trips[d] - 1, d, i }; /* closes the trip before */
				trips[d]++;
			}
			pts[np++] = (struct point){ trips[d] - 1, d, i };
			if (reserve[i]) {
				int64_t known = nxs, x = table_get(&xt, xkey, &nxs, xs[i]);

				if (x < 0)
					goto out;

				if (nxs != known)
					pend_head[x] = -1; /* a new xs: nothing pending yet */
				pend_desc[npend] = d;
				pend_trip[npend] = trips[d] - 1;
				pend_next[npend] = pend_head[x];
				pend_head[x] = npend++;
			}
		}
		if (flush[i]) {
			int64_t x = -1;

			for (uint64_t s = hash64(xs[i]) & xt.mask; xt.slot[s]; s = (s + 1) & xt.mask)
				if (xkey[xt.slot[s] - 1] == xs[i]) {
					x = xt.slot[s] - 1;
					break;
				}
			if (x < 0)
				continue;
			for (int64_t e = pend_head[x]; e >= 0; e = pend_next[e])
				if (trips[pend_desc[e]] - 1 == pend_trip[e]) /* not back in FILL since */
					pts[np++] = (struct point){ pend_trip[e], pend_desc[e], i };
			pend_head[x] = -1;
		}
	}

	/* trip numbers: descriptors by address, each one's trips in time order */
	int64_t ntrips = 0;

	order = malloc((ndesc + 1) * sizeof(*order));
	base = malloc((ndesc + 1) * sizeof(*base));
	if (!order || !base)
		goto out;
	for (int64_t d = 0; d < ndesc; d++)
		order[d] = (struct keyed){ daddr[d], d };
	qsort(order, ndesc, sizeof(*order), by_key);
	for (int64_t k = 0; k < ndesc; k++) {
		base[order[k].index] = ntrips;
		ntrips += trips[order[k].index];
	}
	for (int64_t k = 0; k < np; k++)
		pts[k].trip += base[pts[k].desc];

	/* within a row: by trip, each (trip, row) once */
	int64_t w = 0;

	for (int64_t a = 0, b; a < np; a = b) {
		for (b = a + 1; b < np && pts[b].row == pts[a].row; b++)
			;
		if (b - a > 1)
			qsort(pts + a, b - a, sizeof(*pts), by_trip);
		for (int64_t k = a; k < b; k++)
			if (k == a || pts[k].trip != pts[k - 1].trip)
				pts[w++] = pts[k];
	}
	np = w;

	/* a trip's first point starts its flow, its last ends it; a trip of one point draws nothing */
	count = calloc(ntrips + 1, sizeof(*count));
	first = malloc((ntrips + 1) * sizeof(*first));
	last = malloc((ntrips + 1) * sizeof(*last));
	if (!count || !first || !last)
		goto out;
	for (int64_t k = 0; k < np; k++) {
		int64_t t = pts[k].trip;

		if (!count[t]++)
			first[t] = k;
		last[t] = k;
	}
	ret = 0;
	for (int64_t k = 0; k < np; k++) {
		int64_t t = pts[k].trip;

		if (count[t] < 2)
			continue;
		fid[ret] = t + 1;
		row[ret] = pts[k].row;
		phase[ret] = k == first[t] ? 0 : k == last[t] ? 2 : 1;
		ret++;
	}
out:
	free(daddr);
	free(trips);
	free(xkey);
	free(pend_head);
	free(pend_next);
	free(pend_desc);
	free(pend_trip);
	free(pts);
	free(dt.slot);
	free(xt.slot);
	free(order);
	free(base);
	free(count);
	free(first);
	free(last);
	return ret;
}
