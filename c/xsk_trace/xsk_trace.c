// SPDX-License-Identifier: GPL-2.0
/* xsk_trace: load and attach flightrec's BPF tracepoint programs
 * (xsk_trace.bpf.c), say so on stdout, and detach them on SIGINT/SIGTERM.
 *
 *   xsk_trace [--dev NETNS_INODE:IFINDEX]... [--probe]
 *
 * Nothing is pinned: the programs live only as long as this process holds
 * their links, so even a SIGKILL leaves nothing attached.
 * stdout: {"event":"ready",...} once attached, {"event":"exit",...} at the end.
 * Exit: 0 detached cleanly (or --probe succeeded); 2 bad options or the
 * kernel refused, with one line on stderr. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "xsk_trace.h"
#include "xsk_trace.skel.h"

static void usage(FILE *out)
{
	fprintf(out, "usage: xsk_trace [--dev NETNS_INODE:IFINDEX]... [--probe]\n"
		     "  --dev    trace only sockets bound to this device (repeatable; default: all)\n"
		     "  --probe  load, attach, detach and exit 0: can this kernel run the backend?\n");
}

/* libbpf's own messages: warnings only, on stderr, so a refusal says why. */
static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG || level == LIBBPF_INFO)
		return 0;
	return vfprintf(stderr, fmt, args);
}

static int parse_dev(const char *text, struct xsk_trace_dev *dev)
{
	unsigned long netns, ifindex;
	char *end;

	errno = 0;
	netns = strtoul(text, &end, 10);
	if (errno || end == text || *end != ':' || netns == 0 || netns > 0xffffffffUL)
		return -1;
	text = end + 1;
	ifindex = strtoul(text, &end, 10);
	if (errno || end == text || *end || ifindex == 0 || ifindex > 0xffffffffUL)
		return -1;
	dev->netns = netns;
	dev->ifindex = ifindex;
	return 0;
}

/* Long by nature: options, load, filter, attach, wait, detach: one sequence in which every
 * failure says why and destroys the skeleton, so nothing stays attached. */
int main(int argc, char **argv)
{
	struct xsk_trace_dev devs[XSK_TRACE_MAX_DEVS];
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	struct xsk_trace_bpf *skel;
	int ndevs = 0, probe = 0, sig, i, err;
	__u8 one = 1;
	sigset_t set;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--probe")) {
			probe = 1;
		} else if (!strcmp(argv[i], "--dev") && i + 1 < argc) {
			if (ndevs == XSK_TRACE_MAX_DEVS) {
				fprintf(stderr, "xsk_trace: at most %d --dev\n", XSK_TRACE_MAX_DEVS);
				return 2;
			}
			if (parse_dev(argv[++i], &devs[ndevs])) {
				fprintf(stderr, "xsk_trace: --dev wants NETNS_INODE:IFINDEX (decimal), got '%s'\n",
					argv[i]);
				return 2;
			}
			ndevs++;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "xsk_trace: unknown option '%s'; try --help\n", argv[i]);
			return 2;
		}
	}

	/* Block the stop signals before attaching: they are taken with sigwait,
	 * so one arriving during set-up waits and still detaches cleanly. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);

	libbpf_set_print(print_libbpf);
	/* Can fail even for root (memory is charged to the cgroup); not fatal. */
	setrlimit(RLIMIT_MEMLOCK, &unlimited);

	skel = xsk_trace_bpf__open();
	if (!skel) {
		fprintf(stderr, "xsk_trace: cannot open the BPF object: %s\n", strerror(errno));
		return 2;
	}
	skel->rodata->filter_devs = ndevs > 0;
	err = xsk_trace_bpf__load(skel);
	if (err) {
		fprintf(stderr, "xsk_trace: the kernel refused to load the tracepoint programs: %s "
				"(needs BTF, CONFIG_BPF_EVENTS and root)\n", strerror(-err));
		xsk_trace_bpf__destroy(skel);
		return 2;
	}
	for (i = 0; i < ndevs; i++) {
		if (bpf_map__update_elem(skel->maps.devs, &devs[i], sizeof(devs[i]), &one, sizeof(one), BPF_ANY)) {
			fprintf(stderr, "xsk_trace: cannot fill the device filter: %s\n", strerror(errno));
			xsk_trace_bpf__destroy(skel);
			return 2;
		}
	}
	err = xsk_trace_bpf__attach(skel);
	if (err) {
		fprintf(stderr, "xsk_trace: the kernel refused to attach the tracepoint programs: %s\n",
			strerror(-err));
		xsk_trace_bpf__destroy(skel);
		return 2;
	}
	printf("{\"event\":\"%s\",\"programs\":[\"raw_tp/xdp_redirect\",\"tp_btf/napi_poll\",\"tp_btf/netif_rx\"],"
	       "\"devs\":%d,\"pid\":%d}\n", probe ? "probe" : "ready", ndevs, getpid());
	fflush(stdout);

	if (!probe) {
		do {
			err = sigwait(&set, &sig);
		} while (err == EINTR);
	}
	/* Destroying the skeleton closes the links: the programs detach. */
	xsk_trace_bpf__destroy(skel);
	printf("{\"event\":\"exit\",\"code\":0,\"reason\":\"%s\"}\n", probe ? "probe" : strsignal(sig));
	fflush(stdout);
	return 0;
}
