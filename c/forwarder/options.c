// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "options.h"

static const char usage[] =
"Usage: forwarder --outer NETNS:IFNAME --inner NETNS:IFNAME [options]\n"
"\n"
"AF_XDP L2 forwarder for flightrec: one UMEM shared by one socket per queue of\n"
"two interfaces, forwarding outer queue q <-> inner queue q, writing\n"
"trace_marker lines for every descriptor transition (one per ring operation)\n"
"and stopping tracing on the first anomaly (FILL order, poison, invalid\n"
"transition, XDP length).\n"
"\n"
"Options:\n"
"  --outer NETNS:IFNAME   outer interface; NETNS a netns file such as\n"
"                         /run/netns/fwd-outer, or - for the current one\n"
"  --inner NETNS:IFNAME   inner interface, likewise\n"
"  --queues N             sockets per interface, queues 0..N-1 (default 1)\n"
"  --trace-dir DIR        tracefs instance dir: write DIR/trace_marker and\n"
"                         DIR/tracing_on (opened before entering namespaces)\n"
"  --no-markers           no tracing at all (the default without --trace-dir)\n"
"  --markers FORM         batched (default): one trace_marker line per ring\n"
"                         operation with all its descriptors; per-descriptor:\n"
"                         one line per descriptor (docs/markers.md)\n"
"  --duration S           stop after S seconds (decimals allowed); 0 = until\n"
"                         SIGINT/SIGTERM (default)\n"
"  --inject KIND          commit an application bug on purpose: double-fill,\n"
"                         fill-and-tx, short-len, flip-payload or\n"
"                         reuse-in-flight\n"
"  --inject-after N       RX packets before the injected bug (default 2000)\n"
"  --inject-count N       flip-payload: stamped packets to corrupt (default 1)\n"
"  --payload-port PORT    check the stamped payload (c/stamp/stamp.h) of every UDP\n"
"                         packet to PORT before forwarding it (default 0: off)\n"
"  --frames N             UMEM frames of 4096 bytes (default 8192)\n"
"  --batch N              descriptors per ring operation (default 64)\n"
"  --stats PATH           write counters (and a ring snapshot at an anomaly) as JSON\n"
"  --flagged PATH         write the bytes of every flagged packet, one JSON line each\n"
"  --xdp-prog PATH        XDP object (default: xdp_meta.bpf.o next to the binary)\n"
"  --skb-mode             attach XDP in generic mode instead of trying native\n"
"  --mode MODE            AF_XDP bind: copy (XDP_COPY, the default), zerocopy\n"
"                         (XDP_ZEROCOPY: fails where the driver cannot; needs\n"
"                         native XDP) or auto (zero-copy where it binds, else\n"
"                         copy); the mode each socket got is read back\n"
"                         (XDP_OPTIONS) and printed in the ready line\n"
"  --tx-twins             bind a second, TX-only socket (a twin) to every queue,\n"
"                         sharing that queue's FILL and COMPLETION rings, on\n"
"                         another CPU; half the forwarded packets go out through\n"
"                         it: two sockets reserving and publishing one\n"
"                         COMPLETION ring, as in 30f241fcf52a. Its markers carry\n"
"                         its queue's SOCK q:QUEUE\n"
"  -h, --help             this text\n"
"\n"
"stdout: one JSON object a line: ready, stats (every second), anomaly, exit.\n"
"Exit codes: 0 clean stop, 3 anomaly caught (tracing stopped), 2 setup error.\n"
"\n"
"Examples:\n"
"  forwarder --outer /run/netns/fwd-out:outer --inner /run/netns/fwd-in:inner \\\n"
"      --queues 2 --trace-dir /sys/kernel/tracing/instances/flightrec-1 --duration 10\n"
"  forwarder --outer -:outer --inner -:inner --no-markers --stats /tmp/fwd.json\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner --queues 2 \\\n"
"      --trace-dir /sys/kernel/tracing/instances/t --inject double-fill --inject-after 5000\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner \\\n"
"      --trace-dir /sys/kernel/tracing/instances/t --markers per-descriptor\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner \\\n"
"      --trace-dir /sys/kernel/tracing/instances/t --inject short-len --flagged /tmp/flagged.jsonl\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner --payload-port 5203 \\\n"
"      --inject flip-payload --inject-count 20 --stats /tmp/fwd.json\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner --mode zerocopy --no-markers\n"
"  forwarder --outer /run/netns/o:outer --inner /run/netns/i:inner --tx-twins \\\n"
"      --trace-dir /sys/kernel/tracing/instances/t --payload-port 5203\n";

const char *mode_name(enum bind_mode m)
{
	switch (m) {
	case MODE_ZEROCOPY: return "zerocopy";
	case MODE_AUTO: return "auto";
	default: return "copy";
	}
}

const char *inject_name(enum inject_kind k)
{
	switch (k) {
	case INJECT_DOUBLE_FILL: return "double-fill";
	case INJECT_FILL_AND_TX: return "fill-and-tx";
	case INJECT_SHORT_LEN: return "short-len";
	case INJECT_FLIP_PAYLOAD: return "flip-payload";
	case INJECT_REUSE_IN_FLIGHT: return "reuse-in-flight";
	default: return "none";
	}
}

static int parse_endpoint(const char *opt, const char *arg, char *ns, size_t nslen,
			  char *ifname, size_t iflen)
{
	const char *colon = strrchr(arg, ':');

	if (!colon || colon == arg || !colon[1] || (size_t)(colon - arg) >= nslen ||
	    strlen(colon + 1) >= iflen) {
		fprintf(stderr, "forwarder: --%s wants NETNS:IFNAME (e.g. /run/netns/fwd-out:outer "
			"or -:outer), got '%s'\n", opt, arg);
		return -1;
	}
	memcpy(ns, arg, (size_t)(colon - arg));
	ns[colon - arg] = '\0';
	strcpy(ifname, colon + 1);
	return 0;
}

static int parse_uint(const char *opt, const char *arg, unsigned long long min,
		      unsigned long long max, unsigned long long *out)
{
	char *end;

	errno = 0;
	*out = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || *out < min || *out > max) {
		fprintf(stderr, "forwarder: --%s wants a whole number from %llu to %llu, got '%s'\n",
			opt, min, max, arg);
		return -1;
	}
	return 0;
}

static int parse_seconds(const char *opt, const char *arg, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(arg, &end);
	if (errno || end == arg || *end || !(*out >= 0) || *out > 86400.0 * 365) {
		fprintf(stderr, "forwarder: --%s wants seconds (0 or more, e.g. 10 or 2.5), got '%s'\n",
			opt, arg);
		return -1;
	}
	return 0;
}

static void default_xdp_prog(struct options *o)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0) {
		snprintf(o->xdp_prog, sizeof(o->xdp_prog), "xdp_meta.bpf.o");
		return;
	}
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash)
		slash[1] = '\0';
	snprintf(o->xdp_prog, sizeof(o->xdp_prog), "%sxdp_meta.bpf.o", self);
}

/* Long by nature: the option table and its switch, one case an option. */
int options_parse(struct options *o, int argc, char **argv)
{
	enum { O_OUTER = 256, O_INNER, O_QUEUES, O_TRACE, O_NOMARK, O_MARKERS, O_DUR, O_INJ, O_INJAFTER,
	       O_FRAMES, O_BATCH, O_STATS, O_XDP, O_SKB, O_FLAGGED, O_MODE, O_INJCOUNT,
	       O_PAYLOAD, O_TWINS };
	static const struct option longopts[] = {
		{ "outer", required_argument, NULL, O_OUTER },
		{ "inner", required_argument, NULL, O_INNER },
		{ "queues", required_argument, NULL, O_QUEUES },
		{ "trace-dir", required_argument, NULL, O_TRACE },
		{ "no-markers", no_argument, NULL, O_NOMARK },
		{ "markers", required_argument, NULL, O_MARKERS },
		{ "duration", required_argument, NULL, O_DUR },
		{ "inject", required_argument, NULL, O_INJ },
		{ "inject-after", required_argument, NULL, O_INJAFTER },
		{ "inject-count", required_argument, NULL, O_INJCOUNT },
		{ "payload-port", required_argument, NULL, O_PAYLOAD },
		{ "frames", required_argument, NULL, O_FRAMES },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "stats", required_argument, NULL, O_STATS },
		{ "flagged", required_argument, NULL, O_FLAGGED },
		{ "xdp-prog", required_argument, NULL, O_XDP },
		{ "skb-mode", no_argument, NULL, O_SKB },
		{ "mode", required_argument, NULL, O_MODE },
		{ "tx-twins", no_argument, NULL, O_TWINS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long long v;
	int c, no_markers = 0;

	memset(o, 0, sizeof(*o));
	o->queues = 1;
	o->inject_after = 2000;
	o->inject_count = 1;
	o->frames = 8192;
	o->batch = 64;
	default_xdp_prog(o);
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_OUTER:
			if (parse_endpoint("outer", optarg, o->outer_ns, sizeof(o->outer_ns),
					   o->outer_if, sizeof(o->outer_if)))
				return -1;
			break;
		case O_INNER:
			if (parse_endpoint("inner", optarg, o->inner_ns, sizeof(o->inner_ns),
					   o->inner_if, sizeof(o->inner_if)))
				return -1;
			break;
		case O_QUEUES:
			if (parse_uint("queues", optarg, 1, 64, &v))
				return -1;
			o->queues = (unsigned)v;
			break;
		case O_TRACE:
			o->trace_dir = optarg;
			break;
		case O_NOMARK:
			no_markers = 1;
			break;
		case O_MARKERS:
			if (!strcmp(optarg, "batched")) {
				o->per_descriptor = 0;
			} else if (!strcmp(optarg, "per-descriptor")) {
				o->per_descriptor = 1;
			} else {
				fprintf(stderr, "forwarder: --markers wants batched or per-descriptor, got '%s'\n",
					optarg);
				return -1;
			}
			break;
		case O_DUR:
			if (parse_seconds("duration", optarg, &o->duration))
				return -1;
			break;
		case O_INJ:
			if (!strcmp(optarg, "double-fill")) {
				o->inject = INJECT_DOUBLE_FILL;
			} else if (!strcmp(optarg, "fill-and-tx")) {
				o->inject = INJECT_FILL_AND_TX;
			} else if (!strcmp(optarg, "short-len")) {
				o->inject = INJECT_SHORT_LEN;
			} else if (!strcmp(optarg, "flip-payload")) {
				o->inject = INJECT_FLIP_PAYLOAD;
			} else if (!strcmp(optarg, "reuse-in-flight")) {
				o->inject = INJECT_REUSE_IN_FLIGHT;
			} else {
				fprintf(stderr, "forwarder: --inject wants double-fill, fill-and-tx, "
					"short-len, flip-payload or reuse-in-flight, got '%s'\n", optarg);
				return -1;
			}
			break;
		case O_INJAFTER:
			if (parse_uint("inject-after", optarg, 0, UINT64_MAX / 2, &v))
				return -1;
			o->inject_after = v;
			break;
		case O_INJCOUNT:
			if (parse_uint("inject-count", optarg, 1, INJECT_COUNT_MAX, &v))
				return -1;
			o->inject_count = (uint32_t)v;
			break;
		case O_PAYLOAD:
			if (parse_uint("payload-port", optarg, 0, 65535, &v))
				return -1;
			o->payload_port = (uint16_t)v;
			break;
		case O_FRAMES:
			if (parse_uint("frames", optarg, 64, 1u << 20, &v))
				return -1;
			o->frames = (uint32_t)v;
			break;
		case O_BATCH:
			if (parse_uint("batch", optarg, 1, 1024, &v))
				return -1;
			o->batch = (uint32_t)v;
			break;
		case O_STATS:
			o->stats_path = optarg;
			break;
		case O_FLAGGED:
			o->flagged_path = optarg;
			break;
		case O_XDP:
			snprintf(o->xdp_prog, sizeof(o->xdp_prog), "%s", optarg);
			break;
		case O_SKB:
			o->skb_mode = 1;
			break;
		case O_MODE:
			if (!strcmp(optarg, "copy")) {
				o->mode = MODE_COPY;
			} else if (!strcmp(optarg, "zerocopy")) {
				o->mode = MODE_ZEROCOPY;
			} else if (!strcmp(optarg, "auto")) {
				o->mode = MODE_AUTO;
			} else {
				fprintf(stderr, "forwarder: --mode wants copy, zerocopy or auto, got '%s'\n",
					optarg);
				return -1;
			}
			break;
		case O_TWINS:
			o->tx_twins = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 1;
		default:
			fprintf(stderr, "forwarder: unknown option or missing value: %s; "
				"see forwarder --help\n", argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "forwarder: unexpected argument '%s'; see forwarder --help\n",
			argv[optind]);
		return -1;
	}
	if (!o->outer_if[0] || !o->inner_if[0]) {
		fprintf(stderr, "forwarder: --outer and --inner are required; see forwarder --help\n");
		return -1;
	}
	if (no_markers)
		o->trace_dir = NULL;
	if (o->mode == MODE_ZEROCOPY && o->skb_mode) {
		fprintf(stderr, "forwarder: --mode zerocopy needs native XDP; drop --skb-mode\n");
		return -1;
	}
	if (o->inject == INJECT_FLIP_PAYLOAD && !o->payload_port) {
		fprintf(stderr, "forwarder: --inject flip-payload corrupts stamped packets; give "
			"--payload-port PORT\n");
		return -1;
	}
	if (o->frames / (2 * o->queues) < 2 * o->batch) {
		fprintf(stderr, "forwarder: --frames %u is too few for %u queues and batch %u; "
			"give at least %u\n", o->frames, o->queues, o->batch,
			4 * o->queues * o->batch);
		return -1;
	}
	return 0;
}
