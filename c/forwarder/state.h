/* SPDX-License-Identifier: GPL-2.0 */
/* The descriptor state machine of docs/markers.md: where the application
 * believes each UMEM frame is. One byte per frame; a frame is touched by one
 * thread at a time (ownership moves through the rings), so no locking. */
#ifndef FLIGHTREC_STATE_H
#define FLIGHTREC_STATE_H

#include <stdbool.h>
#include <stdint.h>

enum desc_state { ST_FREE, ST_FILL, ST_RX, ST_TX, ST_COMP, ST_COUNT };

struct state_table {
	uint8_t *st;
	uint32_t frames;
};

int state_table_init(struct state_table *t, uint32_t frames);
void state_table_free(struct state_table *t);

const char *state_name(enum desc_state s);
bool state_transition_valid(enum desc_state from, enum desc_state to);

/* Move frame from FROM to TO. Returns true when the frame was in FROM and the
 * transition is valid; otherwise leaves the state alone, stores the state the
 * frame was really in into *was and returns false. */
bool state_move(struct state_table *t, uint32_t frame, enum desc_state from,
		enum desc_state to, enum desc_state *was);

/* The frame's state as another thread left it (ST_COUNT: no such frame). */
static inline enum desc_state state_peek(const struct state_table *t, uint32_t frame)
{
	return frame < t->frames ? (enum desc_state)__atomic_load_n(&t->st[frame], __ATOMIC_ACQUIRE) : ST_COUNT;
}

#endif
