/* SPDX-License-Identifier: GPL-2.0 */
/* widen: what the loader (widen.c) and the BPF programs (widen.bpf.c) share. */
#ifndef FLIGHTREC_WIDEN_H
#define FLIGHTREC_WIDEN_H

#include <linux/types.h>

#define WIDEN_MAX_DEREF 4
#define WIDEN_MAX_NS 1000000000ULL /* 1 s: a longer busy-wait would stall the guest */

/* A value to read at a probe site, from the resolver's kprobe fetch argument:
 * "+8(+872(%di)):x16" is reg 5 (DWARF numbering), off {872, 8}, size 2. */
struct widen_fetch {
	__s32 reg;   /* DWARF x86-64 register number, -1: none */
	__u32 nderef;
	__s32 off[WIDEN_MAX_DEREF]; /* innermost first */
	__u32 size;  /* bytes of the final value: 1, 2, 4 or 8 */
	__u32 pad;
};

struct widen_cfg {
	__u64 flush_ns;     /* busy-wait on the flush side ... */
	__u64 flush_every;  /* ... on every Nth hit */
	__u64 reserve_ns;   /* busy-wait on the reserve side, only while its queue is flushed */
	__s64 queue;        /* only flushes of sockets bound to this queue id; -1: any */
	struct widen_fetch flush_key;   /* the RX xsk_queue being flushed */
	struct widen_fetch flush_queue; /* its socket's queue_id (reg -1 when not resolved) */
	struct widen_fetch reserve_key; /* the RX xsk_queue a slot is reserved in */
};

struct widen_stats {
	__u64 flush_hits;
	__u64 flush_delays;
	__u64 flush_ns;
	__u64 reserve_hits;
	__u64 reserve_delays; /* reserves that met a flush of their own queue on another CPU */
	__u64 reserve_ns;
	__u64 fetch_errors;
};

#endif
