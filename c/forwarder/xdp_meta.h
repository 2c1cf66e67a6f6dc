/* SPDX-License-Identifier: GPL-2.0 */
/* The XDP metadata the program writes just before the packet: shared by
 * xdp_meta.bpf.c (writer) and the forwarder (reader). */
#ifndef FLIGHTREC_XDP_META_H
#define FLIGHTREC_XDP_META_H

#define XDP_META_MAGIC 0x46524543u /* "FREC": tells our metadata from stale bytes */

struct xdp_meta {
	__u32 magic;
	__u32 len; /* data_end - data as the XDP program saw it */
};

#endif
