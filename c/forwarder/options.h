/* SPDX-License-Identifier: GPL-2.0 */
#ifndef FLIGHTREC_OPTIONS_H
#define FLIGHTREC_OPTIONS_H

#include <stdint.h>

enum inject_kind { INJECT_NONE, INJECT_DOUBLE_FILL, INJECT_FILL_AND_TX, INJECT_SHORT_LEN,
		   INJECT_FLIP_PAYLOAD, INJECT_REUSE_IN_FLIGHT };
#define INJECT_COUNT_MAX 4096
/* --mode: the AF_XDP bind asked for. copy = XDP_COPY, zerocopy = XDP_ZEROCOPY
 * (the bind fails where the driver cannot), auto = neither flag (the kernel
 * tries zero-copy and falls back to copy, xp_assign_dev). */
enum bind_mode { MODE_COPY, MODE_ZEROCOPY, MODE_AUTO };

struct options {
	char outer_ns[256], outer_if[32];
	char inner_ns[256], inner_if[32];
	unsigned queues;
	const char *trace_dir; /* NULL: no markers */
	int per_descriptor;    /* --markers per-descriptor: a line per descriptor, not per ring operation */
	double duration;       /* seconds, 0 = until SIGINT/SIGTERM */
	enum inject_kind inject;
	uint64_t inject_after; /* RX packets (all sockets) before the fault */
	uint32_t inject_count; /* flip-payload: packets to corrupt (default 1) */
	uint16_t payload_port; /* --payload-port: UDP port of stamped traffic, 0 = no check */
	uint32_t frames;       /* UMEM frames */
	uint32_t batch;
	const char *stats_path;
	const char *flagged_path; /* --flagged: bytes of flagged packets, NULL: off */
	char xdp_prog[4096];
	int skb_mode;          /* force generic XDP */
	enum bind_mode mode;   /* --mode */
	int tx_twins;          /* --tx-twins: a second, TX-only socket on every queue */
};

/* Parses argv. Returns 0, 1 after --help (exit 0), -1 on bad input
 * (message printed; exit 2). */
int options_parse(struct options *o, int argc, char **argv);
const char *inject_name(enum inject_kind k);
const char *mode_name(enum bind_mode m);

#endif
