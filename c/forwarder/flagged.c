// SPDX-License-Identifier: GPL-2.0
/* The flagged-packet file (see flagged.h). Record, one line:
 * {"t_ns":REALTIME,"mono_ns":MONOTONIC,"sock":"inner q:0","kind":"len_mismatch",
 *  "addr":"0x1100","len":50,"xdp_len":66,"caplen":50,"data":"HEX","line":"..."} */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "flagged.h"

int flagged_open(struct flagged *fl, const char *path)
{
	fl->fd = -1;
	pthread_mutex_init(&fl->lock, NULL);
	if (!path)
		return 0;
	fl->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (fl->fd < 0) {
		fprintf(stderr, "forwarder: cannot create --flagged %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

void flagged_close(struct flagged *fl)
{
	if (fl->fd >= 0)
		close(fl->fd);
	fl->fd = -1;
}

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* JSON string body of s (quotes and control characters escaped). */
static size_t put_str(char *out, const char *s)
{
	size_t n = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			n += (size_t)sprintf(out + n, "\\%c", c);
		else if (c < 0x20)
			n += (size_t)sprintf(out + n, "\\u%04x", c);
		else
			out[n++] = (char)c;
	}
	return n;
}

int flagged_write(struct flagged *fl, const struct flagged_packet *pkt)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *b = pkt->data;
	uint32_t caplen = b ? pkt->caplen : 0, i;
	/* worst case: every line character escaped as \u00XX (6 bytes) */
	size_t cap = 512 + 2 * (size_t)caplen + 6 * (strlen(pkt->line) + strlen(pkt->sock) +
						     strlen(pkt->kind));
	char *buf, *p;
	ssize_t w;
	size_t n;

	if (fl->fd < 0)
		return 0;
	buf = malloc(cap);
	if (!buf)
		return -1;
	p = buf;
	p += sprintf(p, "{\"t_ns\":%llu,\"mono_ns\":%llu,\"sock\":\"",
		     (unsigned long long)clock_ns(CLOCK_REALTIME),
		     (unsigned long long)clock_ns(CLOCK_MONOTONIC));
	p += put_str(p, pkt->sock);
	p += sprintf(p, "\",\"kind\":\"");
	p += put_str(p, pkt->kind);
	p += sprintf(p, "\",\"addr\":\"0x%llx\",\"len\":%u,\"xdp_len\":%u,\"caplen\":%u,\"data\":\"",
		     (unsigned long long)pkt->addr, pkt->len, pkt->xdp_len, caplen);
	for (i = 0; i < caplen; i++) {
		*p++ = hex[b[i] >> 4];
		*p++ = hex[b[i] & 15];
	}
	p += sprintf(p, "\",\"line\":\"");
	p += put_str(p, pkt->line);
	p += sprintf(p, "\"}\n");
	n = (size_t)(p - buf);
	/* one write() per record under the lock: records never interleave */
	pthread_mutex_lock(&fl->lock);
	w = write(fl->fd, buf, n);
	pthread_mutex_unlock(&fl->lock);
	free(buf);
	return w == (ssize_t)n ? 0 : -1;
}
