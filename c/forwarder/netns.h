/* SPDX-License-Identifier: GPL-2.0 */
/* Entering the network namespace of an interface. AF_XDP bind() looks the
 * ifindex up in the socket's netns (xsk_bind -> dev_get_by_index(sock_net)),
 * and a socket belongs to the netns its creator was in: so create each socket
 * while this thread is in the interface's namespace. */
#ifndef FLIGHTREC_NETNS_H
#define FLIGHTREC_NETNS_H

struct netns {
	char path[256]; /* "-" for the namespace we started in */
	int fd;         /* -1 for "-" */
};

/* Opens path ("-" = current). Returns 0, or -1 with a message on stderr. */
int netns_open(struct netns *ns, const char *path);
void netns_close(struct netns *ns);
/* Moves the calling thread into ns (a no-op for "-" when home is current). */
int netns_enter(const struct netns *ns);

#endif
