/* SPDX-License-Identifier: GPL-2.0 */
/* Lock-free single-producer single-consumer ring that hands descriptors from
 * one socket's thread to its peer's: AF_XDP TX and FILL rings have a single
 * producer, so only the owning thread may write them. */
#ifndef FLIGHTREC_HANDOFF_H
#define FLIGHTREC_HANDOFF_H

#include <stdint.h>
#include <stdlib.h>

struct handoff_item {
	uint64_t addr;
	uint32_t len;
};

struct handoff {
	/* producer and consumer indexes on their own cache lines */
	uint32_t prod __attribute__((aligned(64)));
	uint32_t cons __attribute__((aligned(64)));
	uint32_t mask __attribute__((aligned(64)));
	struct handoff_item *items;
};

static inline int handoff_init(struct handoff *h, uint32_t capacity)
{
	uint32_t size = 1;

	while (size < capacity)
		size <<= 1;
	h->prod = h->cons = 0;
	h->mask = size - 1;
	h->items = calloc(size, sizeof(*h->items));
	return h->items ? 0 : -1;
}

static inline void handoff_free(struct handoff *h)
{
	free(h->items);
	h->items = NULL;
}

/* Producer side: free slots, then write items[prod + i], then publish. */
static inline uint32_t handoff_space(const struct handoff *h)
{
	return h->mask + 1 - (h->prod - __atomic_load_n(&h->cons, __ATOMIC_ACQUIRE));
}

static inline struct handoff_item *handoff_slot(struct handoff *h, uint32_t i)
{
	return &h->items[(h->prod + i) & h->mask];
}

static inline void handoff_publish(struct handoff *h, uint32_t n)
{
	__atomic_store_n(&h->prod, h->prod + n, __ATOMIC_RELEASE);
}

/* Consumer side: available items, read items[cons + i], then release. */
static inline uint32_t handoff_avail(const struct handoff *h)
{
	return __atomic_load_n(&h->prod, __ATOMIC_ACQUIRE) - h->cons;
}

static inline const struct handoff_item *handoff_peek(const struct handoff *h, uint32_t i)
{
	return &h->items[(h->cons + i) & h->mask];
}

static inline void handoff_release(struct handoff *h, uint32_t n)
{
	__atomic_store_n(&h->cons, h->cons + n, __ATOMIC_RELEASE);
}

#endif
