/* Shared by xsk_trace.bpf.c and its loader xsk_trace.c. */
#ifndef XSK_TRACE_H
#define XSK_TRACE_H

#define XSK_TRACE_MAX_DEVS 64
#define XSK_TRACE_MAX_PENDING 16 /* sockets one CPU redirects into between two polls */

/* A device whose bound sockets are traced: the inode of its network
 * namespace (stat of /run/netns/NAME) and its ifindex there. */
struct xsk_trace_dev {
	__u32 netns;
	__u32 ifindex;
};

/* The furthest RX producer a flush published for a socket, and where and
 * when: the online race detector compares each later descriptor write with it. */
struct xsk_trace_pub {
	__u64 ns; /* bpf_ktime_get_ns() of the flush line */
	__u32 prod;
	__u32 cpu;
};

#define XSK_TRACE_MAX_SOCKS 1024
#define XSK_TRACE_RACE_AHEAD (1U << 16) /* a producer past a slot by more belongs to an older socket */
#define XSK_TRACE_RACE_NS 1000000000ULL /* the same: a flush older than this */

/* What the race line ends with: the instance's bpf_trace_printk trigger
 * stops tracing on it (flightrec/record/kernel_events.py RACE_GLOB). */
#define XSK_TRACE_RACE_TEXT "published before written"

#endif
