// SPDX-License-Identifier: GPL-2.0
/* widen: load the race-window widener (widen.bpf.o), attach its two kprobe
 * programs at the sites the resolver found, and detach on SIGINT/SIGTERM.
 *
 *   widen --flush SYM+OFF --flush-key FETCH [--flush-queue FETCH]
 *         --reserve SYM+OFF --reserve-key FETCH
 *         [--flush-ns N] [--flush-every N] [--reserve-ns N] [--queue Q]
 *         [--obj FILE] [--check]
 *
 * FETCH is a kprobe_events fetch argument as flightrec's resolver writes it:
 * %di:x64, +872(%di):x64, +8(+872(%di)):x16. Normally started by
 * `python3 -m flightrec.probes.widen run`, never by hand.
 * stdout: {"event":"ready",...} once attached, {"event":"exit",...,stats} at the end.
 * --check: load (the verifier runs) but attach nothing, print ready, exit 0.
 * Exit: 0 detached cleanly; 2 bad options or the kernel refused, one line on stderr.
 * Nothing is pinned: a SIGKILL detaches everything too.
 * WIDEN_DEBUG=1 in the environment shows libbpf's debug messages. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "widen.h"

static const char *const REGS[16] = { "ax", "dx", "cx", "bx", "si", "di", "bp", "sp",
				      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15" };

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: widen --flush SYM+OFF --flush-key FETCH [--flush-queue FETCH]\n"
		"             --reserve SYM+OFF --reserve-key FETCH\n"
		"             [--flush-ns N] [--flush-every N] [--reserve-ns N] [--queue Q]\n"
		"             [--obj FILE] [--check]\n");
}

static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if ((level == LIBBPF_DEBUG || level == LIBBPF_INFO) && !getenv("WIDEN_DEBUG"))
		return 0;
	return vfprintf(stderr, fmt, args);
}

static int parse_u64(const char *text, __u64 *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-')
		return -1;
	*out = v;
	return 0;
}

/* "+8(+872(%di)):x16" -> reg di, off {872, 8}, size 2. */
static int parse_fetch(const char *text, struct widen_fetch *f)
{
	char buf[128], *colon, *p;
	long offs[WIDEN_MAX_DEREF];
	unsigned int n = 0, i, bits;
	size_t len;

	memset(f, 0, sizeof(*f));
	f->reg = -1;
	if (strlen(text) >= sizeof(buf))
		return -1;
	strcpy(buf, text);
	colon = strrchr(buf, ':');
	if (!colon || sscanf(colon + 1, "x%u", &bits) != 1 ||
	    (bits != 8 && bits != 16 && bits != 32 && bits != 64))
		return -1;
	*colon = '\0';
	f->size = bits / 8;
	p = buf;
	/* Outermost offset first in the text: peel "+off(" ... ")" layers. */
	while (*p == '+' || *p == '-') {
		char *end;

		if (n == WIDEN_MAX_DEREF)
			return -1;
		errno = 0;
		offs[n] = strtol(p, &end, 10);
		if (errno || end == p || *end != '(' || offs[n] < INT_MIN || offs[n] > INT_MAX)
			return -1;
		len = strlen(end);
		if (end[len - 1] != ')')
			return -1;
		end[len - 1] = '\0';
		p = end + 1;
		n++;
	}
	if (*p != '%')
		return -1;
	for (i = 0; i < 16; i++)
		if (!strcmp(p + 1, REGS[i]))
			f->reg = i;
	if (f->reg < 0)
		return -1;
	f->nderef = n;
	for (i = 0; i < n; i++)
		f->off[i] = offs[n - 1 - i];
	return 0;
}

/* "__xsk_map_flush+123" -> symbol and offset. */
static int parse_site(char *text, const char **sym, size_t *off)
{
	char *plus = strrchr(text, '+');
	__u64 v;

	if (!plus || plus == text || parse_u64(plus + 1, &v))
		return -1;
	*plus = '\0';
	*sym = text;
	*off = v;
	return 0;
}

static struct bpf_link *attach(struct bpf_program *prog, const char *sym, size_t off)
{
	LIBBPF_OPTS(bpf_kprobe_opts, opts, .offset = off);
	struct bpf_link *link = bpf_program__attach_kprobe_opts(prog, sym, &opts);

	if (!link)
		fprintf(stderr, "widen: cannot attach a kprobe at %s+%zu: %s (kernel without CONFIG_KPROBES, "
			"or a site from another kernel's vmlinux?)\n", sym, off, strerror(errno));
	return link;
}

/* What the command line asks for. */
struct widen_opts {
	struct widen_cfg cfg;
	const char *flush_sym, *reserve_sym;
	size_t flush_off, reserve_off;
	const char *obj_arg;
	int check;
};

/* The command line into *o: -1 to go on, else the exit code (0 for --help, 2 for bad options).
 * An option table and its switch, one case an option: long by nature. */
static int parse_options(int argc, char **argv, struct widen_opts *o)
{
	static const struct option longopts[] = {
		{ "flush", required_argument, NULL, 'f' },
		{ "flush-key", required_argument, NULL, 'k' },
		{ "flush-queue", required_argument, NULL, 'Q' },
		{ "reserve", required_argument, NULL, 'r' },
		{ "reserve-key", required_argument, NULL, 'K' },
		{ "flush-ns", required_argument, NULL, 'n' },
		{ "flush-every", required_argument, NULL, 'e' },
		{ "reserve-ns", required_argument, NULL, 'N' },
		{ "queue", required_argument, NULL, 'q' },
		{ "obj", required_argument, NULL, 'o' },
		{ "check", no_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	char *flush_site = NULL, *reserve_site = NULL;
	int opt, have_key = 0, have_rkey = 0;
	__u64 v;

	o->cfg.flush_queue.reg = -1;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'f': flush_site = optarg; break;
		case 'r': reserve_site = optarg; break;
		case 'k':
			if (parse_fetch(optarg, &o->cfg.flush_key))
				goto bad_fetch;
			have_key = 1;
			break;
		case 'K':
			if (parse_fetch(optarg, &o->cfg.reserve_key))
				goto bad_fetch;
			have_rkey = 1;
			break;
		case 'Q':
			if (parse_fetch(optarg, &o->cfg.flush_queue))
				goto bad_fetch;
			break;
		case 'n': case 'N': case 'e': case 'q':
			if (parse_u64(optarg, &v)) {
				fprintf(stderr, "widen: --%s wants a non-negative integer, got '%s'\n",
					opt == 'n' ? "flush-ns" : opt == 'N' ? "reserve-ns" : opt == 'e' ? "flush-every" : "queue",
					optarg);
				return 2;
			}
			if (opt == 'n') o->cfg.flush_ns = v;
			if (opt == 'N') o->cfg.reserve_ns = v;
			if (opt == 'e') o->cfg.flush_every = v;
			if (opt == 'q') o->cfg.queue = (__s64)v;
			break;
		case 'o': o->obj_arg = optarg; break;
		case 'c': o->check = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || !flush_site || !reserve_site || !have_key || !have_rkey) {
		usage(stderr);
		return 2;
	}
	if (parse_site(flush_site, &o->flush_sym, &o->flush_off) ||
	    parse_site(reserve_site, &o->reserve_sym, &o->reserve_off)) {
		fprintf(stderr, "widen: a site is SYMBOL+OFFSET, e.g. __xsk_rcv_zc+58\n");
		return 2;
	}
	if (o->cfg.flush_every == 0 || o->cfg.flush_ns > WIDEN_MAX_NS || o->cfg.reserve_ns > WIDEN_MAX_NS) {
		fprintf(stderr, "widen: --flush-every must be >= 1 and each delay at most %llu ns\n",
			(unsigned long long)WIDEN_MAX_NS);
		return 2;
	}
	if (o->cfg.queue >= 0 && o->cfg.flush_queue.reg < 0) {
		fprintf(stderr, "widen: --queue needs --flush-queue (the socket's queue_id at the flush site)\n");
		return 2;
	}
	return -1;

bad_fetch:
	fprintf(stderr, "widen: '%s' is not a fetch argument like %%di:x64 or +872(%%di):x64\n", optarg);
	return 2;
}

/* --obj, else widen.bpf.o beside this executable, into objpath: 0, or -1 after saying why. */
static int object_path(const char *obj_arg, char *objpath, size_t len)
{
	if (obj_arg) {
		snprintf(objpath, len, "%s", obj_arg);
	} else {
		/* widen.bpf.o beside this executable. */
		ssize_t n = readlink("/proc/self/exe", objpath, len - 16);
		char *slash;

		if (n < 0) {
			fprintf(stderr, "widen: /proc/self/exe: %s (pass --obj)\n", strerror(errno));
			return -1;
		}
		objpath[n] = '\0';
		slash = strrchr(objpath, '/');
		strcpy(slash ? slash + 1 : objpath, "widen.bpf.o");
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct widen_opts o = { .cfg = { .flush_ns = 10000000, .flush_every = 1000, .reserve_ns = 50000000,
					 .queue = -1 } };
	char objpath[PATH_MAX];
	struct bpf_link *flush_link = NULL, *reserve_link = NULL;
	struct bpf_program *flush_prog, *reserve_prog;
	struct bpf_object *obj = NULL;
	struct widen_stats st = { 0 };
	int ret, cfg_fd;
	__u32 zero = 0;

	ret = parse_options(argc, argv, &o);
	if (ret >= 0)
		return ret;
	ret = 2;
	if (object_path(o.obj_arg, objpath, sizeof(objpath)))
		return 2;

	libbpf_set_print(print_libbpf);
	obj = bpf_object__open_file(objpath, NULL);
	if (!obj) {
		fprintf(stderr, "widen: cannot open %s: %s (run make build)\n", objpath, strerror(errno));
		return 2;
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "widen: the kernel refused the programs of %s: %s\n", objpath, strerror(errno));
		goto out;
	}
	cfg_fd = bpf_object__find_map_fd_by_name(obj, "widen_cfg");
	if (cfg_fd < 0 || bpf_map_update_elem(cfg_fd, &zero, &o.cfg, BPF_ANY)) {
		fprintf(stderr, "widen: cannot set the configuration: %s\n", strerror(errno));
		goto out;
	}
	flush_prog = bpf_object__find_program_by_name(obj, "widen_flush");
	reserve_prog = bpf_object__find_program_by_name(obj, "widen_reserve");
	if (!flush_prog || !reserve_prog) {
		fprintf(stderr, "widen: %s lacks widen_flush or widen_reserve\n", objpath);
		goto out;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (!o.check) {
		flush_link = attach(flush_prog, o.flush_sym, o.flush_off);
		if (!flush_link)
			goto out;
		reserve_link = attach(reserve_prog, o.reserve_sym, o.reserve_off);
		if (!reserve_link)
			goto out;
	}
	printf("{\"event\":\"ready\",\"flush\":\"%s+%zu\",\"reserve\":\"%s+%zu\",\"attached\":%s}\n",
	       o.flush_sym, o.flush_off, o.reserve_sym, o.reserve_off, o.check ? "false" : "true");
	fflush(stdout);
	while (!stop && !o.check)
		pause();
	bpf_link__destroy(flush_link);
	bpf_link__destroy(reserve_link);
	flush_link = reserve_link = NULL;
	if (bpf_map_lookup_elem(bpf_object__find_map_fd_by_name(obj, "widen_stats"), &zero, &st)) {
		fprintf(stderr, "widen: cannot read the counters: %s\n", strerror(errno));
		goto out;
	}
	printf("{\"event\":\"exit\",\"flush_hits\":%" PRIu64 ",\"flush_delays\":%" PRIu64 ",\"flush_ns\":%" PRIu64
	       ",\"reserve_hits\":%" PRIu64 ",\"reserve_delays\":%" PRIu64 ",\"reserve_ns\":%" PRIu64
	       ",\"fetch_errors\":%" PRIu64 "}\n",
	       (uint64_t)st.flush_hits, (uint64_t)st.flush_delays, (uint64_t)st.flush_ns, (uint64_t)st.reserve_hits,
	       (uint64_t)st.reserve_delays, (uint64_t)st.reserve_ns, (uint64_t)st.fetch_errors);
	fflush(stdout);
	ret = 0;
out:
	bpf_link__destroy(flush_link);
	bpf_link__destroy(reserve_link);
	bpf_object__close(obj);
	return ret;
}
