/* SPDX-License-Identifier: GPL-2.0 */
/* --flagged PATH: the bytes of every packet the forwarder flags, one JSON
 * object a line, for `flightrec export pcap` to turn into pcapng. JSON lines
 * rather than pcapng from C: one self-describing write() per record, which a
 * crash cannot leave half-parsed in a way that hides the earlier records, and
 * the reason, addresses and lengths stay readable without Wireshark. */
#ifndef FLIGHTREC_FLAGGED_H
#define FLIGHTREC_FLAGGED_H

#include <pthread.h>
#include <stdint.h>

#define FLAGGED_SNAP 2048u /* bytes kept of a flagged packet */

struct flagged {
	int fd; /* -1: off */
	pthread_mutex_t lock;
};

/* Creates (truncates) path. path NULL leaves it off. Returns 0, or -1 with a
 * message on stderr. */
int flagged_open(struct flagged *fl, const char *path);
void flagged_close(struct flagged *fl);

struct flagged_packet {
	const char *sock;   /* "inner q:0" */
	const char *kind;   /* fill_order poison invalid_transition len_mismatch */
	uint64_t addr;      /* the descriptor's address */
	uint32_t len;       /* the descriptor's len, 0 when the ring has none (COMP) */
	uint32_t xdp_len;   /* what the XDP program saw, 0 when unknown */
	const void *data;   /* bytes at addr in the UMEM, NULL when addr is outside it */
	uint32_t caplen;    /* how many of them */
	const char *line;   /* the detection line */
};

/* Appends one record; safe from any thread. Failures are counted in the
 * return value (-1), never fatal: the trace is what matters. */
int flagged_write(struct flagged *fl, const struct flagged_packet *pkt);

#endif
