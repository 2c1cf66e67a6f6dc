#!/bin/sh
# Fetch a Debian cloud kernel's debug vmlinux (the -dbg package) into a cache.
#
# usage: scripts/fetch-debug-kernel.sh [6.1|6.12 ...]     (default: 6.1)
#
# For each series it picks the newest linux-image-<series>.*-cloud-amd64-dbg
# that apt knows, downloads it with `apt-get download` and extracts only
# usr/lib/debug/boot/vmlinux-* with dpkg-deb. The .deb (~300 MB) is deleted
# once the vmlinux (~600 MB) is out. It also takes net/xdp/ from the
# linux-source-<series> of the same version (~140 MB .deb, deleted too), so
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
#   scripts/fetch-debug-kernel.sh 6.1 6.12
set -eu

cache=${FLIGHTREC_KERNEL_CACHE:-/var/cache/flightrec/kernels}
[ $# -gt 0 ] || set -- 6.1

die() { echo "fetch-debug-kernel: $*" >&2; exit 2; }

command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian's apt"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
mkdir -p "$cache" || die "cannot create $cache (root?)"

# fetch_source SERIES PKG DIR: net/xdp/ of linux-source-SERIES at PKG's version.
# Missing source is not fatal: the tests that need it skip.
fetch_source() {
	[ -s "$3/src/net/xdp/xsk.c" ] && return 0
	version=$(apt-cache show "$2" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
	src=linux-source-$1
	if ! apt-cache show "$src=$version" >/dev/null 2>&1; then
		echo "fetch-debug-kernel: no $src=$version in apt: source lines not checked" >&2
		return 0
	fi
	rm -rf "$3/srcdeb" "$3/src" && mkdir -p "$3/srcdeb" "$3/src"
	echo "fetch-debug-kernel: downloading $src=$version (~140 MB) for net/xdp/" >&2
	if (cd "$3/srcdeb" && apt-get download -q "$src=$version" >&2) &&
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
	*) die "unknown series '$series' (try 6.1 or 6.12)" ;;
	esac
	# apt-cache reads only the local lists: no network for a cached run.
	pkg=$(apt-cache search --names-only "$pattern" | cut -d' ' -f1 | sort -V | tail -n1)
	[ -n "$pkg" ] || die "no package matches $pattern: run apt-get update (for 6.12: bookworm-security or bookworm-backports in sources)"
	dir=$cache/$pkg
	mkdir -p "$dir"
	fetch_source "$series" "$pkg" "$dir"
	if [ -s "$dir/vmlinux" ]; then
		echo "$dir/vmlinux"
		continue
	fi
	# A leftover .deb from an interrupted run is reused, not downloaded again.
	deb=$(ls "$dir"/"$pkg"_*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$deb" ]; then
		echo "fetch-debug-kernel: downloading $pkg (~300 MB)" >&2
		(cd "$dir" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
		deb=$(ls "$dir"/"$pkg"_*.deb | head -n1)
	fi
	# One pass over the archive: unpack only the vmlinux into a scratch dir.
	tmp=$dir/unpack
	rm -rf "$tmp" && mkdir -p "$tmp"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/lib/debug/boot/vmlinux-*' ||
		die "extracting usr/lib/debug/boot/vmlinux-* from $deb failed"
	found=
	for f in "$tmp"/usr/lib/debug/boot/vmlinux-*; do [ -s "$f" ] && found=$f; done
	[ -n "$found" ] || die "$deb holds no usr/lib/debug/boot/vmlinux-*"
	basename "$found" >"$dir/release"
	mv "$found" "$dir/vmlinux"
	rm -rf "$tmp"
	rm -f "$deb"
	echo "$dir/vmlinux"
done
