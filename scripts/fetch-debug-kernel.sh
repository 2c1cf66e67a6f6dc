#!/bin/sh
# Fetch a Debian cloud kernel's debug vmlinux (the -dbg package) into a cache.
#
# usage: scripts/fetch-debug-kernel.sh [6.1|6.12|7.3 ...]     (default: 6.1)
#
# For each series it picks the newest linux-image-<series>.*-cloud-amd64-dbg
# that apt knows, downloads it with `apt-get download NAME=VERSION` (7.3 comes
# from trixie-backports, pinned so that apt installs nothing from it: see
# scripts/apt/) and extracts only the vmlinux with dpkg-deb (Debian 12:
# usr/lib/debug/boot/vmlinux-*; Debian 13: a link there to
# usr/lib/debug/lib/modules/<release>/vmlinux). The .deb (~350 MB) is deleted
# once the vmlinux (340-600 MB) is out. It also takes net/xdp/ from the
# linux-source-<series> of the same version (~140-170 MB .deb, deleted too), so
# tests can read the source line a probe site names. Cached: when both are
# there, nothing is downloaded. Prints one vmlinux path per series.
# A first run takes about 1-2 minutes on a fast mirror; a cached run < 1 s.
#
# Cache: $FLIGHTREC_KERNEL_CACHE, default /var/cache/flightrec/kernels
#   <cache>/<package>/vmlinux   the debug kernel image
#   <cache>/<package>/release   its name, vmlinux-<uname -r>
#   <cache>/<package>/src/net/xdp/   the matching source, when apt has it
#
# Examples:
#   scripts/fetch-debug-kernel.sh
#   scripts/fetch-debug-kernel.sh 6.1 6.12 7.3
set -eu

cache=${FLIGHTREC_KERNEL_CACHE:-/var/cache/flightrec/kernels}
[ $# -gt 0 ] || set -- 6.1

die() { echo "fetch-debug-kernel: $*" >&2; exit 2; }

command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian's apt"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
mkdir -p "$cache" || die "cannot create $cache (root?)"

# fetch_source SERIES VERSION DIR: net/xdp/ of linux-source-SERIES at VERSION.
# Missing source is not fatal: the tests that need it skip.
fetch_source() {
	[ -s "$3/src/net/xdp/xsk.c" ] && return 0
	src=linux-source-$1 version=$2
	if ! apt-cache show "$src=$version" >/dev/null 2>&1; then
		echo "fetch-debug-kernel: no $src=$version in apt: source lines not checked" >&2
		return 0
	fi
	rm -rf "$3/srcdeb" "$3/src" && mkdir -p "$3/srcdeb" "$3/src"
	echo "fetch-debug-kernel: downloading $src=$version (~140-170 MB) for net/xdp/" >&2
	if (cd "$3/srcdeb" && apt-get download -q -o APT::Sandbox::User=root "$src=$version" >&2) &&
		dpkg-deb --fsys-tarfile "$3"/srcdeb/*.deb | tar -xO "./usr/src/$src.tar.xz" | xz -dc |
		tar -x -C "$3/src" --strip-components=1 --wildcards "$src/net/xdp/*"; then
		rm -rf "$3/srcdeb"
	else
		rm -rf "$3/srcdeb" "$3/src"
		echo "fetch-debug-kernel: could not get $src=$version: source lines not checked" >&2
	fi
}

for series in "$@"; do
	case $series in
	6.1) pattern='^linux-image-6\.1\.[0-9].*-cloud-amd64-dbg$' ;;
	6.12) pattern='^linux-image-6\.12\.[0-9].*-cloud-amd64-dbg$' ;;
	7.3) pattern='^linux-image-7\.3\.[0-9].*-cloud-amd64-dbg$' ;;
	*) die "unknown series '$series' (try 6.1, 6.12 or 7.3)" ;;
	esac
	# apt-cache reads only the local lists: no network for a cached run. Not
	# `apt-cache search`: it skips packages without a candidate, as pinned-away
	# trixie-backports' are; pkgnames lists them (and names no version
	# provides, hence the Version check).
	pkg=
	for name in $(apt-cache pkgnames "linux-image-$series." | grep -E "$pattern" | sort -Vr); do
		if apt-cache show "$name" 2>/dev/null | grep -q '^Version: '; then pkg=$name; break; fi
	done
	if [ -z "$pkg" ]; then
		[ "$series" != 7.3 ] || grep -qs trixie-backports /etc/apt/sources.list.d/flightrec-kernels.sources ||
			die "7.3 comes from trixie-backports, which apt's sources lack: run make setup (scripts/install-deps.sh adds them)"
		die "no package matches $pattern: run apt-get update (for 6.12: bookworm-security in sources)"
	fi
	# By exact version: a pinned-away suite (trixie-backports) gives apt no candidate.
	version=$(apt-cache show "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
	dir=$cache/$pkg
	mkdir -p "$dir"
	fetch_source "$series" "$version" "$dir"
	if [ -s "$dir/vmlinux" ]; then
		echo "$dir/vmlinux"
		continue
	fi
	# A leftover .deb from an interrupted run is reused, not downloaded again.
	deb=$(ls "$dir"/"$pkg"_*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$deb" ]; then
		echo "fetch-debug-kernel: downloading $pkg=$version (~350 MB)" >&2
		(cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$version" >&2) ||
			die "apt-get download $pkg=$version failed (if the mirror no longer has it: apt-get update)"
		deb=$(ls "$dir"/"$pkg"_*.deb | head -n1)
	fi
	# One pass over the archive: unpack only the vmlinux (and the links to it)
	# into a scratch dir; boot/vmlinux-<release> names the release either way.
	tmp=$dir/unpack
	rm -rf "$tmp" && mkdir -p "$tmp"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/lib/debug/*vmlinux*' ||
		die "extracting the vmlinux from $deb failed"
	found=
	for f in "$tmp"/usr/lib/debug/boot/vmlinux-*; do [ -s "$f" ] && found=$f; done
	[ -n "$found" ] || die "$deb holds no usr/lib/debug/boot/vmlinux-*"
	basename "$found" >"$dir/release"
	mv "$(readlink -f "$found")" "$dir/vmlinux"
	rm -rf "$tmp"
	rm -f "$deb"
	echo "$dir/vmlinux"
done
