/* SPDX-License-Identifier: GPL-2.0 */
/* The forwarder's shared context: one port per AF_XDP socket. */
#ifndef FLIGHTREC_FORWARDER_H
#define FLIGHTREC_FORWARDER_H

#include <pthread.h>
#include <stdint.h>
#include <flightrec/xsk_markers.h>
#include "flagged.h"
#include "handoff.h"
#include "netns.h"
#include "options.h"
#include "umem.h"
#include "xdp_prog.h"

enum side { OUTER, INNER };

struct port_stats {
	uint64_t rx, tx, fill, comp, drops, kicks;
	uint64_t meta_checked; /* RX packets whose XDP metadata was there to compare */
	uint64_t payload_checked; /* RX packets to --payload-port whose stamp was checked */
	struct fr_marker_counts markers;
};

struct port {
	char name[48];          /* "outer q:0": the SOCK q:QUEUE of every marker line */
	enum side side;
	unsigned queue;
	struct xsk_socket *xsk;
	struct port_rings r;
	int fd;
	struct port *peer;      /* the other interface, same queue */
	struct fr_fill_order order;
	/* fwd_in: packets the peer received, to send on our TX.
	 * ret_in: our frames the peer finished sending, back to our FILL. */
	struct handoff fwd_in, ret_in;
	int efd;                /* wakes this port's thread */
	int sleeping;
	/* sent and not yet completed, on this socket's COMPLETION ring (a twin
	 * counts on its primary's: they share the ring) */
	uint32_t tx_outstanding;
	/* --tx-twins: a primary's TX-only twin, bound to the same device and
	 * queue, sharing its FILL and COMPLETION rings; a twin's primary. */
	struct port *twin, *primary;
	uint32_t rx_ops;        /* RX ring operations: every other one goes to the peer's twin */
	struct twin_socket own; /* a twin's socket (fd is its fd too): ours, not libxdp's */
	uint32_t owned;         /* frames this socket receives into */
	struct port_stats st;
	struct fr_marker_batch mb, nb; /* this ring operation's transitions and notes */
	pthread_t thread;
	int thread_started;
	int cpu;
	int zerocopy;           /* XDP_OPTIONS read back after bind: 1, 0, -errno */
	/* XDP_STATISTICS right after an anomaly stopped tracing (stats_ok: read) */
	struct xdp_statistics stats_at_anomaly;
	int stats_ok;
};

struct anomaly {
	int raised;
	char kind[32];          /* fill_order poison invalid_transition len_mismatch ... */
	char sock[48];
	uint64_t addr, expected;
	char from[8], to[8], was[8];
	uint32_t len, xdp_len;
	char line[2048];        /* the detection line as written */
	int tracing_stopped;
};

struct fwd {
	struct options opt;
	struct fr_markers markers;
	struct netns home, ns[2];
	struct xdp_prog prog[2];
	int ifindex[2];
	char driver[2][32];     /* ETHTOOL_GDRVINFO of outer and inner */
	struct umem umem;
	struct fr_states states;
	struct port *ports;     /* [side * queues + queue] */
	unsigned nports;
	struct port *twins;     /* --tx-twins: ports[i]'s twin is twins[i]; else NULL */
	int stop;
	struct anomaly anomaly;
	struct flagged flagged; /* --flagged */
	uint64_t rx_total;      /* for --inject-after */
	int injected;           /* faults committed (flip-payload: up to inject_count) */
	uint32_t flipped[INJECT_COUNT_MAX]; /* flip-payload: the packet numbers corrupted */
	double t_start;
	const char *exit_reason;
};

/* getsockopt(XDP_STATISTICS) of p's socket; -1 when it cannot be read. */
int port_xdp_statistics(const struct port *p, struct xdp_statistics *xs);
/* "zerocopy", "copy", or "unknown" when XDP_OPTIONS could not be read */
const char *port_mode_name(const struct port *p);

#endif
