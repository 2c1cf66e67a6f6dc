// SPDX-License-Identifier: GPL-2.0
/*
 * Bulk text operations for a million rows, in C: interning byte strings
 * (equal strings get one dense id), printing rows from a template of literal
 * pieces and column values, and writing a string's name=value words as JSON
 * members. They know nothing of traces; flightrec/bulk.py is their ctypes
 * glue and holds the Python reference that tests/unit/test_bulk.py compares
 * them with.
 *
 * Built by `make` as flightrec/_bulk.so.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
 * ids[i] = dense id of the string data[off[i] .. off[i] + len[i]), ids
 * numbered in order of first appearance; first[id] = the first i holding it.
 * Returns the number of distinct strings, or -1 when out of memory.
 */
int64_t fr_intern(const char *data, const int64_t *off, const int32_t *len, int64_t n, int64_t *ids, int64_t *first)
{
	uint64_t size = 16;
	int64_t *slot, distinct = 0;

	while (size < (uint64_t)n * 2)
		size <<= 1;
	slot = malloc(size * sizeof(*slot)); /* first row of the string in this slot, -1: empty */
	if (!slot)
		return -1;
	memset(slot, 0xff, size * sizeof(*slot));
	for (int64_t i = 0; i < n; i++) {
		const unsigned char *p = (const unsigned char *)data + off[i];
		uint64_t h = 1469598103934665603ULL; /* FNV-1a */

		for (int32_t k = 0; k < len[i]; k++)
			h = (h ^ p[k]) * 1099511628211ULL;
		for (uint64_t s = h & (size - 1);; s = (s + 1) & (size - 1)) {
			int64_t j = slot[s];

			if (j < 0) {
				slot[s] = i;
				first[distinct] = i;
				ids[i] = distinct++;
				break;
			}
			if (len[j] == len[i] && !memcmp(data + off[j], p, len[i])) {
				ids[i] = ids[j];
				break;
			}
		}
	}
	free(slot);
	return distinct;
}

enum { FR_INT = 0, FR_MICROS = 1, FR_PIECE = 2, FR_HEX = 3, FR_VARINT = 4, FR_OPEN = 5, FR_CLOSE = 6, FR_SPAN = 7, FR_WORDS = 8, FR_FIELD = 9 };

/* protobuf's length-delimited messages nest at most this deep in one row */
#define FR_DEPTH 16

/* A template segment: a literal, then the row's value of one column. */
struct fr_seg {
	const char *lit;
	int64_t lit_len;
	int32_t how; /* FR_INT: decimal; FR_MICROS: value / 1000 as a decimal; FR_PIECE: pieces[value];
		      FR_HEX: 0x and the unsigned value in lower-case hex; FR_VARINT: the value as a
		      protobuf varint; FR_OPEN: a length-delimited field's body begins (its length
		      is written in front when the FR_CLOSE that matches it ends the body); values
		      unused for FR_OPEN and FR_CLOSE, which print their literal first; FR_SPAN:
		      pieces[value .. value + piece_off[row]) (spans of one buffer, each row its own
		      length); FR_WORDS: that span's words as protobuf debug annotations; FR_FIELD:
		      the literal's first byte (a field's tag), then a body of the literal's rest and
		      the value as a varint, its length (under 128) in front: OPEN, VARINT, CLOSE in one */
	const int64_t *values;
	const char *pieces; /* FR_PIECE: piece k is pieces[piece_off[k] .. piece_off[k + 1]) */
	const int64_t *piece_off;
	const struct fr_known *word_names, *word_values; /* FR_WORDS: interned names and values, or NULL */
};

static char *put_uint(char *o, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*o++ = tmp[--n];
	return o;
}

static char *put_int(char *o, int64_t v)
{
	if (v < 0) {
		*o++ = '-';
		return put_uint(o, -(uint64_t)v);
	}
	return put_uint(o, (uint64_t)v);
}

static char *put_hex(char *o, uint64_t v)
{
	char tmp[16];
	int n = 0;

	*o++ = '0';
	*o++ = 'x';
	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		*o++ = tmp[--n];
	return o;
}

static char *put_varint(char *o, uint64_t v)
{
	while (v >= 0x80) {
		*o++ = (char)(v | 0x80);
		v >>= 7;
	}
	*o++ = (char)v;
	return o;
}

static char *put_bytes_field(char *o, const char *tag, int tag_len, const void *p, uint64_t n)
{
	memcpy(o, tag, tag_len);
	o = put_varint(o + tag_len, n);
	memcpy(o, p, n);
	return o + n;
}

static int varint_len(uint64_t v)
{
	int n = 1;

	for (; v >= 0x80; v >>= 7)
		n++;
	return n;
}

/* Interned words of a WORDS segment: entry k is words[off[k] .. off[k + 1]), its iid iid[k]. */
struct fr_known {
	const char *words;
	const int64_t *off;
	const int64_t *iid;
	int64_t n;
};

/* The iid of the n bytes at w in `known`, 0 when it has none. */
static int64_t known_iid(const struct fr_known *known, const unsigned char *w, int64_t n)
{
	/* a few entries: the length and first byte rule out most before a call to memcmp */
	for (int64_t k = 0; known && k < known->n; k++)
		if (known->off[k + 1] - known->off[k] == n && (!n || known->words[known->off[k]] == (char)w[0]) &&
		    !memcmp(known->words + known->off[k], w, n))
			return known->iid[k];
	return 0;
}

/* 1 and *v when w .. w + n is how the kernel prints %lx after 0x: 1 to 16 lower-case hex
 * digits, no leading zero but in 0x0. Another spelling would not survive a round trip. */
static int kernel_hex(const unsigned char *w, int64_t n, uint64_t *v)
{
	if (n < 3 || n > 18 || w[0] != '0' || w[1] != 'x' || (n > 3 && w[2] == '0'))
		return 0;
	*v = 0;
	for (int64_t k = 2; k < n; k++) {
		unsigned char c = w[k];

		if (c >= '0' && c <= '9')
			*v = *v << 4 | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			*v = *v << 4 | (uint64_t)(c - 'a' + 10);
		else
			return 0;
	}
	return 1;
}

/*
 * One protobuf DebugAnnotation as field 4 of a TrackEvent: its name as an
 * interned name_iid (1) when `names` has it, else as name (10); its value
 * as an interned string_value_iid (17) when `values` has it, a pointer_value
 * (7) when it is kernel hex, else as string_value (6).
 */
static char *put_annotation(char *o, const struct fr_known *names, const struct fr_known *values,
			    const unsigned char *name, int64_t name_len, const unsigned char *value, int64_t value_len)
{
	int64_t name_iid = known_iid(names, name, name_len), value_iid = known_iid(values, value, value_len), body;
	uint64_t v;
	char *at;

	*o++ = 0x22;
	at = o++; /* a byte for the length, the body moved on if its length takes more */
	if (name_iid) {
		*o++ = 0x08;
		o = put_varint(o, (uint64_t)name_iid);
	} else {
		o = put_bytes_field(o, "\x52", 1, name, (uint64_t)name_len);
	}
	if (value_iid) {
		o = put_varint(o, 17 << 3);
		o = put_varint(o, (uint64_t)value_iid);
	} else if (kernel_hex(value, value_len, &v)) {
		*o++ = 0x38;
		o = put_varint(o, v);
	} else {
		o = put_bytes_field(o, "\x32", 1, value, (uint64_t)value_len);
	}
	body = o - (at + 1);
	if (body < 0x80) {
		*at = (char)body;
		return o;
	}
	memmove(at + varint_len((uint64_t)body), at + 1, body);
	o = put_varint(at, (uint64_t)body);
	return o + body;
}

/* The first word (a run of bytes other than space) at or after w, before q; *end: just past
 * it; *eq: its first '=', NULL when it has none (found in the same pass: words are short). */
static const unsigned char *next_word(const unsigned char *w, const unsigned char *q, const unsigned char **end,
				      const unsigned char **eq)
{
	const unsigned char *e;

	while (w < q && *w == ' ')
		w++;
	*eq = NULL;
	for (e = w; e < q && *e != ' '; e++)
		if (*e == '=' && !*eq)
			*eq = e;
	*end = e;
	return w;
}

/*
 * The words of p .. q (runs of bytes other than space) as protobuf
 * TrackEvent debug annotations (put_annotation): a first word starting with
 * '(' as "site", then each word name=value with a name (split at its first
 * '='). At most 13 * (q - p) + 32 bytes.
 */
static char *put_proto_words(char *o, const unsigned char *p, const unsigned char *q, const struct fr_known *names,
			     const struct fr_known *values)
{
	const unsigned char *we, *eq;
	int first = 1;

	for (const unsigned char *w = next_word(p, q, &we, &eq); w < q; w = next_word(we, q, &we, &eq), first = 0) {
		if (first && *w == '(')
			o = put_annotation(o, names, values, (const unsigned char *)"site", 4, w, we - w);
		if (eq && eq > w)
			o = put_annotation(o, names, values, w, eq - w, eq + 1, we - eq - 1);
	}
	return o;
}

#define FR_BYTES(b) (0x0101010101010101ULL * (b))

/* 1 when p .. q is printable ASCII and spaces only: what C and Python split and quote alike.
 * Eight bytes at a time: a byte below 0x20 borrows into its top bit when 0x20 is taken
 * from it (and had that bit clear), a byte above 0x7e sets it when 1 is added (or had it). */
static int plain(const unsigned char *p, const unsigned char *q)
{
	for (; q - p >= 8; p += 8) {
		uint64_t x;

		memcpy(&x, p, 8);
		if ((((x - FR_BYTES(0x20)) & ~x) | (x + FR_BYTES(0x01)) | x) & FR_BYTES(0x80))
			return 0;
	}
	for (; p < q; p++)
		if (*p < 0x20 || *p > 0x7e)
			return 0;
	return 1;
}

/* mask[i] = plain(data[off[i] .. off[i] + len[i])) */
void fr_plain(const char *data, const int64_t *off, const int64_t *len, int64_t n, uint8_t *mask)
{
	for (int64_t i = 0; i < n; i++)
		mask[i] = (uint8_t)plain((const unsigned char *)data + off[i], (const unsigned char *)data + off[i] + len[i]);
}

/* v / 1000 exactly: the integer part, then ".ddd" unless it is whole. */
static char *put_micros(char *o, int64_t v)
{
	uint64_t a;

	if (v < 0) {
		*o++ = '-';
		a = -(uint64_t)v;
	} else {
		a = (uint64_t)v;
	}
	o = put_uint(o, a / 1000);
	if (a % 1000) {
		*o++ = '.';
		*o++ = (char)('0' + a % 1000 / 100);
		*o++ = (char)('0' + a % 100 / 10);
		*o++ = (char)('0' + a % 10);
	}
	return o;
}

/*
 * Print rows row, row + 1, ... into out: each row is its segments then
 * suffix, rows separated by sep; none takes more than bound bytes. The
 * caller balances each row's FR_OPEN and FR_CLOSE segments, at most FR_DEPTH
 * deep. Stops before a row that might not fit in cap bytes; *used says how
 * many were written. Returns the next row.
 */
int64_t fr_render(const struct fr_seg *segs, int32_t nseg, const char *suffix, int64_t suffix_len, const char *sep,
		  int64_t sep_len, int64_t row, int64_t nrows, char *out, int64_t cap, int64_t bound, int64_t *used)
{
	char *o = out, *end = out + cap, *opened[FR_DEPTH];
	int depth = 0;

	for (; row < nrows; row++) {
		int64_t need = suffix_len + (o == out ? 0 : sep_len);

		/* no row takes more than bound bytes: only near the end is each row measured */
		for (int32_t s = 0; s < nseg && end - o < bound; s++) {
			need += segs[s].lit_len;
			if (segs[s].how == FR_PIECE) {
				int64_t k = segs[s].values[row];

				need += segs[s].piece_off[k + 1] - segs[s].piece_off[k];
			} else if (segs[s].how == FR_SPAN) {
				need += segs[s].piece_off[row];
			} else if (segs[s].how == FR_WORDS) {
				need += segs[s].piece_off[row] * 13 + 32;
			} else if (segs[s].how == FR_OPEN) {
				need += 5; /* a length below 2^35 */
			} else if (segs[s].how == FR_CLOSE) {
				continue;
			} else {
				need += 25; /* sign, 20 digits, point, 3 decimals; or 0x, 16 digits */
			}
		}
		if (need > end - o)
			break;
		if (o != out) {
			memcpy(o, sep, sep_len);
			o += sep_len;
		}
		for (int32_t s = 0; s < nseg; s++) {
			const struct fr_seg *g = &segs[s];
			int64_t v = g->values ? g->values[row] : 0;

			if (g->how == FR_FIELD) {
				char *at = o + 1;

				*o = g->lit[0];
				o += 2;
				for (int64_t k = 1; k < g->lit_len; k++)
					*o++ = g->lit[k];
				o = put_varint(o, (uint64_t)v);
				*at = (char)(o - (at + 1));
				continue;
			}
			/* literals are a few bytes: a call to memcpy would cost more than the copy */
			for (int64_t k = 0; k < g->lit_len; k++)
				o[k] = g->lit[k];
			o += g->lit_len;
			if (g->how == FR_OPEN) {
				/* a byte for the length, the body after it, moved on if its length takes more */
				opened[depth++] = o;
				o += 1;
			} else if (g->how == FR_CLOSE) {
				char *at = opened[--depth];
				int64_t body = o - (at + 1);

				if (body < 0x80) {
					*at = (char)body;
				} else {
					int k = varint_len((uint64_t)body);

					memmove(at + k, at + 1, body);
					put_varint(at, (uint64_t)body);
					o = at + k + body;
				}
			} else if (g->how == FR_SPAN) {
				memcpy(o, g->pieces + v, g->piece_off[row]);
				o += g->piece_off[row];
			} else if (g->how == FR_WORDS) {
				const unsigned char *p = (const unsigned char *)g->pieces + v;

				o = put_proto_words(o, p, p + g->piece_off[row], g->word_names, g->word_values);
			} else if (g->how == FR_VARINT) {
				o = put_varint(o, (uint64_t)v);
			} else if (g->how == FR_INT) {
				o = put_int(o, v);
			} else if (g->how == FR_MICROS) {
				o = put_micros(o, v);
			} else if (g->how == FR_HEX) {
				o = put_hex(o, (uint64_t)v);
			} else {
				int64_t n = g->piece_off[v + 1] - g->piece_off[v];

				memcpy(o, g->pieces + g->piece_off[v], n);
				o += n;
			}
		}
		memcpy(o, suffix, suffix_len);
		o += suffix_len;
	}
	*used = o - out;
	return row;
}

/* n bytes of printable ASCII as a JSON string: only '"' and '\' need escaping. */
static char *put_quoted(char *o, const unsigned char *p, int64_t n)
{
	*o++ = '"';
	for (int64_t k = 0; k < n; k++) {
		if (p[k] == '"' || p[k] == '\\')
			*o++ = '\\';
		*o++ = (char)p[k];
	}
	*o++ = '"';
	return o;
}

/*
 * The words of each string data[off[i] .. off[i] + len[i]) (runs of bytes
 * other than space) as JSON object members, comma-separated: a first word
 * starting with '(' as "site":"word", then each word name=value with a name
 * as "name":"value" (split at its first '='). Only strings of printable
 * ASCII and spaces: for any other out_len[i] = -1 and nothing is written,
 * their whitespace and decoding being Python's to judge. Writes strings i,
 * i + 1, ... into out; stops before one that might not fit in cap bytes.
 * Returns the next string.
 */
int64_t fr_json_words(const char *data, const int64_t *off, const int32_t *len, int64_t i, int64_t n, char *out,
		      int64_t cap, int64_t *out_len)
{
	char *o = out, *end = out + cap;

	for (; i < n; i++) {
		const unsigned char *p = (const unsigned char *)data + off[i], *q = p + len[i];
		const unsigned char *we, *eq;
		char *start = o;
		int first = 1;

		/* a word of L bytes writes at most 4L + 16: quotes, escapes, "site", commas */
		if ((int64_t)len[i] * 20 > end - o)
			break;
		if (!plain(p, q)) {
			out_len[i] = -1;
			continue;
		}
		for (const unsigned char *w = next_word(p, q, &we, &eq); w < q; w = next_word(we, q, &we, &eq), first = 0) {
			if (first && *w == '(') {
				if (o != start)
					*o++ = ',';
				memcpy(o, "\"site\":", 7);
				o = put_quoted(o + 7, w, we - w);
			}
			if (eq && eq > w) {
				if (o != start)
					*o++ = ',';
				o = put_quoted(o, w, eq - w);
				*o++ = ':';
				o = put_quoted(o, eq + 1, we - eq - 1);
			}
		}
		out_len[i] = o - start;
	}
	return i;
}

/*
 * fr_json_words' words as protobuf instead: each a TrackEvent debug
 * annotation (field 4) whose name and string value are the word's, the
 * first word starting with '(' as "site". Same strings, same split, same
 * -1 for a string that is not printable ASCII, same stop and return.
 */
int64_t fr_proto_words(const char *data, const int64_t *off, const int32_t *len, int64_t i, int64_t n, char *out,
		       int64_t cap, int64_t *out_len)
{
	char *o = out, *end = out + cap;

	for (; i < n; i++) {
		const unsigned char *p = (const unsigned char *)data + off[i], *q = p + len[i];
		char *start = o;

		if ((int64_t)len[i] * 13 + 32 > end - o)
			break;
		if (!plain(p, q)) {
			out_len[i] = -1;
			continue;
		}
		o = put_proto_words(o, p, q, NULL, NULL);
		out_len[i] = o - start;
	}
	return i;
}
