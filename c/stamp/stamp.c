// SPDX-License-Identifier: GPL-2.0
/* stamp: flightrec's self-verifying UDP traffic (stamp.h is the format).
 *
 *   stamp send --to IP:PORT [--netns PATH] [--flows N] [--rate PPS] [--len MIN[-MAX]]
 *              [--duration S] [--stats PATH]
 *   stamp recv --bind IP:PORT [--netns PATH] [--trace-dir DIR] [--keep-going]
 *              [--duration S] [--stats PATH]
 *
 * The sender sends with UDP checksums off (SO_NO_CHECK): a payload corrupted
 * after the checksum was made would otherwise be dropped by the receiving
 * kernel (UDP_MIB_CSUMERRORS) instead of reaching the check. The receiver
 * checks every datagram; on the first corrupt one it writes the detection
 * line to DIR/trace_marker and "0" to DIR/tracing_on, prints an "anomaly"
 * line and exits 3 (with --keep-going it counts on until its time is up).
 * Exit codes: 0 clean, 3 corrupt payload seen (recv), 2 bad options or set-up. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "stamp.h"

#define BATCH 32
#define MAX_FLOWS 64
#define MAX_LISTED 4096 /* corrupt packet numbers kept for the stats */

static const char usage[] =
"Usage: stamp send --to IP:PORT [options]\n"
"       stamp recv --bind IP:PORT [options]\n"
"\n"
"Self-verifying UDP traffic for flightrec: every payload carries its packet\n"
"number, its length and a stamp of the number in every 32-bit word\n"
"(c/stamp/stamp.h). `recv` checks each datagram and reports the first corrupt\n"
"one as a detection line in a tracefs instance, then stops tracing.\n"
"\n"
"Options:\n"
"  --netns PATH       enter this network namespace first (/run/netns/NAME)\n"
"  --to IP:PORT       send: destination (IPv4)\n"
"  --bind IP:PORT     recv: address to receive on\n"
"  --flows N          send: sockets (source ports) sending in turn (default 4)\n"
"  --rate PPS         send: packets per second over all flows (default 20000;\n"
"                     0 = as fast as possible)\n"
"  --len MIN[-MAX]    send: payload bytes, varying between MIN and MAX\n"
"                     (default 64-1400; 16 to 1472)\n"
"  --stale-every N    send: every Nth packet of a flow carries its flow's\n"
"                     previous packet's body under its own header, as a\n"
"                     frame published before it was written would (a test\n"
"                     of the checks; default 0: never)\n"
"  --trace-dir DIR    recv: tracefs instance for the detection line\n"
"  --keep-going       recv: count every corrupt datagram until the end\n"
"                     instead of exiting 3 at the first\n"
"  --duration S       stop after S seconds (default 0: until SIGINT/SIGTERM)\n"
"  --stats PATH       write the counters as JSON at exit\n"
"  -h, --help         this text\n"
"\n"
"Exit codes: 0 clean, 3 corrupt payload received, 2 bad options or set-up.\n"
"\n"
"Examples:\n"
"  stamp recv --netns /run/netns/srv --bind 10.0.0.2:5203 \\\n"
"      --trace-dir /sys/kernel/tracing/instances/fr1\n"
"  stamp send --netns /run/netns/cli --to 10.0.0.2:5203 --flows 4 --rate 50000 --duration 10\n"
"  stamp recv --bind 127.0.0.1:5203 --keep-going --duration 5 --stats /tmp/recv.json\n";

struct opts {
	int send;
	const char *netns, *trace_dir, *stats;
	struct sockaddr_in addr;
	unsigned flows, stale_every;
	double rate, duration;
	uint32_t len_min, len_max;
	int keep_going;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_addr(const char *opt, const char *arg, struct sockaddr_in *out)
{
	char host[64];
	const char *colon = strrchr(arg, ':');
	char *end;
	long port;

	if (!colon || (size_t)(colon - arg) >= sizeof(host))
		goto bad;
	memcpy(host, arg, (size_t)(colon - arg));
	host[colon - arg] = '\0';
	port = strtol(colon + 1, &end, 10);
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	if (*end || end == colon + 1 || port < 1 || port > 65535 || inet_pton(AF_INET, host, &out->sin_addr) != 1)
		goto bad;
	out->sin_port = htons((uint16_t)port);
	return 0;
bad:
	fprintf(stderr, "stamp: --%s wants IPV4:PORT (e.g. 10.0.0.2:5203), got '%s'\n", opt, arg);
	return -1;
}

static int parse_num(const char *opt, const char *arg, double min, double max, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(arg, &end);
	if (errno || end == arg || *end || !(*out >= min) || *out > max) {
		fprintf(stderr, "stamp: --%s wants a number from %g to %g, got '%s'\n", opt, min, max, arg);
		return -1;
	}
	return 0;
}

static int parse_len(const char *arg, struct opts *o)
{
	unsigned long a, b;
	char *end;

	errno = 0;
	a = strtoul(arg, &end, 10);
	b = a;
	if (*end == '-')
		b = strtoul(end + 1, &end, 10);
	if (errno || *end || arg[0] == '-' || a < STAMP_MIN_LEN || b < a || b > 1472) {
		fprintf(stderr, "stamp: --len wants MIN or MIN-MAX bytes within 16-1472, got '%s'\n", arg);
		return -1;
	}
	o->len_min = (uint32_t)a;
	o->len_max = (uint32_t)b;
	return 0;
}

static int parse(struct opts *o, int argc, char **argv)
{
	int i;
	double v;

	memset(o, 0, sizeof(*o));
	o->flows = 4;
	o->rate = 20000;
	o->len_min = 64;
	o->len_max = 1400;
	if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? -1 : 1;
	}
	if (!strcmp(argv[1], "send")) {
		o->send = 1;
	} else if (strcmp(argv[1], "recv")) {
		fprintf(stderr, "stamp: the first word is send or recv, got '%s'; see stamp --help\n", argv[1]);
		return -1;
	}
	for (i = 2; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage, stdout);
			return 1;
		}
		if (!strcmp(a, "--keep-going")) {
			o->keep_going = 1;
			continue;
		}
		if (!val) {
			fprintf(stderr, "stamp: %s needs a value; see stamp --help\n", a);
			return -1;
		}
		i++;
		if (!strcmp(a, "--netns")) {
			o->netns = val;
		} else if (!strcmp(a, "--trace-dir") && !o->send) {
			o->trace_dir = val;
		} else if (!strcmp(a, "--stats")) {
			o->stats = val;
		} else if ((!strcmp(a, "--to") && o->send) || (!strcmp(a, "--bind") && !o->send)) {
			if (parse_addr(a + 2, val, &o->addr))
				return -1;
		} else if (!strcmp(a, "--flows") && o->send) {
			if (parse_num("flows", val, 1, MAX_FLOWS, &v))
				return -1;
			o->flows = (unsigned)v;
		} else if (!strcmp(a, "--stale-every") && o->send) {
			if (parse_num("stale-every", val, 0, 1e9, &v))
				return -1;
			o->stale_every = (unsigned)v;
		} else if (!strcmp(a, "--rate") && o->send) {
			if (parse_num("rate", val, 0, 1e8, &o->rate))
				return -1;
		} else if (!strcmp(a, "--len") && o->send) {
			if (parse_len(val, o))
				return -1;
		} else if (!strcmp(a, "--duration")) {
			if (parse_num("duration", val, 0, 86400.0 * 365, &o->duration))
				return -1;
		} else {
			fprintf(stderr, "stamp %s: unknown option %s; see stamp --help\n", argv[1], a);
			return -1;
		}
	}
	if (!o->addr.sin_port) {
		fprintf(stderr, "stamp %s: %s IP:PORT is required; see stamp --help\n", argv[1],
			o->send ? "--to" : "--bind");
		return -1;
	}
	return 0;
}

static int enter_netns(const char *path)
{
	int fd;

	if (!path)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
		fprintf(stderr, "stamp: cannot enter network namespace %s: %s; pass /run/netns/NAME as root\n",
			path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static FILE *open_stats(const char *path)
{
	FILE *f = path ? fopen(path, "w") : NULL;

	if (path && !f)
		fprintf(stderr, "stamp: cannot write %s: %s\n", path, strerror(errno));
	return f;
}

/* ---- send ----------------------------------------------------------------- */

static uint32_t payload_len(const struct opts *o, uint32_t pkt)
{
	uint32_t span = o->len_max - o->len_min + 1;

	return o->len_min + (uint32_t)((pkt * 2654435761u) >> 8) % span;
}

/* Long by nature: one sendmmsg loop, paced, building each batch's stamped datagrams in place. */
static int do_send(const struct opts *o)
{
	static uint8_t bufs[MAX_FLOWS][BATCH][1472];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	int fds[MAX_FLOWS], one = 1;
	uint64_t counter[MAX_FLOWS] = { 0 }, sent = 0, errors = 0, bytes = 0;
	unsigned f, i;
	double t0, t, allowed;
	FILE *st;

	for (f = 0; f < o->flows; f++) {
		fds[f] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (fds[f] < 0 || setsockopt(fds[f], SOL_SOCKET, SO_NO_CHECK, &one, sizeof(one)) ||
		    connect(fds[f], (const struct sockaddr *)&o->addr, sizeof(o->addr))) {
			fprintf(stderr, "stamp send: socket to %s:%u: %s; is the route there (ip route)?\n",
				inet_ntoa(o->addr.sin_addr), ntohs(o->addr.sin_port), strerror(errno));
			return 2;
		}
	}
	printf("{\"event\":\"ready\",\"pid\":%d,\"flows\":%u}\n", getpid(), o->flows);
	fflush(stdout);
	t0 = now();
	for (f = 0; !stop; f = (f + 1) % o->flows) {
		unsigned n = BATCH;
		int r;

		t = now() - t0;
		if (o->duration && t >= o->duration)
			break;
		if (o->rate > 0) {
			/* whole batches: one sendmmsg a batch, sleeping for the next */
			allowed = o->rate * t - (double)sent;
			if (allowed < BATCH) {
				struct timespec ts = { 0, (long)((BATCH - allowed) / o->rate * 1e9) + 1000 };

				nanosleep(&ts, NULL);
				continue;
			}
		}
		for (i = 0; i < n; i++) {
			/* flow f sends f, f + flows, f + 2 flows, ...: numbers unique over flows */
			uint32_t pkt = (uint32_t)((counter[f] + i) * o->flows + f), len = payload_len(o, pkt);

			stamp_fill(bufs[f][i], len, pkt);
			if (o->stale_every && pkt >= o->flows && (counter[f] + i) % o->stale_every == 0) {
				/* the previous packet's body, this packet's header and length */
				stamp_fill(bufs[f][i], len, pkt - o->flows);
				memcpy(bufs[f][i] + 4, &pkt, 4);
			}
			iov[i].iov_base = bufs[f][i];
			iov[i].iov_len = len;
			memset(&msgs[i], 0, sizeof(msgs[i]));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		r = sendmmsg(fds[f], msgs, n, MSG_DONTWAIT);
		if (r < 0) {
			errors++;
			if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED && errno != EINTR) {
				fprintf(stderr, "stamp send: sendmmsg: %s\n", strerror(errno));
				return 2;
			}
			continue;
		}
		/* numbers of datagrams not sent are used again: no gap on the wire */
		counter[f] += (unsigned)r;
		sent += (unsigned)r;
		for (i = 0; i < (unsigned)r; i++)
			bytes += iov[i].iov_len;
	}
	t = now() - t0;
	printf("{\"event\":\"exit\",\"sent\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"pps\":%.0f}\n",
	       (unsigned long long)sent, (unsigned long long)errors, t, t > 0 ? sent / t : 0.0);
	st = open_stats(o->stats);
	if (st) {
		fprintf(st, "{\"sent\":%llu,\"bytes\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"flows\":%u,"
			"\"rate\":%.0f}\n", (unsigned long long)sent, (unsigned long long)bytes,
			(unsigned long long)errors, t, o->flows, o->rate);
		fclose(st);
	}
	return 0;
}

/* ---- recv ----------------------------------------------------------------- */

struct flow_seen {
	uint16_t port;
	uint32_t last;
};

struct recv_stats {
	uint64_t received, bytes, corrupt, out_of_order;
	uint32_t listed[MAX_LISTED];
	long long listed_found[MAX_LISTED];
	unsigned nlisted;
	struct flow_seen flows[MAX_FLOWS];
	unsigned nflows;
};

/* Order per source port: counted, never a detection (loss is the sender's
 * count minus ours). */
static void note_order(struct recv_stats *s, uint16_t port, uint32_t pkt)
{
	unsigned i;

	for (i = 0; i < s->nflows && s->flows[i].port != port; i++)
		;
	if (i == s->nflows) {
		if (s->nflows == MAX_FLOWS)
			return;
		s->flows[s->nflows++] = (struct flow_seen){ port, pkt };
		return;
	}
	if ((int32_t)(pkt - s->flows[i].last) <= 0)
		s->out_of_order++;
	else
		s->flows[i].last = pkt;
}

/* Long by nature: one recvmmsg loop that checks each datagram's stamp as it comes. */
static int do_recv(const struct opts *o, int marker_fd, int tracing_on_fd)
{
	static uint8_t bufs[BATCH][2048];
	struct sockaddr_in from[BATCH];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct timeval tv = { 0, 100 * 1000 };
	static struct recv_stats s;
	int fd, size = 16 << 20, code = 0, i;
	double t0;
	char line[256], first[256] = "";
	FILE *st;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (const struct sockaddr *)&o->addr, sizeof(o->addr))) {
		fprintf(stderr, "stamp recv: bind %s:%u: %s; is the address on an interface here?\n",
			inet_ntoa(o->addr.sin_addr), ntohs(o->addr.sin_port), strerror(errno));
		return 2;
	}
	/* root may go past rmem_max: bursts must not be lost before the check */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	printf("{\"event\":\"ready\",\"pid\":%d}\n", getpid());
	fflush(stdout);
	t0 = now();
	while (!stop && !(o->duration && now() - t0 >= o->duration) && !(code && !o->keep_going)) {
		int n;

		for (i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof(bufs[i]);
			memset(&msgs[i], 0, sizeof(msgs[i]));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
		}
		n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			fprintf(stderr, "stamp recv: recvmmsg: %s\n", strerror(errno));
			code = code ? code : 2;
			break;
		}
		for (i = 0; i < n; i++) {
			struct stamp_bad bad;
			uint32_t len = msgs[i].msg_len;

			s.received++;
			s.bytes += len;
			if (stamp_check(bufs[i], len, &bad)) {
				note_order(&s, ntohs(from[i].sin_port), stamp_load(bufs[i] + 4));
				continue;
			}
			s.corrupt++;
			if (s.nlisted < MAX_LISTED) {
				s.listed[s.nlisted] = (uint32_t)bad.expected;
				s.listed_found[s.nlisted++] = bad.found;
			}
			if (code)
				continue;
			code = 3;
			snprintf(line, sizeof(line), "receiver udp:%u: ", ntohs(o->addr.sin_port));
			stamp_format(line + strlen(line), sizeof(line) - strlen(line), &bad);
			snprintf(first, sizeof(first), "%s", line);
			/* the detection line, then stop tracing at once, as the forwarder does */
			if (marker_fd >= 0 && write(marker_fd, line, strlen(line)) < 0)
				fprintf(stderr, "stamp recv: trace_marker: %s\n", strerror(errno));
			if (tracing_on_fd >= 0 && write(tracing_on_fd, "0", 1) < 0)
				fprintf(stderr, "stamp recv: tracing_on: %s\n", strerror(errno));
			printf("{\"event\":\"anomaly\",\"kind\":\"payload\",\"line\":\"%s\",\"tracing_stopped\":%s}\n",
			       line, tracing_on_fd >= 0 ? "true" : "false");
			fflush(stdout);
		}
	}
	printf("{\"event\":\"exit\",\"code\":%d,\"received\":%llu,\"corrupt\":%llu,\"out_of_order\":%llu}\n",
	       code, (unsigned long long)s.received, (unsigned long long)s.corrupt,
	       (unsigned long long)s.out_of_order);
	st = open_stats(o->stats);
	if (st) {
		unsigned k;

		fprintf(st, "{\"exit_code\":%d,\"received\":%llu,\"bytes\":%llu,\"corrupt\":%llu,\"out_of_order\":%llu,"
			"\"seconds\":%.3f,\"first\":\"%s\",\"corrupt_pkts\":[", code,
			(unsigned long long)s.received, (unsigned long long)s.bytes, (unsigned long long)s.corrupt,
			(unsigned long long)s.out_of_order, now() - t0, first);
		for (k = 0; k < s.nlisted; k++)
			fprintf(st, "%s%u", k ? "," : "", s.listed[k]);
		fprintf(st, "],\"corrupt_found\":[");
		for (k = 0; k < s.nlisted; k++)
			fprintf(st, "%s%lld", k ? "," : "", s.listed_found[k]);
		fprintf(st, "]}\n");
		fclose(st);
	}
	close(fd);
	return code;
}

static int open_trace(const char *dir, const char *name)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "stamp recv: cannot open %s: %s; --trace-dir must be a tracefs instance\n",
			path, strerror(errno));
	return fd;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	int marker_fd = -1, tracing_on_fd = -1, rc;
	struct opts o;

	rc = parse(&o, argc, argv);
	if (rc)
		return rc > 0 ? 0 : 2;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* tracefs before setns: `ip netns exec` style namespaces hide /sys's mounts */
	if (o.trace_dir) {
		marker_fd = open_trace(o.trace_dir, "trace_marker");
		tracing_on_fd = marker_fd >= 0 ? open_trace(o.trace_dir, "tracing_on") : -1;
		if (tracing_on_fd < 0)
			return 2;
	}
	if (enter_netns(o.netns))
		return 2;
	rc = o.send ? do_send(&o) : do_recv(&o, marker_fd, tracing_on_fd);
	if (marker_fd >= 0)
		close(marker_fd);
	if (tracing_on_fd >= 0)
		close(tracing_on_fd);
	return rc;
}
