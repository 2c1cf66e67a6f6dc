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

#endif
