// SPDX-License-Identifier: GPL-2.0
/* widen: a fault amplifier for the veth/AF_XDP race (docs/veth-race.md).
 *
 * Two kprobe programs busy-wait to make a two-instruction race window wide
 * enough to be hit in seconds instead of never:
 *
 *  widen_flush    at the entry of xsk_flush() (inlined into __xsk_map_flush),
 *                 before it reads xs->rx->cached_prod to publish it: on
 *                 every Nth hit, marks that queue "being flushed" and waits.
 *  widen_reserve  in __xsk_rcv_zc, between xskq_prod_reserve_desc()'s
 *                 cached_prod++ and its descriptor writes: waits only while
 *                 the same queue is being flushed on another CPU.
 *
 * The sites come from the kernel's DWARF (flightrec/probes/widen/sites.py); the
 * loader (widen.c) attaches these programs there. On a kernel with the fix
 * (fa349e396e48) a queue is never reserved in while it is flushed, so
 * widen_reserve never waits and the recording stays clean: the widener
 * amplifies a race, it cannot make one. */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "widen.h"

/* x86-64 struct pt_regs (arch/x86/include/asm/ptrace.h), a kprobe's context. */
struct x86_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct widen_cfg);
} widen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct widen_stats);
} widen_stats SEC(".maps");

/* RX queue being flushed (struct xsk_queue *) -> the flushing CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u32);
} flushing SEC(".maps");

/* The pt_regs slot of a DWARF x86-64 register number (psABI table 3.36). */
static __always_inline __u32 slot_of(__s32 dwarf_reg)
{
	switch (dwarf_reg) {
	case 0: return 10;  /* ax */
	case 1: return 12;  /* dx */
	case 2: return 11;  /* cx */
	case 3: return 5;   /* bx */
	case 4: return 13;  /* si */
	case 5: return 14;  /* di */
	case 6: return 4;   /* bp */
	case 7: return 19;  /* sp */
	case 8: return 9;   /* r8 */
	case 9: return 8;   /* r9 */
	case 10: return 7;  /* r10 */
	case 11: return 6;  /* r11 */
	case 12: return 3;  /* r12 */
	case 13: return 2;  /* r13 */
	case 14: return 1;  /* r14 */
	case 15: return 0;  /* r15 */
	}
	return 255;
}

#define NREGS (sizeof(struct x86_regs) / sizeof(unsigned long))

/* A copy of the registers in a map value: the verifier lets a program index
 * a map value, not its context, with a variable. */
struct regs_copy {
	__u64 r[NREGS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct regs_copy);
} regs_buf SEC(".maps");

static __always_inline int fetch(struct x86_regs *r, const struct widen_fetch *f, __u64 *out)
{
	__u32 zero = 0, slot;
	struct regs_copy *c;
	__u64 v;
	__u32 i;

	if (f->reg < 0 || f->reg > 15)
		return -1;
	c = bpf_map_lookup_elem(&regs_buf, &zero);
	if (!c || bpf_probe_read_kernel(c, sizeof(*c), r))
		return -1;
	slot = slot_of(f->reg);
	if (slot >= NREGS)
		return -1;
	v = c->r[slot];
	for (i = 0; i < WIDEN_MAX_DEREF; i++) {
		__u64 next = 0;

		if (i >= f->nderef)
			break;
		if (bpf_probe_read_kernel(&next, sizeof(next), (void *)(v + (__s64)f->off[i])))
			return -1;
		v = next;
	}
	if (f->size < 8)
		v &= (1ULL << (8 * f->size)) - 1;
	*out = v;
	return 0;
}

struct spin_ctx {
	__u64 until;
};

static long spin_step(__u64 i, void *data)
{
	struct spin_ctx *s = data;

	return bpf_ktime_get_ns() >= s->until; /* 1 stops bpf_loop */
}

/* Busy-wait ns nanoseconds (bpf_loop: the verifier allows no open loop). */
static __always_inline __u64 spin(__u64 ns)
{
	__u64 start = bpf_ktime_get_ns();
	struct spin_ctx s = { .until = start + ns };
	int i;

	for (i = 0; i < 64; i++) {
		if (bpf_ktime_get_ns() >= s.until)
			break;
		bpf_loop(1 << 20, spin_step, &s, 0);
	}
	return bpf_ktime_get_ns() - start;
}

SEC("kprobe")
int widen_flush(struct x86_regs *ctx)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct widen_stats *st = bpf_map_lookup_elem(&widen_stats, &zero);
	struct widen_cfg *cfg = bpf_map_lookup_elem(&widen_cfg, &zero);
	__u64 q, queue, n, took;

	if (!st || !cfg || !cfg->flush_every)
		return 0;
	if (fetch(ctx, &cfg->flush_key, &q) || !q) {
		__sync_fetch_and_add(&st->fetch_errors, 1);
		return 0;
	}
	if (cfg->queue >= 0) {
		if (fetch(ctx, &cfg->flush_queue, &queue)) {
			__sync_fetch_and_add(&st->fetch_errors, 1);
			return 0;
		}
		if (queue != (__u64)cfg->queue)
			return 0;
	}
	n = __sync_fetch_and_add(&st->flush_hits, 1);
	if (n % cfg->flush_every)
		return 0;
	bpf_map_update_elem(&flushing, &q, &cpu, BPF_ANY);
	took = spin(cfg->flush_ns);
	bpf_map_delete_elem(&flushing, &q);
	__sync_fetch_and_add(&st->flush_delays, 1);
	__sync_fetch_and_add(&st->flush_ns, took);
	return 0;
}

SEC("kprobe")
int widen_reserve(struct x86_regs *ctx)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct widen_stats *st = bpf_map_lookup_elem(&widen_stats, &zero);
	struct widen_cfg *cfg = bpf_map_lookup_elem(&widen_cfg, &zero);
	__u32 *flusher;
	__u64 q, took;

	if (!st || !cfg)
		return 0;
	if (fetch(ctx, &cfg->reserve_key, &q) || !q) {
		__sync_fetch_and_add(&st->fetch_errors, 1);
		return 0;
	}
	__sync_fetch_and_add(&st->reserve_hits, 1);
	flusher = bpf_map_lookup_elem(&flushing, &q);
	/* Only a reserve racing a flush of its own queue on another CPU: the
	 * interleaving the fix makes impossible. */
	if (!flusher || *flusher == cpu)
		return 0;
	took = spin(cfg->reserve_ns);
	__sync_fetch_and_add(&st->reserve_delays, 1);
	__sync_fetch_and_add(&st->reserve_ns, took);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
