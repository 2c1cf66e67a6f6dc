"""QEMU and virtiofsd: start them, watch the guest, and make sure they are gone.

The recipe (measured on Debian 12 with QEMU 7.2): TCG with one thread per
vCPU (``-accel tcg,thread=multi -cpu max``; the guest kernel boots on one vCPU:
see TCG_CMDLINE), a shared memfd memory backend
(vhost-user needs the guest's memory in a shareable fd), and two
``vhost-user-fs-pci`` devices served by the C virtiofsd that ships with QEMU:
``hostroot`` (the host's ``/``, mounted read-only by the guest) and ``job``
(one scratch folder, the only place the guest can write to the host).
virtiofsd runs with ``-o sandbox=chroot``: its default namespace sandbox
fails here with pivot_root EBUSY.

Every child is started in its own session (a terminal's Ctrl-C reaches only
flightrec, which then stops them in order) with PR_SET_PDEATHSIG, so even a
SIGKILL of flightrec takes QEMU and virtiofsd down with it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flightrec.errors import FlightrecError

QEMU = os.environ.get("FLIGHTREC_QEMU", "qemu-system-x86_64")
VIRTIOFSD = os.environ.get("FLIGHTREC_VIRTIOFSD", "/usr/lib/qemu/virtiofsd")
ACCELS = ("tcg", "kvm")
# TCG CPU model: "max" has SSE4.2/AVX2 (QEMU 7.2), which numpy >= 2 needs at import;
# qemu64 lacks them and the analyzer dies with SIGILL in the guest.
CPU_TCG = os.environ.get("FLIGHTREC_VM_CPU", "max")
# One host thread per vCPU (multi) or all vCPUs in one (single). QEMU 7.2's multi-threaded
# TCG can keep running a stale translation of kernel code another vCPU has just patched
# (docs/ci.md, "Live-patched kernel code under TCG"); single avoids that at some speed and
# with coarse interleaving of the vCPUs (each runs for up to 100 ms at a time).
TCG_THREADS = ("multi", "single")
TCG_THREAD = os.environ.get("FLIGHTREC_VM_TCG_THREAD", "multi")
# Kernel parameters for a guest under TCG. maxcpus=1: boot on one vCPU, the init script
# brings the others online before the command (flightrec/vm/initramfs.py). The kernel
# live-patches its own code during boot (static keys: timers_nohz_active in enqueue_timer()
# at the switch to tickless mode, __sched_clock_stable in sched_clock_cpu() at late init)
# with text_poke_bp(), whose temporary int3 another vCPU must never execute once the patch
# is done. Under QEMU 7.2's multi-threaded TCG it sometimes does, from a stale translation
# of the patched page: "Oops: int3" in enqueue_timer or sched_clock_cpu, "Fatal exception
# in interrupt" 1-3 s into boot (6.12, 7.3), or, on 6.1 (whose kprobe handler takes a
# vanished int3 for a removed probe and jumps back to it), a vCPU looping on the int3
# with interrupts off and the guest hung. With one vCPU during boot nothing can race.
# noreplace-smp: a kernel booted with maxcpus=1 rewrites its SMP code for one CPU and back
# again when the second comes online (1.3 s of patching under TCG); keep the SMP code.
TCG_CMDLINE = ("maxcpus=1", "noreplace-smp")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class VmConfig:
    """How big and how fast the guest is."""

    cpus: int = 2
    memory_mb: int = 1024
    # tcg works everywhere. kvm is faster where nested virtualisation works; on the
    # machine this was built on /dev/kvm exists but a KVM guest hangs before its
    # first console line, so kvm is never chosen for you.
    accel: str = "tcg"
    cmdline: tuple[str, ...] = field(default_factory=tuple)  # extra kernel parameters
    tcg_cmdline: tuple[str, ...] = TCG_CMDLINE  # kernel parameters added under TCG (the workarounds)
    # More QEMU arguments: the guest NICs of `vm record --nic virtio` (flightrec.record.nics).
    devices: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        """:raises FlightrecError: a value out of range."""
        if not 1 <= self.cpus <= 64:
            raise FlightrecError(f"--cpus must be between 1 and 64, got {self.cpus}")
        if not 256 <= self.memory_mb <= 65536:
            raise FlightrecError(f"--memory must be between 256 and 65536 MB, got {self.memory_mb}")
        if self.accel not in ACCELS:
            raise FlightrecError(f"--accel must be one of {', '.join(ACCELS)}, got {self.accel!r}")
        if TCG_THREAD not in TCG_THREADS:
            raise FlightrecError(f"FLIGHTREC_VM_TCG_THREAD must be one of {', '.join(TCG_THREADS)}, got {TCG_THREAD!r}")

    def kernel_params(self) -> tuple[str, ...]:
        """The kernel parameters this configuration adds: the TCG workarounds, then ``cmdline``."""
        return (self.tcg_cmdline if self.accel == "tcg" else ()) + self.cmdline


def tools_missing() -> Optional[str]:
    """Why no VM can be started here (QEMU or virtiofsd missing), or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found: apt-get install qemu-system-x86"
    if not os.access(VIRTIOFSD, os.X_OK):
        return f"{VIRTIOFSD} not found: apt-get install qemu-system-x86 (qemu-system-common ships it)"
    if os.geteuid() != 0:
        return "flightrec vm must run as root (virtiofsd exports / with the caller's rights)"
    return None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when flightrec dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _stop(proc: Optional[subprocess.Popen], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def qemu_argv(
    kernel: Path, initrd: Path, cmdline: str, config: VmConfig, sockets: dict[str, Path], console: Path, accel: str
) -> list[str]:
    """The QEMU command line for one guest."""
    mem = f"{config.memory_mb}M"
    argv = [
        QEMU,
        "-name",
        "flightrec-vm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", f"tcg,thread={TCG_THREAD}", "-cpu", CPU_TCG]
    argv += [
        "-smp",
        str(config.cpus),
        "-m",
        mem,
        # vhost-user-fs needs guest memory that virtiofsd can map.
        "-object",
        f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-numa",
        "node,memdev=mem",
    ]
    for i, (tag, sock) in enumerate(sockets.items()):
        argv += ["-chardev", f"socket,id=vfs{i},path={sock}", "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={tag}"]
    argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline, "-serial", f"file:{console}"]
    return argv + list(config.devices)


class Machine:
    """One guest: two virtiofsd and a QEMU, all stopped by :meth:`stop` (idempotent).

    ``shares`` maps a virtiofs tag to the host folder it exports.
    """

    def __init__(
        self, kernel: Path, initrd: Path, cmdline: str, config: VmConfig, shares: dict[str, Path], work: Path
    ) -> None:
        self.kernel, self.initrd, self.cmdline, self.config = kernel, initrd, cmdline, config
        self.shares, self.work = shares, work
        self.console = work / "console.log"
        self.daemons: list[subprocess.Popen] = []
        self.qemu: Optional[subprocess.Popen] = None
        self.accel = config.accel
        self.argv: list[str] = []

    def start(self) -> None:
        """:raises FlightrecError: virtiofsd or QEMU did not come up."""
        why = tools_missing()
        if why:
            raise FlightrecError(why)
        # Socket paths relative to the scratch folder, where both run: a Unix
        # socket's path must fit in 108 bytes, and TMPDIR may be long. The
        # folder's unique name goes in too: virtiofsd names its pid-file lock
        # after the socket path, so two VMs at once would collide.
        sockets: dict[str, Path] = {}
        for tag, source in self.shares.items():
            sock = Path(f"virtiofsd-{self.work.name}-{tag}.sock")
            log = self.work / f"virtiofsd-{tag}.log"
            # cache=always for the read-only root (nothing changes it under the guest);
            # auto for the job folder, so the host sees the guest's writes at once.
            cache = "always" if tag == "hostroot" else "auto"
            argv = [
                VIRTIOFSD,
                f"--socket-path={sock}",
                "-o",
                f"source={source}",
                "-o",
                "sandbox=chroot",
                "-o",
                f"cache={cache}",
                "-o",
                "log_level=warn",
            ]
            self.daemons.append(_spawn(argv, log, self.work))
            sockets[tag] = sock
        deadline = time.monotonic() + 10
        for (tag, sock), proc in zip(sockets.items(), self.daemons):
            while not (self.work / sock).exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = _tail(self.work / f"virtiofsd-{tag}.log", 3) or f"exit {proc.poll()}"
                    raise FlightrecError(f"virtiofsd for {self.shares[tag]} did not start: {why}")
                time.sleep(0.02)
        self.console.touch()
        # The console too is named relative to QEMU's cwd (no commas from TMPDIR in an option).
        self.argv = qemu_argv(
            self.kernel, self.initrd, self.cmdline, self.config, sockets, Path(self.console.name), self.accel
        )
        self.qemu = _spawn(self.argv, self.work / "qemu.log", self.work)

    def poll(self) -> Optional[int]:
        """QEMU's exit status, or None while it runs."""
        return None if self.qemu is None else self.qemu.poll()

    def rss_mb(self) -> float:
        """QEMU's resident memory now, in MB (0 when it is gone)."""
        if self.qemu is None:
            return 0.0
        try:
            for line in Path(f"/proc/{self.qemu.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0.0

    def qemu_error(self) -> str:
        """QEMU's last words, without its warning about hubs with no host netdev: `vm record
        --nic virtio` joins guest NICs by hubs alone on purpose, and the warning hid the
        console's account of a failed boot."""
        return _tail(self.work / "qemu.log", 3, skip="is not connected to host network")

    def stop(self) -> None:
        """Stop QEMU first (virtiofsd then sees its client go), then every virtiofsd."""
        _stop(self.qemu)
        for proc in self.daemons:
            _stop(proc)

    def pids(self) -> list[int]:
        procs = ([self.qemu] if self.qemu else []) + self.daemons
        return [p.pid for p in procs]

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n: int, skip: str = "") -> str:
    """The last ``n`` non-blank lines of a log, joined; lines holding ``skip`` (when given) left out."""
    try:
        lines = [
            ln.strip()
            for ln in path.read_text(errors="replace").splitlines()
            if ln.strip() and not (skip and skip in ln)
        ]
    except OSError:
        return ""
    return " | ".join(lines[-n:])
