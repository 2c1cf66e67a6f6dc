// SPDX-License-Identifier: GPL-2.0
/* What one trace_marker write costs, by part (bench/markers builds and runs it):
 * formatting a per-descriptor line with printf and by hand, one write() of it,
 * one write() of a batched line of 64 descriptors, and one trace_marker_raw
 * write of the same 64 addresses in binary. DIR is a tracefs instance. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <flightrec/xsk_markers.h> /* fr_hex: the formatter the forwarder uses */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static size_t put(char *out, const char *s)
{
	size_t n = strlen(s);

	memcpy(out, s, n);
	return n;
}

int main(int argc, char **argv)
{
	char path[4096], line[1024];
	volatile size_t sink = 0;
	int n = argc > 2 ? atoi(argv[2]) : 200000, fd, raw;
	double t;

	if (argc < 2) {
		fprintf(stderr, "usage: marker_cost TRACEFS_INSTANCE_DIR [N]\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/trace_marker", argv[1]);
	fd = open(path, O_WRONLY);
	snprintf(path, sizeof(path), "%s/trace_marker_raw", argv[1]);
	raw = open(path, O_WRONLY);
	if (fd < 0 || raw < 0) {
		perror("open");
		return 2;
	}

	t = now_ns();
	for (int i = 0; i < n; i++)
		sink += (size_t)snprintf(line, sizeof(line), "%s 0x%llx %s -> %s", "outer q:1",
					 (unsigned long long)(0x1a000 + 0x800 * (i & 4095)), "FILL", "RX");
	printf("format_printf_ns=%.1f\n", (now_ns() - t) / n);

	t = now_ns();
	for (int i = 0; i < n; i++) {
		size_t k = put(line, "outer q:1 ");
		k += fr_hex(line + k, 0x1a000 + 0x800 * (uint64_t)(i & 4095));
		k += put(line + k, " FILL -> RX");
		sink += k;
	}
	printf("format_hex_ns=%.1f\n", (now_ns() - t) / n);

	size_t len = (size_t)snprintf(line, sizeof(line), "outer q:1 0x1a000 FILL -> RX");
	t = now_ns();
	for (int i = 0; i < n; i++)
		sink += (size_t)write(fd, line, len);
	printf("write_line_ns=%.1f bytes=%zu\n", (now_ns() - t) / n, len);

	size_t k = put(line, "outer q:1 FILL -> RX");
	for (int d = 0; d < 64; d++) {
		line[k++] = ' ';
		k += fr_hex(line + k, 0x1a000 + 0x800 * (uint64_t)d);
	}
	t = now_ns();
	for (int i = 0; i < n / 8; i++)
		sink += (size_t)write(fd, line, k);
	double batch = (now_ns() - t) / (n / 8);
	printf("write_batch64_ns=%.1f per_descriptor_ns=%.1f bytes=%zu\n", batch, batch / 64, k);

	/* trace_marker_raw: a 4-byte id, then the 64 addresses as they are */
	uint64_t buf[1 + 64];
	uint32_t id = 0xf17e;
	memcpy(buf, &id, sizeof(id));
	for (int d = 0; d < 64; d++)
		memcpy((char *)buf + 4 + 8 * d, &(uint64_t){ 0x1a000 + 0x800 * (uint64_t)d }, 8);
	t = now_ns();
	for (int i = 0; i < n / 8; i++)
		sink += (size_t)write(raw, buf, 4 + 8 * 64);
	batch = (now_ns() - t) / (n / 8);
	printf("write_raw64_ns=%.1f per_descriptor_ns=%.1f bytes=%d\n", batch, batch / 64, 4 + 8 * 64);
	close(fd);
	close(raw);
	return sink == 0;
}
