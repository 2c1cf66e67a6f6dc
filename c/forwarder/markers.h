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
	int batched;       /* one line per ring operation (docs/markers.md "Batched lines") */
};

/* The longest batched line: BATCH_LINE_MAX of flightrec/parse/format.py, under
 * the 1024 bytes a trace_marker write keeps before Linux 6.8. */
#define MARKER_BATCH_MAX 1000

/* One ring operation's lines being gathered by one thread: its transitions
 * (`SOCK q:Q FROM -> TO ADDR ...`) or its notes (`ADDR TEXT; ADDR TEXT`). */
struct marker_batch {
	size_t len;                    /* bytes in line, 0: empty */
	const char *sock, *from, *to;  /* the current group of a transition line */
	char line[MARKER_BATCH_MAX + 1];
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

/* The descriptor addr moves from -> to on socket sock ("outer q:0"): one line
 * now, or (batched) a word of b's line, written by markers_flush() or when
 * the line is full. No formatting by printf: hex by hand. */
void markers_transition(struct markers *m, struct marker_counts *c, struct marker_batch *b, const char *sock,
			uint64_t addr, const char *from, const char *to);

/* A note `ADDR TEXT` about addr: one line now, or (batched) a piece of b's line. */
void markers_note(struct markers *m, struct marker_counts *c, struct marker_batch *b, uint64_t addr,
		  const char *text, size_t text_len);

/* Writes b's line if it holds one (before the ring operation it describes
 * makes its descriptors visible). */
void markers_flush(struct markers *m, struct marker_counts *c, struct marker_batch *b);

/* "0x" and v in lowercase hex, as printf's 0x%llx; returns the bytes written (at most 18). */
size_t markers_hex(char *out, uint64_t v);

/* Mutes every writer, then waits until none of counts[0..n) is mid-write, so
 * the detection line written next is the last marker in the trace. */
void markers_quiesce(struct markers *m, struct marker_counts *const *counts, unsigned n);

/* Writes the detection line even when muted, then "0" to tracing_on at once. */
void markers_detect(struct markers *m, struct marker_counts *c, const char *line);

/* Writes "0" to tracing_on; returns 0 on success. */
int markers_stop_tracing(struct markers *m);

#endif
