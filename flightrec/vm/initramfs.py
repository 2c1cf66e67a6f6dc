"""A small busybox initramfs that turns the host's root into the guest's, safely.

The init script (below) loads the modules the kernel needs to reach the
host (virtio-pci, virtiofs, fuse, overlay; veth for the recording), mounts
the host's ``/`` read-only over virtiofs as the lower layer of an overlay on
tmpfs (guest writes never reach the host), mounts the job folder (a second
virtiofs share, the only writable one) at its host path, chroots and runs
``<job>/run.sh``, then powers off. Messages starting with ``flightrec-vm:``
on the serial console tell the host where the guest is.

The archive is written here in the kernel's ``newc`` cpio format (no cpio
tool needed) and cached per kernel and init script.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import time
from pathlib import Path
from typing import Iterable

from flightrec.errors import FlightrecError
from flightrec.vm.kernel import VM_CACHE, GuestKernel, find_busybox

# Loaded in this order with their dependencies first; a module the kernel has
# built in is simply absent from modules.dep and skipped.
BOOT_MODULES = ("virtio_pci", "virtiofs", "overlay")
# veth and virtio_net (`vm record --nic virtio`) for the recording's topology:
# loaded here so the guest needs no kmod, nor udev to load a PCI NIC's driver.
EXTRA_MODULES = ("veth", "virtio_net")

# Another checkout's build for the same kernel (another init script) is removed only once
# unused for this long: two flightrecs of different versions may boot the same kernel at once.
STALE_S = 24 * 3600.0

# Console markers the host waits for (qemu.py).
READY = "flightrec-vm: ready"
DONE = "flightrec-vm: done"
FAIL = "flightrec-vm: FAIL"
HEARTBEAT = "heartbeat."  # job/heartbeat.<cpu>, read by the host's progress watchdog
STALL = "flightrec-vm: stall"  # the guest's own evidence of a hang, on the console
DUMP_PIDS = "/run/flightrec-vm/dump.pids"  # pids (in the guest) to send SIGUSR2 for a Python stack
# The init's stall watcher speaks up after this many seconds without a heartbeat
# written: before the host's progress watchdog (STALL_TIMEOUT, 20 s) stops QEMU.
STALL_AFTER = 8

INIT = r"""#!/bin/busybox sh
# flightrec VM init: host root read-only under an overlay, one writable job folder.
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

fail() { echo "FAIL_MARKER $*"; sync; poweroff -f; sleep 5; }
arg() { for kv in $(cat /proc/cmdline); do case $kv in "$1"=*) echo "${kv#*=}";; esac; done; }

JOB=$(arg flightrec.job)
MODDIR=$(arg flightrec.modules)
[ -n "$JOB" ] || fail "no flightrec.job= on the kernel command line"

if [ -f /modules.load ]; then
    while read -r ko; do
        insmod "/modules/$ko" || fail "insmod $ko failed"
    done < /modules.load
fi

# The host's root, read-only; its sub-mounts (proc, sys...) are replaced below.
mount -t virtiofs -o ro hostroot /lower || fail "cannot mount the host root (virtiofs tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    fail "cannot mount the overlay (lower: virtiofs, upper: tmpfs)"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
# /tmp stays the host's, seen through the overlay (writes land in its tmpfs
# upper): the checkout flightrec runs from may live there.
mount -t tracefs nodev $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs nodev $R/sys/kernel/debug 2>/dev/null
mount -t bpf bpffs $R/sys/fs/bpf 2>/dev/null
mkdir -p $R/run/netns
# Last: the job folder, writable, over whatever the overlay shows there.
mkdir -p "$R$JOB" && mount -t virtiofs job "$R$JOB" || fail "cannot mount the job folder $JOB (virtiofs tag job)"

# The kernel's own modules at the usual place, and busybox's modprobe for
# autoloading (the host may have no kmod).
if [ -n "$MODDIR" ] && [ -d "$R$MODDIR" ]; then
    rel=$(uname -r)
    mkdir -p "$R/lib/modules/$rel" && mount --bind "$R$MODDIR" "$R/lib/modules/$rel"
fi
mkdir -p $R/run/flightrec-vm/bin
cp /bin/busybox $R/run/flightrec-vm/busybox
for a in modprobe insmod lsmod rmmod depmod; do ln -s ../busybox $R/run/flightrec-vm/bin/$a; done
echo /run/flightrec-vm/bin/modprobe > /proc/sys/kernel/modprobe

# The first trace event enabled anywhere makes ftrace register its comm recorder on the
# scheduler's tracepoints (sched_switch, sched_wakeup: a live patch of __schedule and
# ttwu_do_activate), and the last one disabled removes it again: under TCG the same
# stale-int3 hazard as the boot's patching (below), hit once as "Oops: int3" in
# ttwu_do_activate while a recording tore down its kprobe events. An event enabled
# here, while one vCPU runs, keeps the recorder registered for the guest's life. It
# is one that has fired already: initcalls are over.
PIN=$R/sys/kernel/tracing/events/initcall/initcall_finish/enable
[ -f "$PIN" ] && echo 1 > "$PIN" || echo "flightrec-vm: the scheduler's trace hooks are not pinned (no $PIN)"

# The network stack's hash secrets are DO_ONCE()s: each one's static key is live-patched
# off after its first use, which is the recording's first TCP connection, flow hash or
# ICMP error otherwise (hit once as "Oops: int3" in inet_getpeer). Use them all here,
# while one vCPU runs: TCP across a two-queue veth pair, and a UDP query to a closed
# port (busybox nslookup) for an ICMP port unreachable. tests/vm/oncekeys.py reads the
# keys; the VM tests hold that none flips during a recording.
hostip() {  # the host's iproute2: busybox would run its own ip applet for a bare "ip"
    chroot $R /bin/sh -c 'PATH=/usr/sbin:/usr/bin:/sbin:/bin exec ip "$@"' ip "$@"
}
warm_net() {
    ns=flightrec-warm-net ok=
    hostip netns add $ns || return 1
    if hostip link add fr-warm0 numtxqueues 2 numrxqueues 2 type veth \
            peer name fr-warm1 numtxqueues 2 numrxqueues 2 netns $ns &&
        hostip addr add 169.254.250.1/30 dev fr-warm0 && hostip link set fr-warm0 up &&
        hostip -n $ns addr add 169.254.250.2/30 dev fr-warm1 && hostip -n $ns link set fr-warm1 up
    then
        nsenter --net=$R/run/netns/$ns nc -l -p 9 >/dev/null </dev/null &
        i=0
        while [ $i -lt 50 ] && [ -z "$ok" ]; do
            echo warm | timeout 3 nc -w 2 169.254.250.2 9 2>/dev/null && ok=1 || usleep 100000
            i=$((i + 1))
        done
        timeout 3 nslookup warm 169.254.250.2 >/dev/null 2>&1
        kill $! 2>/dev/null
        hostip link del fr-warm0
    fi
    hostip netns del $ns
    # the keys go off in a workqueue item: let it run before another vCPU does
    usleep 300000
    [ -n "$ok" ]
}
warm_net || echo "flightrec-vm: the network's once-only keys are not warmed (no TCP across a veth pair)"

# Under TCG the kernel boots on one vCPU (maxcpus=1, flightrec/vm/qemu.py): the others
# come online here, after the boot's live code patching.
for c in /sys/devices/system/cpu/cpu[0-9]*; do
    [ -f "$c/online" ] && [ "$(cat "$c/online")" = 0 ] || continue
    echo 1 > "$c/online" || fail "cannot bring ${c##*/} online"
done

# Progress heartbeat for the host's watchdog (flightrec/vm/runner.py): one loop per
# vCPU, pinned there at normal priority, rewrites $JOB/heartbeat.<cpu> ("count uptime")
# every second. A vCPU that stops running ordinary tasks (a kernel spinning with
# preemption off, a stuck softirq) stops its file. Each beat is also stamped in
# this root's /hb (memory, not the job share) before and after its write, so the
# stall watcher below can tell a write that never returns from a loop that never runs.
mkdir -p /hb
HB=
cpu=0
while [ $cpu -lt $(nproc) ]; do
    taskset -c $cpu sh -c 'n=0; while :; do n=$((n + 1)); read up idle < /proc/uptime
        echo "$n $up" > "$1.before"; echo "$n $up" > "$2"; echo "$n $up" > "$1.after"; sleep 1
        done' heartbeat "/hb/$cpu" "$R$JOB/HEARTBEAT_FILE$cpu" </dev/null &
    HB="$HB $!"
    cpu=$((cpu + 1))
done

# Evidence for a hung guest, on the console (it does not go through the job share,
# which may be what hangs): the blocked tasks (sysrq w), every process's state and
# wait channel, and a Python stack from each process that asked for one (its pid
# in $R/DUMP_PIDS, a SIGUSR2 handler). Given once the job share has not taken a
# heartbeat for STALL_AFTER s, or a vCPU's loop has not run for as long, and once
# when the command's time is nearly up (flightrec.dump_at: seconds after ready).
dump() {
    # the kernel's lines first, and out before ours: the console's UART takes them
    # straight, while ours wait in the tty's buffer, so theirs would cut ours in two
    echo w > /proc/sysrq-trigger
    sleep 1
    echo "STALL_MARKER $*"
    for p in /proc/[0-9]*; do
        read -r st < "$p/stat" 2>/dev/null || continue
        set -- ${st##*) }  # state ppid pgrp session tty tpgid flags ...
        [ $(($7 & 0x200000)) = 0 ] || continue  # PF_KTHREAD: sysrq w has the blocked ones
        echo "STALL_MARKER task ${p#/proc/} $(cat "$p/comm" 2>/dev/null) $1 $(cat "$p/wchan" 2>/dev/null)"
    done
    [ -f "$R/DUMP_PIDS" ] && for pid in $(cat "$R/DUMP_PIDS"); do kill -USR2 "$pid" 2>/dev/null; done
}
DUMP_AT=$(arg flightrec.dump_at)
watch_stalls() {
    read up idle < /proc/uptime; start=${up%.*}; stalled=; dumped=
    while :; do
        sleep 2
        read up idle < /proc/uptime; now=${up%.*}
        for f in /hb/*.before; do
            [ -z "$stalled" ] && [ -f "$f" ] || break
            c=${f##*/}; c=${c%.before}
            bt= at=; read bn bt < "$f"; read an at < "/hb/$c.after" 2>/dev/null
            [ -n "$bt" ] && [ -n "$at" ] || continue  # read between a truncate and its write
            writing=$((now - ${bt%.*})) idle=$((now - ${at%.*}))
            if [ "$bn" != "$an" ] && [ $writing -ge STALL_AFTER ]; then
                stalled=1
                dump "vCPU $c: its heartbeat's write to the job folder (virtiofs) has not returned for $writing s"
            elif [ "$bn" = "$an" ] && [ $idle -ge STALL_AFTER ]; then
                stalled=1
                dump "vCPU $c: its heartbeat loop has not run for $idle s"
            fi
        done
        if [ -n "$DUMP_AT" ] && [ -z "$dumped" ] && [ $((now - start)) -ge "$DUMP_AT" ]; then
            dumped=1; dump "the command has run $((now - start)) s and its time is nearly up"
        fi
    done
}
watch_stalls </dev/null &
HB="$HB $!"

echo "READY_MARKER $(cut -d' ' -f1 /proc/uptime)"
chroot $R /bin/sh "$JOB/run.sh" </dev/null
echo "DONE_MARKER rc=$? $(cut -d' ' -f1 /proc/uptime)"
kill $HB 2>/dev/null
sync
umount "$R$JOB" 2>/dev/null
poweroff -f
sleep 5
"""


def init_script() -> str:
    return (
        INIT.replace("FAIL_MARKER", FAIL)
        .replace("READY_MARKER", READY)
        .replace("DONE_MARKER", DONE)
        .replace("HEARTBEAT_FILE", HEARTBEAT)
        .replace("STALL_MARKER", STALL)
        .replace("STALL_AFTER", str(STALL_AFTER))
        .replace("DUMP_PIDS", DUMP_PIDS.lstrip("/"))
    )


def module_name(ko: str) -> str:
    """A module's name from its file as modules.dep lists it: no .ko or .ko.xz, and _
    where the file name may use -."""
    return Path(ko).name.split(".ko", 1)[0].replace("-", "_")


def module_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """The .ko paths (relative to ``modules_dir``) to insmod, dependencies first.

    :raises FlightrecError: no modules.dep (depmod did not run).
    """
    dep_file = modules_dir / "modules.dep"
    try:
        lines = dep_file.read_text().splitlines()
    except OSError as e:
        raise FlightrecError(f"cannot read {dep_file}: {e.strerror}") from None
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in lines:
        if ":" not in line:
            continue
        ko, rest = line.split(":", 1)
        deps[ko] = rest.split()
        by_name[module_name(ko)] = ko
    order: list[str] = []

    def visit(ko: str, stack: tuple[str, ...] = ()) -> None:
        if ko in order or ko in stack:
            return
        for d in deps.get(ko, []):
            visit(d, stack + (ko,))
        order.append(ko)

    for name in wanted:
        ko = by_name.get(name)
        if ko is not None:  # absent: built in, or not in this kernel at all
            visit(ko)
    return order


class _Cpio:
    """A newc cpio archive (Documentation/driver-api/early-userspace/buffer-format.rst)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        self.buf.write(name.encode() + b"\0")
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        if name not in self.dirs:
            self.dirs.add(name)
            self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build(
    kernel: GuestKernel, extra_modules: Iterable[str] = EXTRA_MODULES, cache: Path = VM_CACHE / "initramfs"
) -> Path:
    """The initramfs for ``kernel`` (built once per kernel, module list and init script).

    :raises FlightrecError: no static busybox, or a needed module is missing.
    """
    busybox = Path(find_busybox())
    wanted = list(BOOT_MODULES) + list(extra_modules)
    modules: list[str] = []
    if kernel.modules_dir is not None:
        modules = module_order(kernel.modules_dir, wanted)
        names = {Path(m).name.split(".ko", 1)[0] for m in modules}
        for needed in BOOT_MODULES:
            if needed not in names and not _builtin(kernel.modules_dir, needed):
                raise FlightrecError(
                    f"kernel {kernel.release} has no {needed} module and does not build it in: "
                    "the VM needs virtio-pci, virtiofs and overlay"
                )
    key = hashlib.sha256()
    for part in (kernel.release, str(kernel.bzimage), init_script(), *modules):
        key.update(part.encode() + b"\0")
    key.update(str(busybox.stat().st_mtime_ns).encode())
    path = cache / f"initramfs-{kernel.release}-{key.hexdigest()[:12]}.cpio.gz"
    if path.is_file():
        os.utime(path)  # in use: another checkout's build() must not remove it (STALE_S)
        return path
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules"):
        archive.dir(d)
    # The kernel opens /dev/console for init's stdin/out/err before /dev is mounted.
    archive.chardev("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", init_script().encode(), 0o755)
    if modules:
        assert kernel.modules_dir is not None
        for ko in modules:
            parts = Path(ko).parts
            for i in range(1, len(parts)):
                archive.dir("modules/" + "/".join(parts[:i]))
            archive.file(f"modules/{ko}", (kernel.modules_dir / ko).read_bytes())
        archive.file("modules.load", ("\n".join(modules) + "\n").encode())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(gzip.compress(archive.finish(), compresslevel=6))
    os.replace(tmp, path)
    now = time.time()
    for old in cache.glob(f"initramfs-{kernel.release}-*.cpio.gz"):  # other init scripts' builds
        try:
            if old != path and now - old.stat().st_mtime > STALE_S:
                old.unlink()
        except OSError:
            pass  # removed meanwhile by another flightrec
    return path


def _builtin(modules_dir: Path, name: str) -> bool:
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except OSError:
        return False
    return any(module_name(line) == name for line in text.splitlines())
