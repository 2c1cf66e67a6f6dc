/* SPDX-License-Identifier: GPL-2.0 */
/* Self-verifying payloads: every UDP payload of flightrec's stamped traffic
 * says what it must contain, so any party on the path (the forwarder before
 * it forwards a frame, the receiver after the kernel delivered it) can tell a
 * corrupt packet, and whose data it holds instead.
 *
 * Layout, little-endian 32-bit words (the kernel's AF_XDP selftests stamp
 * each word with the packet number and the word's index; so do we, after a
 * header that carries the number and the length in full):
 *
 *   word 0        STAMP_MAGIC
 *   word 1        the packet number PKT (per sender: counter * flows + flow)
 *   word 2        the payload length in bytes
 *   word i >= 3   (PKT << 12) | (i & 0xfff)
 *   a tail of len % 4 bytes: the first bytes of word len / 4's stamp
 *
 * Every byte is covered, so a single flipped bit is seen. A word that holds
 * another packet's stamp names that packet (its low 20 bits, resolved to the
 * packet number nearest the expected one). */
#ifndef FLIGHTREC_STAMP_H
#define FLIGHTREC_STAMP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define STAMP_MAGIC 0x50524c46u /* "FLRP" */
#define STAMP_HDR_LEN 12u
#define STAMP_MIN_LEN 16u
#define STAMP_MAX_LEN (4095u * 4) /* word indexes fit 12 bits */
#define STAMP_IDX_BITS 12
#define STAMP_PKT_MASK 0xfffffu   /* packet number bits in a body word */
#define STAMP_UNKNOWN (-1LL)

static inline uint32_t stamp_word(uint32_t pkt, uint32_t i)
{
	return (pkt << STAMP_IDX_BITS) | (i & ((1u << STAMP_IDX_BITS) - 1));
}

static inline uint32_t stamp_load(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v)); /* payloads sit at odd offsets in a frame */
	return v;
}

/* Writes the stamp of packet pkt into buf[0..len), len >= STAMP_MIN_LEN. */
static inline void stamp_fill(uint8_t *buf, uint32_t len, uint32_t pkt)
{
	uint32_t n = len / 4, i, w;
	uint32_t hdr[3] = { STAMP_MAGIC, pkt, len };

	memcpy(buf, hdr, sizeof(hdr));
	for (i = 3; i < n; i++) {
		w = stamp_word(pkt, i);
		memcpy(buf + 4 * i, &w, 4);
	}
	w = stamp_word(pkt, n);
	memcpy(buf + 4 * n, &w, len % 4);
}

/* What a check found: the packet the header claims (STAMP_UNKNOWN when the
 * header is unreadable), the packet whose data sits at byte `at` of the
 * payload (STAMP_UNKNOWN when those bytes are no packet's stamp), the length
 * the payload has and the one it was stamped with. */
struct stamp_bad {
	long long expected;
	long long found;
	uint32_t at;
	uint32_t len;
	long long stamped;
};

/* The packet number whose low bits are `low`, nearest to `near`. */
static inline long long stamp_resolve(uint32_t near, uint32_t low)
{
	int32_t d = (int32_t)(((low - near) & STAMP_PKT_MASK) << STAMP_IDX_BITS) >> STAMP_IDX_BITS;

	return (long long)(uint32_t)(near + (uint32_t)d);
}

/* Word i decodes to a packet only if it carries index i and its neighbour
 * agrees: one flipped byte makes one word look like another packet's. */
static inline long long stamp_owner(const uint8_t *p, uint32_t n, uint32_t i, uint32_t near)
{
	uint32_t mask = (1u << STAMP_IDX_BITS) - 1, j = i + 1 < n ? i + 1 : i - 1;
	uint32_t w = stamp_load(p + 4 * i), v;

	if (i < 3 || j < 3 || (w & mask) != (i & mask))
		return STAMP_UNKNOWN;
	v = stamp_load(p + 4 * j);
	if ((v & mask) != (j & mask) || (v >> STAMP_IDX_BITS) != (w >> STAMP_IDX_BITS))
		return STAMP_UNKNOWN;
	return stamp_resolve(near, w >> STAMP_IDX_BITS);
}

static inline uint32_t stamp_first_diff(uint32_t got, uint32_t want)
{
	uint32_t x = got ^ want, b = 0;

	while (b < 3 && !(x & 0xffu)) {
		x >>= 8;
		b++;
	}
	return b;
}

/* Checks payload p of len bytes. True when it is intact; otherwise fills bad. */
static inline bool stamp_check(const uint8_t *p, uint32_t len, struct stamp_bad *bad)
{
	uint32_t n = len / 4, i, pkt, acc = 0, w;

	bad->len = len;
	bad->expected = bad->found = bad->stamped = STAMP_UNKNOWN;
	if (len < STAMP_MIN_LEN) {
		bad->at = 0;
		return false;
	}
	pkt = stamp_load(p + 4);
	if (stamp_load(p) != STAMP_MAGIC) {
		bad->at = stamp_first_diff(stamp_load(p), STAMP_MAGIC);
		bad->found = stamp_owner(p, n, 3, pkt);
		return false;
	}
	bad->expected = pkt;
	bad->stamped = stamp_load(p + 8);
	if (bad->stamped != len) {
		/* the first byte that is not what was stamped: missing or extra */
		bad->at = bad->stamped < len ? (uint32_t)bad->stamped : len;
		bad->found = stamp_owner(p, n, 3, pkt);
		return false;
	}
	/* fast path: one pass the compiler vectorizes, the search only on a miss */
	for (i = 3; i < n; i++)
		acc |= stamp_load(p + 4 * i) ^ stamp_word(pkt, i);
	if (len % 4) {
		w = 0;
		memcpy(&w, p + 4 * n, len % 4);
		acc |= w ^ (stamp_word(pkt, n) & (0xffffffffu >> (8 * (4 - len % 4))));
	}
	if (!acc)
		return true;
	for (i = 3; i < n; i++) {
		w = stamp_load(p + 4 * i);
		if (w != stamp_word(pkt, i)) {
			bad->at = 4 * i + stamp_first_diff(w, stamp_word(pkt, i));
			bad->found = stamp_owner(p, n, i, pkt);
			return false;
		}
	}
	w = 0;
	memcpy(&w, p + 4 * n, len % 4);
	bad->at = 4 * n + stamp_first_diff(w, stamp_word(pkt, n));
	return false;
}

/* The detection detail (docs/markers.md): "payload expected PKT found PKT2
 * at OFF len LEN stamped SLEN", `?` for an unknown packet or length. */
static inline int stamp_format(char *out, size_t size, const struct stamp_bad *b)
{
	char e[24] = "?", f[24] = "?", s[24] = "?";

	if (b->expected != STAMP_UNKNOWN)
		snprintf(e, sizeof(e), "%lld", b->expected);
	if (b->found != STAMP_UNKNOWN)
		snprintf(f, sizeof(f), "%lld", b->found);
	if (b->stamped != STAMP_UNKNOWN)
		snprintf(s, sizeof(s), "%lld", b->stamped);
	return snprintf(out, size, "payload expected %s found %s at %u len %u stamped %s", e, f, b->at,
			b->len, s);
}

/* The UDP payload of an untagged Ethernet/IPv4 frame to dst port `port`, not
 * a fragment. Returns its length as the UDP header says (it may claim more
 * than the frame holds: *have is what the frame holds), or -1 when the frame
 * is not such a packet. */
static inline long stamp_udp_payload(const uint8_t *f, uint32_t len, uint16_t port,
				     const uint8_t **payload, uint32_t *have)
{
	uint32_t ihl, udp_len, off;

	if (len < 14 + 20 + 8 || f[12] != 0x08 || f[13] != 0x00 || (f[14] >> 4) != 4 || f[23] != 17)
		return -1;
	if ((f[20] & 0x3f) || f[21]) /* MF or a fragment offset */
		return -1;
	ihl = (f[14] & 0x0fu) * 4;
	if (ihl < 20 || 14 + ihl + 8 > len)
		return -1;
	off = 14 + ihl;
	if (((uint32_t)f[off + 2] << 8 | f[off + 3]) != port)
		return -1;
	udp_len = (uint32_t)f[off + 4] << 8 | f[off + 5];
	if (udp_len < 8)
		return -1;
	*payload = f + off + 8;
	*have = len - off - 8 < udp_len - 8 ? len - off - 8 : udp_len - 8;
	return (long)(udp_len - 8);
}

#endif
