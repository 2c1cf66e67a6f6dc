// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "netns.h"

int netns_open(struct netns *ns, const char *path)
{
	snprintf(ns->path, sizeof(ns->path), "%s", path);
	if (strcmp(path, "-") == 0)
		path = "/proc/self/ns/net";
	ns->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (ns->fd < 0) {
		fprintf(stderr, "forwarder: cannot open network namespace %s: %s; "
			"create it with `ip netns add NAME` and pass /run/netns/NAME, or - for this one\n",
			path, strerror(errno));
		return -1;
	}
	return 0;
}

void netns_close(struct netns *ns)
{
	if (ns->fd >= 0)
		close(ns->fd);
	ns->fd = -1;
}

int netns_enter(const struct netns *ns)
{
	if (setns(ns->fd, CLONE_NEWNET) < 0) {
		fprintf(stderr, "forwarder: setns(%s): %s; run as root (CAP_SYS_ADMIN)\n",
			ns->path, strerror(errno));
		return -1;
	}
	return 0;
}
