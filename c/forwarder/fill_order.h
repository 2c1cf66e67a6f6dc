/* SPDX-License-Identifier: GPL-2.0 */
/* Per-socket deque of the addresses in the order they were produced to FILL.
 * The kernel consumes FILL in order and produces RX in the same order, so the
 * head of this deque is the address the next RX descriptor must carry. */
#ifndef FLIGHTREC_FILL_ORDER_H
#define FLIGHTREC_FILL_ORDER_H

#include <stddef.h>
#include <stdint.h>

struct fill_order {
	uint64_t *addr;
	uint32_t mask;
	uint32_t head; /* next to pop */
	uint32_t tail; /* next to push */
};

int fill_order_init(struct fill_order *q, uint32_t capacity);
void fill_order_free(struct fill_order *q);
/* Returns -1 when full (the caller produced more than it owns: a bug). */
int fill_order_push(struct fill_order *q, uint64_t addr);
/* Returns -1 when empty. */
int fill_order_pop(struct fill_order *q, uint64_t *addr);
uint32_t fill_order_len(const struct fill_order *q);
/* Writes "[hex, hex, ...]" of up to max entries from the head into buf. */
void fill_order_format(const struct fill_order *q, unsigned max, char *buf, size_t size);

#endif
