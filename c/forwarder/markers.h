/* SPDX-License-Identifier: GPL-2.0 */
/* trace_marker writes, one write() per line: ftrace makes one event per
 * write, so two lines in one write would read as one garbled event. */
#ifndef FLIGHTREC_MARKERS_H
#define FLIGHTREC_MARKERS_H

#include <stdbool.h>
#include <stdint.h>

/* One per writing thread (so no cache line is shared). */
struct marker_counts {
	uint64_t written;
	uint64_t failed;
	int busy; /* inside markers_printf: markers_quiesce() waits for it */
};

struct markers {
	int marker_fd;     /* DIR/trace_marker, -1 when markers are off */
	int tracing_on_fd; /* DIR/tracing_on */
	int muted;         /* set once an anomaly is being reported */
};

/* Opens DIR/trace_marker and DIR/tracing_on. Must run before any setns():
 * `ip netns exec` style namespaces remount /sys and hide tracefs. dir NULL
 * leaves markers off. Returns 0, or -1 with a message on stderr. */
int markers_init(struct markers *m, const char *dir);
void markers_free(struct markers *m);

static inline bool markers_enabled(const struct markers *m)
{
	return m->marker_fd >= 0;
}

/* Writes one line (no newline needed). Skipped once muted. A failed write is
 * counted, never fatal: after tracing stops the kernel answers EBADF. */
__attribute__((format(printf, 3, 4)))
void markers_printf(struct markers *m, struct marker_counts *c, const char *fmt, ...);

/* Mutes every writer, then waits until none of counts[0..n) is mid-write, so
 * the detection line written next is the last marker in the trace. */
void markers_quiesce(struct markers *m, struct marker_counts *const *counts, unsigned n);

/* Writes the detection line even when muted, then "0" to tracing_on at once. */
void markers_detect(struct markers *m, struct marker_counts *c, const char *line);

/* Writes "0" to tracing_on; returns 0 on success. */
int markers_stop_tracing(struct markers *m);

#endif
