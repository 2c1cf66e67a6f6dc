// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "markers.h"

int markers_init(struct markers *m, const char *dir)
{
	char path[PATH_MAX];

	m->marker_fd = -1;
	m->tracing_on_fd = -1;
	m->muted = 0;
	m->batched = 1;
	if (!dir)
		return 0;
	snprintf(path, sizeof(path), "%s/trace_marker", dir);
	m->marker_fd = open(path, O_WRONLY | O_CLOEXEC);
	if (m->marker_fd < 0) {
		fprintf(stderr, "forwarder: cannot open %s: %s; is tracefs mounted "
			"(mount -t tracefs nodev /sys/kernel/tracing) and the instance created?\n",
			path, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/tracing_on", dir);
	m->tracing_on_fd = open(path, O_WRONLY | O_CLOEXEC);
	if (m->tracing_on_fd < 0) {
		fprintf(stderr, "forwarder: cannot open %s: %s; --trace-dir must be a "
			"tracefs instance directory\n", path, strerror(errno));
		close(m->marker_fd);
		m->marker_fd = -1;
		return -1;
	}
	return 0;
}

void markers_free(struct markers *m)
{
	if (m->marker_fd >= 0)
		close(m->marker_fd);
	if (m->tracing_on_fd >= 0)
		close(m->tracing_on_fd);
	m->marker_fd = m->tracing_on_fd = -1;
}

static void write_line(struct markers *m, struct marker_counts *c, const char *buf, size_t len)
{
	if (write(m->marker_fd, buf, len) == (ssize_t)len)
		__atomic_store_n(&c->written, c->written + 1, __ATOMIC_RELAXED);
	else
		__atomic_store_n(&c->failed, c->failed + 1, __ATOMIC_RELAXED);
}

/* write_line() unless muted; announced first, as markers_quiesce() expects (Dekker) */
static void guarded_write(struct markers *m, struct marker_counts *c, const char *buf, size_t len)
{
	if (m->marker_fd < 0 || !len)
		return;
	__atomic_store_n(&c->busy, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&m->muted, __ATOMIC_SEQ_CST))
		write_line(m, c, buf, len);
	__atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
}

size_t markers_hex(char *out, uint64_t v)
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

static size_t put(char *out, const char *s)
{
	size_t n = strlen(s);

	memcpy(out, s, n);
	return n;
}

/* " FROM -> TO" */
static size_t put_group(char *out, const char *from, const char *to)
{
	size_t n = 0;

	out[n++] = ' ';
	n += put(out + n, from);
	n += put(out + n, " -> ");
	n += put(out + n, to);
	return n;
}

void markers_flush(struct markers *m, struct marker_counts *c, struct marker_batch *b)
{
	guarded_write(m, c, b->line, b->len);
	b->len = 0;
}

void markers_transition(struct markers *m, struct marker_counts *c, struct marker_batch *b, const char *sock,
			uint64_t addr, const char *from, const char *to)
{
	char word[20];
	size_t wl;

	if (m->marker_fd < 0)
		return;
	if (!m->batched) {
		/* SOCK ADDR FROM -> TO */
		char line[128];
		size_t n = put(line, sock);

		line[n++] = ' ';
		n += markers_hex(line + n, addr);
		n += put_group(line + n, from, to);
		guarded_write(m, c, line, n);
		return;
	}
	word[0] = ' ';
	wl = 1 + markers_hex(word + 1, addr);
	if (b->len && (b->sock != sock || b->from != from || b->to != to)) {
		/* another group on the same line: " FROM -> TO" (another socket: a new line) */
		if (b->sock != sock || b->len + 2 + strlen(from) + 4 + strlen(to) + wl > MARKER_BATCH_MAX)
			markers_flush(m, c, b);
		else
			b->len += put_group(b->line + b->len, from, to);
	} else if (b->len && b->len + wl > MARKER_BATCH_MAX) {
		markers_flush(m, c, b);
	}
	b->sock = sock;
	b->from = from;
	b->to = to;
	if (!b->len) {
		b->len = put(b->line, sock);
		b->len += put_group(b->line + b->len, from, to);
	}
	memcpy(b->line + b->len, word, wl);
	b->len += wl;
}

void markers_note(struct markers *m, struct marker_counts *c, struct marker_batch *b, uint64_t addr,
		  const char *text, size_t text_len)
{
	char line[MARKER_BATCH_MAX];
	size_t n;

	if (m->marker_fd < 0 || text_len > 200)
		return;
	n = markers_hex(line, addr);
	line[n++] = ' ';
	memcpy(line + n, text, text_len);
	n += text_len;
	if (!m->batched) {
		guarded_write(m, c, line, n);
		return;
	}
	if (b->len && b->len + 2 + n > MARKER_BATCH_MAX)
		markers_flush(m, c, b);
	if (b->len) {
		b->line[b->len++] = ';';
		b->line[b->len++] = ' ';
	}
	memcpy(b->line + b->len, line, n);
	b->len += n;
}

void markers_quiesce(struct markers *m, struct marker_counts *const *counts, unsigned n)
{
	unsigned i;

	__atomic_store_n(&m->muted, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < n; i++)
		while (__atomic_load_n(&counts[i]->busy, __ATOMIC_ACQUIRE))
			sched_yield(); /* the writer may share our CPU */
}

int markers_stop_tracing(struct markers *m)
{
	if (m->tracing_on_fd < 0)
		return -1;
	return write(m->tracing_on_fd, "0", 1) == 1 ? 0 : -1;
}

void markers_detect(struct markers *m, struct marker_counts *c, const char *line)
{
	if (m->marker_fd < 0)
		return;
	write_line(m, c, line, strlen(line));
	markers_stop_tracing(m);
}
