#!/usr/bin/env bash
# Installs what flightrec needs on Debian 12, as root. Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get needs it)" >&2
    exit 2
fi

# Build: clang for BPF, libxdp/libbpf for the forwarder.
# Record: iproute2 (netns, veth), ethtool (offloads), iperf3 (traffic), perf (probes).
# Probes: binutils and xz-utils to unpack debug kernels; trace-cmd for its report format.
# VM: QEMU (with its C virtiofsd) and a static busybox for the initramfs.
# Reports: chromium renders the HTML report in the tests; tshark reads flagged.pcap.
# veth-race kernels (built once, cached): Debian's kernel source and its build tools.
PACKAGES=(
    make gcc clang llvm pkg-config
    libxdp-dev libbpf-dev libelf-dev zlib1g-dev
    bpftool xdp-tools
    iproute2 iputils-ping ethtool iperf3 procps
    linux-perf trace-cmd binutils xz-utils tshark
    qemu-system-x86 busybox-static
    chromium
    build-essential bc bison flex libssl-dev dwarves patch linux-source-6.1
)

# Kernel 7.3 for the VMs comes from trixie-backports: its own sources file,
# pinned so that nothing on this machine is installed or upgraded from it
# (flightrec only runs `apt-get download NAME=VERSION` there). Refreshed alone
# when new or changed, so a second run touches nothing.
here=$(cd "$(dirname "$0")" && pwd)
apt_sources=/etc/apt/sources.list.d/flightrec-kernels.sources
apt_pref=/etc/apt/preferences.d/flightrec-kernels
changed=0
cmp -s "$here/apt/flightrec-kernels.pref" "$apt_pref" || { install -m 644 "$here/apt/flightrec-kernels.pref" "$apt_pref"; changed=1; }
cmp -s "$here/apt/flightrec-kernels.sources" "$apt_sources" || { install -m 644 "$here/apt/flightrec-kernels.sources" "$apt_sources"; changed=1; }
if [ $changed = 1 ] || ! ls /var/lib/apt/lists/*_dists_trixie-backports_InRelease >/dev/null 2>&1; then
    apt-get update -qq -o Dir::Etc::SourceList="$apt_sources" -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
