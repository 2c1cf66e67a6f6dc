// SPDX-License-Identifier: GPL-2.0
#include <stdlib.h>
#include "state.h"

static const char *const names[ST_COUNT] = { "FREE", "FILL", "RX", "TX", "COMP" };

/* valid[from] is a bit mask of the states reachable from it (docs/markers.md). */
static const uint8_t valid[ST_COUNT] = {
	[ST_FREE] = 1u << ST_FILL | 1u << ST_TX,
	[ST_FILL] = 1u << ST_RX,
	[ST_RX] = 1u << ST_TX | 1u << ST_FILL | 1u << ST_FREE,
	[ST_TX] = 1u << ST_COMP,
	[ST_COMP] = 1u << ST_FILL | 1u << ST_TX | 1u << ST_FREE,
};

int state_table_init(struct state_table *t, uint32_t frames)
{
	t->st = calloc(frames, 1); /* calloc: every frame starts FREE */
	t->frames = frames;
	return t->st ? 0 : -1;
}

void state_table_free(struct state_table *t)
{
	free(t->st);
	t->st = NULL;
}

const char *state_name(enum desc_state s)
{
	return s < ST_COUNT ? names[s] : "?";
}

bool state_transition_valid(enum desc_state from, enum desc_state to)
{
	return from < ST_COUNT && to < ST_COUNT && (valid[from] >> to & 1u);
}

bool state_move(struct state_table *t, uint32_t frame, enum desc_state from,
		enum desc_state to, enum desc_state *was)
{
	enum desc_state cur;

	if (frame >= t->frames) {
		*was = ST_COUNT;
		return false;
	}
	cur = t->st[frame];
	if (cur != from || !state_transition_valid(from, to)) {
		*was = cur;
		return false;
	}
	t->st[frame] = to;
	return true;
}
