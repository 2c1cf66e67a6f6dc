// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "markers.h"

/* Longest line we write; the kernel cuts trace_marker writes at
 * TRACE_MARKER_MAX_SIZE (4096 in kernel/trace/trace.h). */
#define MARKER_LINE_MAX 2048

int markers_init(struct markers *m, const char *dir)
{
	char path[PATH_MAX];

	m->marker_fd = -1;
	m->tracing_on_fd = -1;
	m->muted = 0;
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

void markers_printf(struct markers *m, struct marker_counts *c, const char *fmt, ...)
{
	char buf[MARKER_LINE_MAX];
	va_list ap;
	int n;

	if (m->marker_fd < 0)
		return;
	/* Dekker with markers_quiesce(): announce, then look at muted */
	__atomic_store_n(&c->busy, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&m->muted, __ATOMIC_SEQ_CST)) {
		va_start(ap, fmt);
		n = vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
		if (n >= 0)
			write_line(m, c, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	}
	__atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
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
