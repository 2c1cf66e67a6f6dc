// SPDX-License-Identifier: GPL-2.0
/* Drives <flightrec/xsk_markers.h> from a script on stdin, for
 * tests/unit/test_marker_library.py, which runs the same script through
 * flightrec.markers and compares what both wrote. One command a line:
 *   sock IFACE QUEUE ZEROCOPY    (a new socket, numbered from 0)
 *   fill S ADDR FROM | rx S ADDR | tx S ADDR FROM | comp S ADDR | release S ADDR FROM | flush S
 * Prints each call's return value (0 or -1), one a line.
 * Usage: marker_script TRACEDIR FRAMES [per-descriptor] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <flightrec/xsk_markers.h>

static enum fr_state state_of(const char *name)
{
	for (int s = 0; s < FR_STATES; s++)
		if (!strcmp(fr_state_name((enum fr_state)s), name))
			return (enum fr_state)s;
	return FR_STATES;
}

int main(int argc, char **argv)
{
	static struct fr_sock socks[8];
	struct fr_markers m;
	struct fr_states states;
	char cmd[16], a[64], b[64], c[64];
	unsigned nsocks = 0;
	char line[256];

	if (argc < 3 || fr_markers_open(&m, argv[1]) || fr_states_init(&states, (uint32_t)atoi(argv[2])))
		return 2;
	m.batched = argc < 4;
	while (fgets(line, sizeof(line), stdin)) {
		int n = sscanf(line, "%15s %63s %63s %63s", cmd, a, b, c), rc = 0;
		struct fr_sock *s = n >= 2 && strcmp(cmd, "sock") ? &socks[atoi(a)] : NULL;
		uint64_t addr = n >= 3 ? strtoull(b, NULL, 0) : 0;

		if (!strcmp(cmd, "sock"))
			rc = fr_sock_init(&socks[nsocks++], &m, &states, a, (unsigned)atoi(b), 4096, states.frames,
					  atoi(c));
		else if (!strcmp(cmd, "fill"))
			rc = fr_fill(s, addr, state_of(c));
		else if (!strcmp(cmd, "rx"))
			rc = fr_rx(s, addr);
		else if (!strcmp(cmd, "tx"))
			rc = fr_tx(s, addr, state_of(c));
		else if (!strcmp(cmd, "comp"))
			rc = fr_comp(s, addr);
		else if (!strcmp(cmd, "release"))
			rc = fr_release(s, addr, state_of(c));
		else if (!strcmp(cmd, "flush"))
			fr_flush(s);
		else
			return 2;
		printf("%d\n", rc);
	}
	fr_markers_close(&m);
	return 0;
}
