// SPDX-License-Identifier: GPL-2.0
/* What the forwarder tells the Python side: JSON lines on stdout and the
 * --stats file. Read-only over the context. */
#include <errno.h>
#include <stddef.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/if_link.h>
#include "forwarder.h"
#include "status.h"

#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

/* A counter of port i, its twin's (--tx-twins) added: they share its name. */
static uint64_t port_counter(const struct fwd *f, unsigned i, size_t off)
{
	const uint64_t *v = (const uint64_t *)((const char *)&f->ports[i].st + off);
	uint64_t n = LOAD(*v);

	if (f->twins)
		n += LOAD(*(const uint64_t *)((const char *)&f->twins[i].st + off));
	return n;
}

/* "key":[v0,v1,...] over every port */
static void json_port_array(FILE *out, const struct fwd *f, const char *key, size_t off)
{
	unsigned i;

	fprintf(out, "\"%s\":[", key);
	for (i = 0; i < f->nports; i++)
		fprintf(out, "%s%llu", i ? "," : "", (unsigned long long)port_counter(f, i, off));
	fputc(']', out);
}

static uint64_t markers_total(const struct fwd *f, int failed)
{
	size_t off = failed ? offsetof(struct port_stats, markers.failed) :
			      offsetof(struct port_stats, markers.written);
	uint64_t n = 0;
	unsigned i;

	for (i = 0; i < f->nports; i++)
		n += port_counter(f, i, off);
	return n;
}

static void json_socks(FILE *out, const struct fwd *f)
{
	unsigned i;

	fputs("\"socks\":[", out);
	for (i = 0; i < f->nports; i++) {
		fputs(i ? "," : "", out);
		json_str(out, f->ports[i].name);
	}
	fputc(']', out);
}

static const char *xdp_attach_name(const struct fwd *f, enum side s)
{
	return f->prog[s].flags == XDP_FLAGS_DRV_MODE ? "native" : "generic";
}

/* zerocopy or copy when every socket reads the same back, else mixed */
static const char *bind_read_back(const struct fwd *f)
{
	const char *mode = f->nports ? port_mode_name(&f->ports[0]) : "unknown";
	unsigned i;

	for (i = 1; i < f->nports; i++)
		if (strcmp(port_mode_name(&f->ports[i]), mode))
			return "mixed";
	return mode;
}

static void json_xdp_statistics(FILE *out, const char *key, const struct xdp_statistics *xs)
{
	fprintf(out, ",\"%s\":{\"rx_dropped\":%llu,\"rx_invalid_descs\":%llu,"
		"\"tx_invalid_descs\":%llu,\"rx_ring_full\":%llu,"
		"\"rx_fill_ring_empty_descs\":%llu,\"tx_ring_empty_descs\":%llu}", key,
		(unsigned long long)xs->rx_dropped, (unsigned long long)xs->rx_invalid_descs,
		(unsigned long long)xs->tx_invalid_descs, (unsigned long long)xs->rx_ring_full,
		(unsigned long long)xs->rx_fill_ring_empty_descs,
		(unsigned long long)xs->tx_ring_empty_descs);
}

/* What one socket is: its device, driver, queue, the mode the kernel gave
 * (XDP_OPTIONS), the XDP attach mode and its ring sizes. */
static void json_socket_facts(FILE *out, const struct fwd *f, const struct port *p)
{
	fputs("\"ifname\":", out);
	json_str(out, p->side ? f->opt.inner_if : f->opt.outer_if);
	fprintf(out, ",\"ifindex\":%d,\"driver\":", f->ifindex[p->side]);
	json_str(out, f->driver[p->side]);
	fprintf(out, ",\"queue\":%u,\"mode\":\"%s\",\"mode_requested\":\"%s\",\"xdp_attach\":\"%s\","
		"\"ring_sizes\":{\"rx\":%u,\"tx\":%u,\"fill\":%u,\"comp\":%u}",
		p->queue, port_mode_name(p), mode_name(f->opt.mode), xdp_attach_name(f, p->side),
		p->r.rx.size, p->r.tx.size, p->r.fill.size, p->r.comp.size);
}

void status_print_ready(const struct fwd *f)
{
	unsigned s, i;

	printf("{\"event\":\"ready\",");
	json_socks(stdout, f);
	printf(",\"queues\":%u,\"frames\":%u,\"ring_size\":%u,\"markers\":%s,\"marker_form\":\"%s\",\"xdp_mode\":{",
	       f->opt.queues, f->umem.frames, f->umem.ring_size,
	       fr_markers_enabled(&f->markers) ? "true" : "false",
	       f->opt.per_descriptor ? "per-descriptor" : "batched");
	for (s = 0; s < 2; s++)
		printf("%s\"%s\":\"%s\"", s ? "," : "", s ? "inner" : "outer", xdp_attach_name(f, s));
	printf("},\"bind\":\"%s\",\"mode_requested\":\"%s\",\"need_wakeup\":%s,\"tx_twins\":%s,\"sockets\":[",
	       bind_read_back(f), mode_name(f->opt.mode), f->opt.mode == MODE_COPY ? "false" : "true",
	       f->twins ? "true" : "false");
	for (i = 0; i < f->nports; i++) {
		printf("%s{\"sock\":", i ? "," : "");
		json_str(stdout, f->ports[i].name);
		fputc(',', stdout);
		json_socket_facts(stdout, f, &f->ports[i]);
		fputc('}', stdout);
	}
	printf("],\"pid\":%d}\n", (int)getpid());
	fflush(stdout);
}

/* The counters that end a stats and an exit line, and the line itself. */
static void json_counters_end(const struct fwd *f, int with_drops)
{
	json_port_array(stdout, f, "rx", offsetof(struct port_stats, rx));
	fputc(',', stdout);
	json_port_array(stdout, f, "tx", offsetof(struct port_stats, tx));
	if (with_drops) {
		fputc(',', stdout);
		json_port_array(stdout, f, "drops", offsetof(struct port_stats, drops));
	}
	printf(",\"markers\":%llu,\"markers_failed\":%llu}\n",
	       (unsigned long long)markers_total(f, 0), (unsigned long long)markers_total(f, 1));
	fflush(stdout);
}

void status_print_stats_event(const struct fwd *f, double t)
{
	printf("{\"event\":\"stats\",\"t\":%.3f,", t);
	json_counters_end(f, 1);
}

static void json_anomaly(FILE *out, const struct anomaly *a)
{
	fputs("\"kind\":", out);
	json_str(out, a->kind);
	fputs(",\"sock\":", out);
	json_str(out, a->sock);
	fprintf(out, ",\"addr\":\"0x%llx\",\"transition\":\"%s -> %s\"",
		(unsigned long long)a->addr, a->from, a->to);
	if (!strcmp(a->kind, "fill_order") || !strcmp(a->kind, "poison"))
		fprintf(out, ",\"expected\":\"0x%llx\"", (unsigned long long)a->expected);
	if (a->was[0])
		fprintf(out, ",\"was\":\"%s\"", a->was);
	if (!strcmp(a->kind, "len_mismatch"))
		fprintf(out, ",\"len\":%u,\"xdp_len\":%u", a->len, a->xdp_len);
	fprintf(out, ",\"tracing_stopped\":%s,\"line\":", a->tracing_stopped ? "true" : "false");
	json_str(out, a->line);
}

void status_print_anomaly(const struct fwd *f)
{
	fputs("{\"event\":\"anomaly\",", stdout);
	json_anomaly(stdout, &f->anomaly);
	fputs("}\n", stdout);
	fflush(stdout);
}

void status_print_exit(const struct fwd *f, int code, double t)
{
	printf("{\"event\":\"exit\",\"code\":%d,\"reason\":", code);
	json_str(stdout, f->exit_reason ? f->exit_reason : "unknown");
	printf(",\"t\":%.3f,", t);
	json_counters_end(f, 0);
}

static void json_ring(FILE *out, const char *name, const uint32_t *prod, const uint32_t *cons,
		      uint32_t cached_prod, uint32_t cached_cons)
{
	fprintf(out, "\"%s\":{\"producer\":%u,\"consumer\":%u,\"cached_prod\":%u,\"cached_cons\":%u}",
		name, prod ? __atomic_load_n(prod, __ATOMIC_ACQUIRE) : 0,
		cons ? __atomic_load_n(cons, __ATOMIC_ACQUIRE) : 0, cached_prod, cached_cons);
}

static void json_port(FILE *out, const struct fwd *f, const struct port *p, int snapshot)
{
	struct xdp_statistics xs;
	const struct port_rings *r = &p->r;

	fputs("{\"sock\":", out);
	json_str(out, p->name);
	fputc(',', out);
	json_socket_facts(out, f, p);
	fprintf(out, ",\"cpu\":%d,\"rx\":%llu,\"tx\":%llu,\"fill\":%llu,\"comp\":%llu,"
		"\"drops\":%llu,\"kicks\":%llu,\"meta_checked\":%llu,\"payload_checked\":%llu,\"markers_written\":%llu,\"markers_failed\":%llu,"
		"\"fill_order_len\":%u,\"tx_outstanding\":%u",
		p->cpu, (unsigned long long)p->st.rx, (unsigned long long)p->st.tx,
		(unsigned long long)p->st.fill, (unsigned long long)p->st.comp,
		(unsigned long long)p->st.drops, (unsigned long long)p->st.kicks,
		(unsigned long long)p->st.meta_checked, (unsigned long long)p->st.payload_checked,
		(unsigned long long)p->st.markers.written, (unsigned long long)p->st.markers.failed,
		fr_fill_order_len(&p->order), p->tx_outstanding);
	if (port_xdp_statistics(p, &xs) == 0)
		json_xdp_statistics(out, "xdp_statistics", &xs);
	if (p->stats_ok)
		json_xdp_statistics(out, "xdp_statistics_at_anomaly", &p->stats_at_anomaly);
	if (p->twin) {
		const struct port *t = p->twin;

		/* its own counters: the port's above are the primary's alone */
		fprintf(out, ",\"twin\":{\"cpu\":%d,\"mode\":\"%s\",\"tx\":%llu,\"kicks\":%llu,"
			"\"markers_written\":%llu,\"markers_failed\":%llu",
			t->cpu, port_mode_name(t), (unsigned long long)t->st.tx,
			(unsigned long long)t->st.kicks, (unsigned long long)t->st.markers.written,
			(unsigned long long)t->st.markers.failed);
		if (port_xdp_statistics(t, &xs) == 0)
			json_xdp_statistics(out, "xdp_statistics", &xs);
		if (snapshot) {
			fputs(",\"rings\":{", out);
			json_ring(out, "tx", t->r.tx.producer, t->r.tx.consumer, t->r.tx.cached_prod,
				  t->r.tx.cached_cons);
			fputc('}', out);
		}
		fputc('}', out);
	}
	if (snapshot) {
		fputs(",\"rings\":{", out);
		json_ring(out, "rx", r->rx.producer, r->rx.consumer, r->rx.cached_prod, r->rx.cached_cons);
		fputc(',', out);
		json_ring(out, "tx", r->tx.producer, r->tx.consumer, r->tx.cached_prod, r->tx.cached_cons);
		fputc(',', out);
		json_ring(out, "fill", r->fill.producer, r->fill.consumer, r->fill.cached_prod,
			  r->fill.cached_cons);
		fputc(',', out);
		json_ring(out, "comp", r->comp.producer, r->comp.consumer, r->comp.cached_prod,
			  r->comp.cached_cons);
		fputc('}', out);
	}
	fputc('}', out);
}

/* Call only after the port threads have stopped: reads their rings. */
int status_write_stats(const struct fwd *f, const char *path, int exit_code, double elapsed)
{
	FILE *out = fopen(path, "w");
	unsigned i;

	if (!out) {
		fprintf(stderr, "forwarder: cannot write --stats %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(out, "{\"exit_code\":%d,\"exit_reason\":", exit_code);
	json_str(out, f->exit_reason ? f->exit_reason : "unknown");
	fprintf(out, ",\"elapsed\":%.3f,\"queues\":%u,\"frames\":%u,\"ring_size\":%u,"
		"\"mode_requested\":\"%s\",\"bind\":\"%s\","
		"\"inject\":\"%s\",\"injected\":%s,\"rx_total\":%llu,\"markers\":%s,\"ports\":[",
		elapsed, f->opt.queues, f->umem.frames, f->umem.ring_size, mode_name(f->opt.mode),
		bind_read_back(f), inject_name(f->opt.inject),
		f->injected ? "true" : "false", (unsigned long long)f->rx_total,
		fr_markers_enabled(&f->markers) ? "true" : "false");
	for (i = 0; i < f->nports; i++) {
		fputs(i ? "," : "", out);
		json_port(out, f, &f->ports[i], f->anomaly.raised);
	}
	/* flip-payload: which packets the forwarder corrupted after checking them */
	fprintf(out, "],\"payload_port\":%u,\"flipped\":[", f->opt.payload_port);
	for (i = 0; f->opt.inject == INJECT_FLIP_PAYLOAD && i < (unsigned)f->injected &&
		    i < INJECT_COUNT_MAX; i++)
		fprintf(out, "%s%u", i ? "," : "", f->flipped[i]);
	fputc(']', out);
	if (f->anomaly.raised) {
		fputs(",\"anomaly\":{", out);
		json_anomaly(out, &f->anomaly);
		fputc('}', out);
	}
	fputs("}\n", out);
	return fclose(out) ? -1 : 0;
}
