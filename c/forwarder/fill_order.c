// SPDX-License-Identifier: GPL-2.0
#include <stdio.h>
#include <stdlib.h>
#include "fill_order.h"

int fill_order_init(struct fill_order *q, uint32_t capacity)
{
	uint32_t size = 1;

	while (size < capacity)
		size <<= 1;
	q->addr = calloc(size, sizeof(*q->addr));
	q->mask = size - 1;
	q->head = q->tail = 0;
	return q->addr ? 0 : -1;
}

void fill_order_free(struct fill_order *q)
{
	free(q->addr);
	q->addr = NULL;
}

int fill_order_push(struct fill_order *q, uint64_t addr)
{
	if (q->tail - q->head > q->mask)
		return -1;
	q->addr[q->tail++ & q->mask] = addr;
	return 0;
}

int fill_order_pop(struct fill_order *q, uint64_t *addr)
{
	if (q->head == q->tail)
		return -1;
	*addr = q->addr[q->head++ & q->mask];
	return 0;
}

uint32_t fill_order_len(const struct fill_order *q)
{
	return q->tail - q->head;
}

void fill_order_format(const struct fill_order *q, unsigned max, char *buf, size_t size)
{
	size_t off = 0;
	uint32_t i, n = fill_order_len(q);
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
