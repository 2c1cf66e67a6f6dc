// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "xdp_prog.h"

int xdp_prog_load(struct xdp_prog *p, const char *path, const char *ifname)
{
	struct bpf_program *prog;
	int err;

	memset(p, 0, sizeof(*p));
	p->prog_fd = p->xsks_fd = -1;
	p->ifname = ifname;
	p->obj = bpf_object__open_file(path, NULL);
	if (!p->obj) {
		err = -errno;
		p->obj = NULL;
		fprintf(stderr, "forwarder: cannot open XDP object %s: %s; run `make build` "
			"or pass --xdp-prog PATH\n", path, strerror(-err));
		return -1;
	}
	err = bpf_object__load(p->obj);
	if (err) {
		fprintf(stderr, "forwarder: loading %s failed: %s; root and a kernel with "
			"CONFIG_XDP_SOCKETS are needed\n", path, strerror(-err));
		return -1;
	}
	prog = bpf_object__find_program_by_name(p->obj, "xdp_meta");
	p->prog_fd = prog ? bpf_program__fd(prog) : -1;
	p->xsks_fd = bpf_object__find_map_fd_by_name(p->obj, "xsks");
	if (p->prog_fd < 0 || p->xsks_fd < 0) {
		fprintf(stderr, "forwarder: %s has no program xdp_meta or map xsks; "
			"is it xdp_meta.bpf.o (c/forwarder/xdp_meta.bpf.c)?\n", path);
		return -1;
	}
	return 0;
}

int xdp_prog_attach(struct xdp_prog *p, int ifindex, bool skb_only, bool native_only)
{
	int err = -EOPNOTSUPP;

	if (!skb_only)
		err = bpf_xdp_attach(ifindex, p->prog_fd,
			     XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
	if (!err) {
		p->flags = XDP_FLAGS_DRV_MODE;
	} else {
		if (err == -EEXIST || err == -EBUSY) {
			fprintf(stderr, "forwarder: %s already has an XDP program; remove it with "
				"`ip link set dev %s xdp off` in its namespace\n", p->ifname, p->ifname);
			return -1;
		}
		if (native_only) {
			fprintf(stderr, "forwarder: zero-copy needs native XDP on %s, and the driver "
				"refused it (%s); check dmesg (offloads, MTU) or use --mode copy\n",
				p->ifname, strerror(-err));
			return -1;
		}
		if (!skb_only)
			fprintf(stderr, "forwarder: native XDP on %s refused (%s); using generic "
				"(SKB) mode\n", p->ifname, strerror(-err));
		err = bpf_xdp_attach(ifindex, p->prog_fd,
				     XDP_FLAGS_SKB_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
		if (err) {
			fprintf(stderr, "forwarder: attaching XDP to %s failed: %s; check "
				"`ip link show %s` in its namespace\n", p->ifname, strerror(-err),
				p->ifname);
			return -1;
		}
		p->flags = XDP_FLAGS_SKB_MODE;
	}
	p->ifindex = ifindex;
	return 0;
}

void xdp_prog_detach(struct xdp_prog *p)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = p->prog_fd);
	int err;

	if (!p->ifindex)
		return;
	err = bpf_xdp_detach(p->ifindex, p->flags | XDP_FLAGS_REPLACE, &opts);
	if (err && err != -ENODEV)
		fprintf(stderr, "forwarder: detaching XDP from %s: %s; remove it with "
			"`ip link set dev %s xdp off`\n", p->ifname, strerror(-err), p->ifname);
	p->ifindex = 0;
}

int xdp_prog_set_xsk(struct xdp_prog *p, unsigned queue, int xsk_fd)
{
	__u32 key = queue, val = (__u32)xsk_fd;

	if (bpf_map_update_elem(p->xsks_fd, &key, &val, 0)) {
		fprintf(stderr, "forwarder: adding %s q:%u to the XSKMAP: %s\n", p->ifname,
			queue, strerror(errno));
		return -1;
	}
	return 0;
}

void xdp_prog_free(struct xdp_prog *p)
{
	bpf_object__close(p->obj); /* NULL-safe */
	p->obj = NULL;
	p->prog_fd = p->xsks_fd = -1;
}
