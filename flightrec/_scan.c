// SPDX-License-Identifier: GPL-2.0
/*
 * The hot loop of flightrec's parser, in C: one pass over a whole ftrace text
 * buffer that fills the typed columns. It implements exactly what
 * flightrec/parse/ftrace.py (line shape, `parse_lines`) and
 * flightrec/parse/events.py (`type_rows`: marker grammar, kernel event
 * fields) do in Python; tests/unit/test_scan.py holds the two to the same
 * output. The kernel event names and fields come from the caller
 * (flightrec/parse/format.py), so a new field or event needs no change here.
 *
 * Loaded with ctypes (flightrec/parse/scan.py); built by `make` as
 * flightrec/_scan.so.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_LINE (1 << 16)
#define MAX_SOCKS 4096
#define SOCK_SLOTS (2 * MAX_SOCKS)
#define NAMES_BYTES (1 << 20)
#define MAX_FIELDS 16

/* kind codes: index into flightrec/parse/format.py's KINDS; kernel kinds come from the caller */
enum { K_META = -1, K_OTHER = 0, K_MARKER = 1, K_NOTE = 2 };

struct fr_cols {
	int32_t *line;
	int32_t *cpu;
	int32_t *pid;
	double *ts;
	int8_t *kind;
	uint32_t *fmask; /* bit j: kernel field j present (field 0 is addr, also a marker's ADDR) */
	uint64_t *fval[MAX_FIELDS]; /* the fields' values, where present */
	int32_t *queue; /* -1: none */
	int8_t *frm, *to; /* state index, -1: none */
	int32_t *sock; /* id into the sock table, -1: none */
	int64_t *task_off, *event_off, *body_off, *detail_off, *flags_off;
	int32_t *task_len, *event_len, *body_len, *detail_len, *flags_len;
};

struct fr_kernel_name {
	const char *base;
	int32_t base_len;
	int8_t kind;
	uint32_t need; /* bit j: field j must be present */
};

struct fr_field {
	const char *name;
	int32_t len;
};

struct fr_result {
	int64_t rows; /* event rows, written from row 0 up */
	int64_t meta; /* meta rows, written from row cap - 1 down */
	int64_t lines; /* complete lines seen */
	int64_t long_lines; /* lines over MAX_LINE, skipped */
	int32_t cut; /* the buffer ends inside a line */
	int32_t nsocks;
	int32_t names_used;
	/* a socket is two words, "ingress" and "q:1", named "ingress q:1": at
	 * names[sock_name[i]], kept here, as a mapped trace's pages behind the
	 * scan are given back (fr_scan's `release`) and must not be read again */
	int32_t sock_name[MAX_SOCKS];
	int32_t sock_len[MAX_SOCKS][2];
	/* id + 1 of the socket in each slot, 0: empty (open addressing on the name) */
	int16_t sock_slot[SOCK_SLOTS];
	char names[NAMES_BYTES];
};

/* flightrec/parse/format.py STATES, in its order */
static const char *const STATES[] = { "FREE", "FILL", "RX", "TX", "COMP" };

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* [p, e) is "0x" + 1..16 hex digits (or, without need_0x, optional "0x"). */
static int parse_hex(const char *p, const char *e, int need_0x, uint64_t *out)
{
	uint64_t v = 0;

	if (e - p >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		p += 2;
	else if (need_0x)
		return -1;
	if (p == e || e - p > 16)
		return -1;
	for (; p < e; p++) {
		int h = hexval(*p);
		if (h < 0)
			return -1;
		v = (v << 4) | (uint64_t)h;
	}
	*out = v;
	return 0;
}

static int state_of(const char *p, const char *e)
{
	static const int len[] = { 4, 4, 2, 2, 4 };

	for (int i = 0; i < 5; i++)
		if (e - p == len[i] && !memcmp(p, STATES[i], e - p))
			return i;
	return -1;
}

/* [p, e) holds only digits, at most 9 */
static int64_t decimal(const char *p, const char *e)
{
	int64_t v = 0;

	for (; p < e; p++)
		v = v * 10 + (*p - '0');
	return v;
}

static uint32_t fnv(uint32_t h, const char *p, const char *e)
{
	for (; p < e; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h;
}

/* A trace scaled up or recorded with many queues names thousands of sockets: found by hash. */
static int sock_id(struct fr_result *r, const char *const ws[2], const char *const we[2])
{
	int32_t n0 = (int32_t)(we[0] - ws[0]), n1 = (int32_t)(we[1] - ws[1]);
	uint32_t s = fnv(fnv(2166136261u, ws[0], we[0]) * 31u, ws[1], we[1]);
	char *name;

	for (s &= SOCK_SLOTS - 1; r->sock_slot[s]; s = (s + 1) & (SOCK_SLOTS - 1)) {
		int i = r->sock_slot[s] - 1;

		name = r->names + r->sock_name[i];
		if (r->sock_len[i][0] == n0 && r->sock_len[i][1] == n1 && !memcmp(name, ws[0], n0) &&
		    !memcmp(name + n0 + 1, ws[1], n1))
			return i;
	}
	if (r->nsocks == MAX_SOCKS || r->names_used + n0 + 1 + n1 > NAMES_BYTES)
		return -2;
	name = r->names + r->names_used;
	memcpy(name, ws[0], n0);
	name[n0] = ' ';
	memcpy(name + n0 + 1, ws[1], n1);
	r->sock_name[r->nsocks] = r->names_used;
	r->names_used += n0 + 1 + n1;
	r->sock_len[r->nsocks][0] = n0;
	r->sock_len[r->nsocks][1] = n1;
	r->sock_slot[s] = (int16_t)(r->nsocks + 1);
	return r->nsocks++;
}

/* Split [p, e) on whitespace into at most max words; returns the count (max+1 if more). */
static int split(const char *p, const char *e, const char **ws, const char **we, int max)
{
	int n = 0;

	while (p < e) {
		while (p < e && is_space(*p))
			p++;
		if (p == e)
			break;
		if (n == max)
			return max + 1;
		ws[n] = p;
		while (p < e && !is_space(*p))
			p++;
		we[n++] = p;
	}
	return n;
}

static void strip(const char **p, const char **e)
{
	while (*p < *e && is_space(**p))
		(*p)++;
	while (*e > *p && is_space((*e)[-1]))
		(*e)--;
}

static void reset_row(struct fr_cols *c, int64_t i);

/* Row j: another event of row i's line (a batched line's next descriptor). */
static void copy_row(struct fr_cols *c, int64_t i, int64_t j)
{
	reset_row(c, j);
	c->line[j] = c->line[i];
	c->cpu[j] = c->cpu[i];
	c->pid[j] = c->pid[i];
	c->ts[j] = c->ts[i];
	c->task_off[j] = c->task_off[i];
	c->task_len[j] = c->task_len[i];
	c->flags_off[j] = c->flags_off[i];
	c->flags_len[j] = c->flags_len[i];
	c->event_off[j] = c->event_off[i];
	c->event_len[j] = c->event_len[i];
	c->body_off[j] = c->body_off[i];
	c->body_len[j] = c->body_len[i];
}

/* A note `ADDR WORD [WORD ...]` in [b, e) (no ": " in it): its address and text. */
static int note(const char *b, const char *e, uint64_t *addr, const char **dp, const char **de)
{
	const char *ws[2], *we[2];

	if (e > b && e[-1] == ':')
		e--;
	if (split(b, e, ws, we, 1) < 2 || parse_hex(ws[0], we[0], 1, addr))
		return -1;
	*dp = we[0];
	*de = e;
	strip(dp, de);
	return 0;
}

static int is_sep(const char *q, const char *e)
{
	return q + 1 < e && q[0] == ';' && q[1] == ' ';
}

/* A batched note line `ADDR TEXT; ADDR TEXT; ...` in [b, e): rows from i on,
 * or 0 when a piece is no note (then the line is one note, as before), -1
 * past `limit`. */
static int64_t batched_notes(const char *buf, const char *b, const char *e, struct fr_cols *c, int64_t i,
			     int64_t limit)
{
	int64_t n = 0;

	for (int pass = 0; pass < 2; pass++) {
		const char *p = b;

		n = 0;
		while (1) {
			const char *q = p, *dp, *de;
			uint64_t addr;

			while (q < e && !is_sep(q, e))
				q++;
			if (note(p, q, &addr, &dp, &de))
				return 0;
			if (pass) {
				if (n)
					copy_row(c, i, i + n);
				c->kind[i + n] = K_NOTE;
				c->fval[0][i + n] = addr;
				c->fmask[i + n] = 1;
				c->detail_off[i + n] = dp - buf;
				c->detail_len[i + n] = (int32_t)(de - dp);
			}
			n++;
			if (q == e)
				break;
			p = q + 2;
		}
		if (!pass && i + n > limit)
			return -1;
	}
	return n;
}

/* A batched transition line `SOCK q:QUEUE FROM -> TO ADDR ... [FROM -> TO ADDR ...]`
 * ending at e, its first two words (the socket) at ws/we: rows from i on, 0
 * when it is not one, -1 past `limit`. */
static int64_t batched_transitions(const char *const *ws, const char *const *we, int32_t queue,
				   const char *e, struct fr_cols *c, int64_t i, int64_t limit, struct fr_result *r)
{
	int64_t n = 0;
	int s = -1;

	for (int pass = 0; pass < 2; pass++) {
		const char *p = we[1], *w[3], *x[3];
		int frm = -1, to = -1, fresh = 0;

		n = 0;
		while (split(p, e, w, x, 1) >= 1) {
			uint64_t addr;
			int st = state_of(w[0], x[0]);

			if (st >= 0) {
				if (fresh || split(x[0], e, w + 1, x + 1, 2) < 2 || x[1] - w[1] != 2 ||
				    memcmp(w[1], "->", 2) || (to = state_of(w[2], x[2])) < 0)
					return 0;
				frm = st;
				fresh = 1;
				p = x[2];
				continue;
			}
			if (frm < 0 || parse_hex(w[0], x[0], 1, &addr))
				return 0;
			if (pass) {
				if (n)
					copy_row(c, i, i + n);
				c->kind[i + n] = K_MARKER;
				c->sock[i + n] = s;
				c->queue[i + n] = queue;
				c->fval[0][i + n] = addr;
				c->fmask[i + n] = 1;
				c->frm[i + n] = (int8_t)frm;
				c->to[i + n] = (int8_t)to;
			}
			n++;
			fresh = 0;
			p = x[0];
		}
		if (fresh || !n)
			return 0;
		if (!pass) {
			if (i + n > limit)
				return -1;
			s = sock_id(r, ws, we);
			if (s < 0)
				return 0;
		}
	}
	return n;
}

/* The marker grammar of docs/markers.md: fills row i (and, for a batched
 * line, the rows after it, up to `limit`) or leaves it K_OTHER. Returns the
 * rows used, -1 when a batch does not fit. */
static int64_t marker(const char *buf, const char *b, const char *e, struct fr_cols *c, int64_t i, int64_t limit,
		      struct fr_result *r)
{
	const char *head_e = e, *det = NULL, *ws[8], *we[8];
	int n, plain, seps = 0, qok = 0;
	int32_t queue = 0;

	for (const char *q = b; q + 1 < e; q++)
		if (q[0] == ':' && q[1] == ' ') {
			head_e = q;
			det = q + 2;
			break;
		}
	if (!det && e > b && e[-1] == ':')
		head_e = e - 1;
	/* no detail: the line may be batched (a detection line never is) */
	plain = !det && e > b && e[-1] != ':';
	for (const char *q = b; plain && q < e; q++)
		if (is_sep(q, e)) {
			seps = 1;
			break;
		}
	if (seps) {
		/* a note holding "; " is one note only when a piece is no note */
		int64_t got = batched_notes(buf, b, e, c, i, limit);
		if (got)
			return got;
	}
	n = split(b, head_e, ws, we, 7);
	if (n >= 6 && we[1] - ws[1] >= 3 && we[1] - ws[1] <= 11 && !memcmp(ws[1], "q:", 2)) {
		qok = 1;
		for (const char *q = ws[1] + 2; q < we[1]; q++) {
			if (!is_digit(*q))
				qok = 0;
			queue = queue * 10 + (*q - '0');
		}
	}
	if (n == 6 && qok) {
		uint64_t addr;
		int frm = state_of(ws[3], we[3]), to = state_of(ws[5], we[5]);

		if (we[4] - ws[4] == 2 && !memcmp(ws[4], "->", 2) && frm >= 0 && to >= 0 &&
		    !parse_hex(ws[2], we[2], 1, &addr)) {
			int s = sock_id(r, ws, we);
			if (s < 0)
				return 1;
			c->kind[i] = K_MARKER;
			c->sock[i] = s;
			c->queue[i] = queue;
			c->fval[0][i] = addr;
			c->fmask[i] = 1;
			c->frm[i] = (int8_t)frm;
			c->to[i] = (int8_t)to;
			if (det) {
				const char *dp = det, *de = e;
				strip(&dp, &de);
				c->detail_off[i] = dp - buf;
				c->detail_len[i] = (int32_t)(de - dp);
			}
			return 1;
		}
	} else if (n != 6 && n >= 2 && !det) {
		uint64_t addr;
		const char *dp = we[0], *de = head_e;

		if (!parse_hex(ws[0], we[0], 1, &addr)) {
			strip(&dp, &de);
			c->kind[i] = K_NOTE;
			c->fval[0][i] = addr;
			c->fmask[i] = 1;
			c->detail_off[i] = dp - buf;
			c->detail_len[i] = (int32_t)(de - dp);
			return 1;
		}
	}
	if (plain && !seps && qok) {
		int64_t got = batched_transitions(ws, we, queue, e, c, i, limit, r);
		if (got)
			return got;
	}
	return 1;
}

/* name=value words of a kernel event's body: the fields of the caller's table, in hex. */
static void kernel_event(const char *b, const char *e, int8_t kind, uint32_t need, const struct fr_field *fields,
			 int nfields, struct fr_cols *c, int64_t i)
{
	uint64_t val[MAX_FIELDS];
	uint32_t mask = 0;
	const char *p = b;

	while (p < e) {
		while (p < e && is_space(*p))
			p++;
		const char *w = p, *eq = NULL;
		while (p < e && !is_space(*p)) {
			if (!eq && *p == '=')
				eq = p;
			p++;
		}
		if (!eq)
			continue;
		int32_t nl = (int32_t)(eq - w);
		for (int j = 0; j < nfields; j++)
			if (fields[j].len == nl && !memcmp(w, fields[j].name, nl)) {
				if (parse_hex(eq + 1, p, 0, &val[j]))
					return;
				mask |= 1u << j;
				break;
			}
	}
	if ((mask & need) != need)
		return;
	c->kind[i] = kind;
	c->fmask[i] = mask;
	for (int j = 0; j < nfields; j++)
		if (mask & (1u << j))
			c->fval[j][i] = val[j];
}

static int8_t kernel_kind(const char *ev, const char *ee, const struct fr_kernel_name *names, int nnames,
			  uint32_t *need)
{
	size_t n = ee - ev;

	for (int k = 0; k < nnames; k++) {
		size_t bl = (size_t)names[k].base_len;
		if (n >= bl && !memcmp(ev, names[k].base, bl) && (n == bl || ev[bl] == '_')) {
			*need = names[k].need;
			return names[k].kind;
		}
	}
	return K_OTHER;
}

static int is_flag(char ch)
{
	return ch == '.' || ch == '_' || is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/*
 * "digits.digits" as a double, as Python's float() reads it: with at most 15
 * digits and a power of ten up to 1e22 both operands are exact, so the one
 * division rounds correctly (Clinger's fast path); else strtod.
 */
static double seconds(const char *p)
{
	static const double pow10[] = { 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
					1e13, 1e14, 1e15 };
	const char *q = p;
	uint64_t m = 0;
	int digits = 0, frac = 0;

	for (; is_digit(*q); q++, digits++)
		m = m * 10 + (uint64_t)(*q - '0');
	for (q++; is_digit(*q); q++, digits++, frac++)
		m = m * 10 + (uint64_t)(*q - '0');
	if (digits > 15)
		return strtod(p, NULL);
	return (double)m / pow10[frac];
}

/* "digits.digits:" then whitespace at *pp: advance past the colon. */
static int timestamp(const char **pp, const char *e, const char **ts_s)
{
	const char *q = *pp, *f;

	while (q < e && is_digit(*q))
		q++;
	if (q == *pp || q == e || *q != '.')
		return 0;
	f = ++q;
	while (q < e && is_digit(*q))
		q++;
	if (q == f || q + 1 >= e || *q != ':' || !is_space(q[1]))
		return 0;
	*ts_s = *pp;
	*pp = q + 1;
	return 1;
}

/* Long by nature: one left-to-right pass over a line, a step per part of it (task-pid, cpu, flags, ts, event). */
/* task-pid [cpu] flags ts: event: body, as flightrec/parse/ftrace.py's _LINE.
 * Returns the rows it filled from i on (a batched marker line fills one per
 * descriptor, up to `limit`), 0 when it is no event line, -1 past `limit`. */
static int64_t event_line(const char *buf, const char *s, const char *e, struct fr_cols *c, int64_t i, int64_t limit,
			  const struct fr_kernel_name *names, int nnames, const struct fr_field *fields, int nfields,
			  struct fr_result *r)
{
	const char *t = s;

	while (t < e && is_space(*t))
		t++;
	for (const char *dash = t; dash < e; dash++) {
		const char *p, *pid_s, *pid_e, *cpu_s, *cpu_e, *fl_s = NULL, *fl_e = NULL, *ts_s, *ev_s, *ev_e;

		if (*dash != '-')
			continue;
		p = pid_s = dash + 1;
		while (p < e && is_digit(*p))
			p++;
		pid_e = p;
		if (pid_e == pid_s || pid_e - pid_s > 9 || p == e || !is_space(*p))
			continue;
		while (p < e && is_space(*p))
			p++;
		if (p < e && *p == '(') {
			const char *q = p + 1;
			while (q < e && is_space(*q))
				q++;
			const char *d = q;
			while (q < e && (is_digit(*q) || *q == '-'))
				q++;
			if (q == d || q == e || *q != ')' || q + 1 == e || !is_space(q[1]))
				continue;
			p = q + 1;
			while (p < e && is_space(*p))
				p++;
		}
		if (p == e || *p != '[')
			continue;
		cpu_s = ++p;
		while (p < e && is_digit(*p))
			p++;
		cpu_e = p;
		if (cpu_e == cpu_s || cpu_e - cpu_s > 6 || p == e || *p != ']' || p + 1 == e || !is_space(p[1]))
			continue;
		p++;
		while (p < e && is_space(*p))
			p++;
		/* the timestamp, possibly after a flags column */
		if (!timestamp(&p, e, &ts_s)) {
			fl_s = p;
			while (p < e && is_flag(*p))
				p++;
			fl_e = p;
			if (fl_e - fl_s < 4 || fl_e - fl_s > 6 || p == e || !is_space(*p))
				continue;
			while (p < e && is_space(*p))
				p++;
			if (!timestamp(&p, e, &ts_s))
				continue;
		}
		while (p < e && is_space(*p))
			p++;
		ev_s = p;
		while (p < e && *p != ':' && !is_space(*p))
			p++;
		ev_e = p;
		if (ev_e == ev_s || p == e || *p != ':')
			continue;
		p++;
		if (p < e && (*p == ' ' || *p == '\t' || *p == '\v' || *p == '\f' || *p == '\r'))
			p++;
		/* a match: fill the row */
		c->pid[i] = (int32_t)decimal(pid_s, pid_e);
		c->cpu[i] = (int32_t)decimal(cpu_s, cpu_e);
		c->ts[i] = seconds(ts_s);
		c->task_off[i] = t - buf;
		c->task_len[i] = (int32_t)(dash - t);
		c->flags_off[i] = fl_s ? fl_s - buf : 0;
		c->flags_len[i] = fl_s ? (int32_t)(fl_e - fl_s) : 0;
		c->event_off[i] = ev_s - buf;
		c->event_len[i] = (int32_t)(ev_e - ev_s);
		c->body_off[i] = p - buf;
		c->body_len[i] = (int32_t)(e - p);
		c->kind[i] = K_OTHER;
		size_t el = ev_e - ev_s;
		if (el == 18 && !memcmp(ev_s, "tracing_mark_write", 18)) {
			return marker(buf, p, e, c, i, limit, r);
		} else if (el == 5 && !memcmp(ev_s, "print", 5)) {
			for (const char *q = p; q + 1 < e; q++)
				if (q[0] == ':' && q[1] == ' ') {
					return marker(buf, q + 2, e, c, i, limit, r);
				}
		} else {
			const char *ks = ev_s, *ke = ev_e, *kb = p;
			if (el == 16 && !memcmp(ev_s, "bpf_trace_printk", 16)) {
				/* "flightrec NAME fields": the BPF backend's kernel events */
				if (e - p < 10 || memcmp(p, "flightrec ", 10))
					return 1;
				ks = p + 10;
				ke = ks;
				while (ke < e && !is_space(*ke))
					ke++;
				kb = ke;
			}
			uint32_t need = 0;
			int8_t k = kernel_kind(ks, ke, names, nnames, &need);
			if (k != K_OTHER)
				kernel_event(kb, e, k, need, fields, nfields, c, i);
		}
		return 1;
	}
	return 0;
}

static void reset_row(struct fr_cols *c, int64_t i)
{
	c->kind[i] = K_OTHER;
	c->fmask[i] = 0;
	c->queue[i] = -1;
	c->frm[i] = -1;
	c->to[i] = -1;
	c->sock[i] = -1;
	c->detail_off[i] = 0;
	c->detail_len[i] = -1;
	c->flags_len[i] = 0;
}

/*
 * Scan buf[0, len): one row per complete, non-blank line. Event rows, with
 * their kind, fill the columns from row 0 up; meta rows (K_META, the line in
 * body_off/body_len) from row cap - 1 down, so the event rows need no copy.
 * `cap` rows must fit in the columns (the number of newlines and of "0x" is
 * enough: a batched line's every descriptor after its first has its own ADDR).
 * With `release` > 0, buf is a read-only mapping of a file: every `release`
 * bytes the pages already scanned are given back (MADV_DONTNEED), so a big
 * trace is never resident whole beside its columns; a later read of a line
 * maps its page again from the page cache.
 * Returns the event rows, or -1 when they did not fit or the tables are too big.
 */
int64_t fr_scan(const char *buf, int64_t len, struct fr_cols *c, int64_t cap, const struct fr_kernel_name *names,
		int32_t nnames, const struct fr_field *fields, int32_t nfields, struct fr_result *r, int64_t release)
{
	const char *p = buf, *end = buf + len;
	int64_t i = 0, m = cap, lineno = 0;
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), kept = (uintptr_t)buf; /* kept: first byte not given back */

	memset(r, 0, sizeof(*r));
	if (nfields < 1 || nfields > MAX_FIELDS)
		return -1;
	while (p < end) {
		const char *nl = memchr(p, '\n', end - p);

		if (release > 0 && (uintptr_t)p - kept >= (uintptr_t)release) {
			uintptr_t from = kept & ~(page - 1), to = (uintptr_t)p & ~(page - 1);

			if (to > from)
				madvise((void *)from, to - from, MADV_DONTNEED);
			kept = to;
		}
		if (!nl) {
			r->cut = 1;
			break;
		}
		lineno++;
		const char *s = p, *e = nl;
		p = nl + 1;
		if (e - s > MAX_LINE) {
			r->long_lines++;
			continue;
		}
		const char *t = s;
		while (t < e && is_space(*t))
			t++;
		if (t == e)
			continue;
		if (i == m)
			return -1;
		reset_row(c, i);
		c->line[i] = (int32_t)lineno;
		int64_t got = event_line(buf, s, e, c, i, m, names, nnames, fields, nfields, r);
		if (got < 0)
			return -1;
		if (got) {
			i += got;
			continue;
		}
		m--;
		c->kind[m] = K_META;
		c->line[m] = (int32_t)lineno;
		c->body_off[m] = t - buf;
		c->body_len[m] = (int32_t)(e - t);
	}
	r->lines = lineno;
	r->rows = i;
	r->meta = cap - m;
	return i;
}
