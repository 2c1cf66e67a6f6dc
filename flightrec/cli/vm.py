"""`flightrec vm`: record (or run a command) inside a disposable stock-kernel VM."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import click

from flightrec.errors import FlightrecError
from flightrec.vm.qemu import ACCELS, VmConfig
from flightrec.vm.runner import DEFAULT_BOOT_TIMEOUT, STALL_TIMEOUT, Interrupted


class _Progress:
    """Host progress lines with the time since start: `[  4.2s] guest ready ...`."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.guest_error: Optional[str] = None  # the guest's last "flightrec: ..." line

    def say(self, text: str) -> None:
        click.echo(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    def guest(self, line: str) -> None:
        if line.startswith("flightrec: "):
            self.guest_error = line.removeprefix("flightrec: ")
        click.echo(f"  guest | {line}")


def _vm_options(f):  # type: ignore[no-untyped-def]
    """Options shared by `vm record` and `vm run`."""
    for opt in reversed(
        [
            click.option(
                "--kernel",
                "kernel",
                metavar="SERIES|PKG|PATH",
                default=None,
                help="6.1, 6.12 or 7.3: the newest stock Debian cloud kernel of that series (default 6.1; "
                "7.3 comes from trixie-backports, added by `make setup`); or a Debian kernel package "
                "or pattern; or a bzImage path (modules built in; vmlinux beside it for probes).",
            ),
            click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True, help="Guest vCPUs."),
            click.option(
                "--memory",
                "memory_mb",
                type=click.IntRange(256, 65536),
                default=1024,
                show_default=True,
                help="Guest memory in MB.",
            ),
            click.option(
                "--accel",
                type=click.Choice(ACCELS),
                default="tcg",
                show_default=True,
                help="tcg works everywhere; kvm where nested virtualisation works (it hangs on some hosts).",
            ),
            click.option(
                "--boot-timeout",
                type=click.FloatRange(min=1),
                default=DEFAULT_BOOT_TIMEOUT,
                show_default=True,
                help="Watchdog: seconds for the guest to reach its command.",
            ),
            click.option(
                "--stall-timeout",
                type=click.FloatRange(min=3),
                default=STALL_TIMEOUT,
                show_default=True,
                help="Progress watchdog: seconds a vCPU may go without running its heartbeat task "
                "(a hung guest kernel) before the VM is stopped.",
            ),
        ]
    ):
        f = opt(f)
    return f


def _interrupted(sig: Interrupted) -> None:
    kept = f"; guest console: {sig.console}" if sig.console is not None else ""
    click.echo(f"flightrec: interrupted by {sig}; the VM was stopped{kept}", err=True)
    sys.exit(128 + sig.signum)


VM_EPILOG = """\b
Examples:
  flightrec vm record -o vm-out
  flightrec vm record --duration 30 --inject double-fill -o vm-bug
  flightrec vm run -- uname -a
  flightrec vm bugs                          # the real kernel bugs it reproduces
"""


@click.group("vm", epilog=VM_EPILOG)
def vm() -> None:
    """Run flightrec inside a disposable VM whose kernel has kprobes.

    The guest boots a stock Debian kernel under QEMU, sees the host's root
    read-only (virtiofs under an overlay on tmpfs: its writes never reach the
    host), and writes only into one scratch folder that flightrec copies back.
    """


RECORD_EPILOG = """\b
Examples:
  flightrec vm record -o vm-out                       # 20 s, 2 vCPUs, Debian 6.1 cloud kernel
  flightrec vm record --duration 30 --cpus 2 -o vm-out -b 8192
  flightrec vm record --inject double-fill --inject-after 3000 -o vm-bug
  flightrec vm record --inject double-fill --markers per-descriptor -o vm-bug-pd
  flightrec vm record --kernel 7.3 -o vm-73           # Debian's 7.3, from trixie-backports
  flightrec vm record --kernel 'linux-image-6.12.*-cloud-amd64' -o vm-612
  flightrec vm record --kernel /src/linux/arch/x86/boot/bzImage -o vm-own
  flightrec vm record --kernel 7.3 --nic virtio --mode zerocopy -o vm-zc   # AF_XDP zero-copy on virtio-net
  flightrec vm record --kernel 6.12 --nic virtio --mode auto -o vm-auto    # says which mode it got
  flightrec vm record --kernel veth-race --widen -o race     # the post's bug (docs/veth-race.md)
  flightrec vm record --kernel veth-fixed --widen -o fixed   # the fixed kernel stays clean
  flightrec vm record --kernel cq-immature --tx-twins --duration 8 -b 32768 -o cq   # docs/cq-race.md

\b
Any other option is passed to `flightrec record` in the guest (see
`flightrec record --help`). Ctrl-C (or SIGTERM, SIGHUP) while the guest
records stops the recording early and keeps its trace, analyzed as usual;
a second one stops the VM at once. Exit codes are record's: 0 clean, 1
anomaly caught, 2 error (QEMU or kernel missing, boot failure, watchdog),
128+N stopped by signal N (the trace is saved when the recording had
started). Nothing is left behind on any of them.

\b
A guest that dies before the recording starts is booted again (up to
--boot-attempts boots, said on the terminal and in vm.json). A guest whose
vCPU stops running tasks for --stall-timeout seconds is stopped by the
progress watchdog, with the guest kernel's own report in the error line.
After any failure DIR keeps vm-console.log (the guest's console),
vm-output.log and vm.json (docs/ci.md).
"""


@vm.command("record", epilog=RECORD_EPILOG, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_vm_options
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Seconds of traffic through the forwarder in the guest.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("flightrec-vm-out"),
    show_default=True,
    help="Host folder for trace.txt, meta.json, analysis.json, vm.json and the guest's logs.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=None,
    help="Watchdog: seconds the guest's recording may take (default: duration + 150).",
)
@click.option(
    "--boot-attempts",
    type=click.IntRange(1, 10),
    default=3,
    show_default=True,
    help="Boots in all when the guest dies before the recording starts (never once it has).",
)
@click.option(
    "--nic",
    type=click.Choice(("veth", "virtio")),
    default="veth",
    show_default=True,
    help="veth: veth pairs in the guest. virtio: four QEMU virtio-net-pci NICs (iommu_platform=on), "
    "client<->outer and inner<->server joined by QEMU hubs (no host network); one queue pair "
    "each, so the recording runs with --queues 1.",
)
@click.option(
    "--mode",
    type=click.Choice(("copy", "zerocopy", "auto")),
    default="copy",
    show_default=True,
    help="AF_XDP bind in the guest: copy, zerocopy (exit 2 with what is missing where the kernel or "
    "driver cannot: never a silent fallback) or auto (zero-copy where it binds, and says so).",
)
@click.option(
    "--widen",
    is_flag=True,
    help="Widen the veth/AF_XDP race windows with busy-waiting kprobes: a fault amplifier, "
    "said so in the output and meta.json (docs/veth-race.md).",
)
@click.option(
    "--widen-flush-ms",
    type=click.FloatRange(0, 1000, min_open=True),
    default=10.0,
    show_default=True,
    help="Busy-wait before a flush reads cached_prod.",
)
@click.option(
    "--widen-every", type=click.IntRange(min=1), default=1000, show_default=True, help="Delay every Nth flush."
)
@click.option(
    "--widen-reserve-ms",
    type=click.FloatRange(0, 1000, min_open=True),
    default=50.0,
    show_default=True,
    help="Busy-wait between cached_prod++ and the descriptor write, only while "
    "that queue is being flushed on another CPU.",
)
@click.option(
    "--widen-queue",
    type=click.IntRange(min=0),
    default=None,
    help="Widen only flushes of sockets on this queue (default: any).",
)
@click.pass_context
def vm_record_cmd(
    ctx: click.Context,
    kernel: Optional[str],
    cpus: int,
    memory_mb: int,
    accel: str,
    boot_timeout: float,
    stall_timeout: float,
    duration: float,
    out_dir: Path,
    timeout: Optional[float],
    boot_attempts: int,
    nic: str,
    mode: str,
    widen: bool,
    widen_flush_ms: float,
    widen_every: int,
    widen_reserve_ms: float,
    widen_queue: Optional[int],
) -> None:
    """Record the AF_XDP forwarder with real kernel probes inside a VM.

    Fetches the kernel and its -dbg package with apt (cached under
    /var/cache/flightrec), resolves the probes on the host, boots the guest,
    runs `flightrec record` there with kprobes installed, copies the trace to
    DIR and analyzes it on the host.
    """
    from flightrec.cli.record import parse_record_args
    from flightrec.vm.record import VmRecordOptions, vm_record

    progress = _Progress()
    try:
        prefix, files = (), ()
        if widen:
            from flightrec.probes.widen import WidenOptions, guest_setup
            from flightrec.vm.kernel import guest_kernel

            widening = WidenOptions(widen_flush_ms, widen_every, widen_reserve_ms, widen_queue)
            prefix, files = guest_setup(guest_kernel(kernel, progress.say).vmlinux, widening, progress.say)
        opts = VmRecordOptions(
            out_dir=out_dir,
            duration=duration,
            kernel=kernel,
            config=VmConfig(cpus=cpus, memory_mb=memory_mb, accel=accel),
            record_args=tuple(ctx.args),
            timeout=timeout,
            boot_timeout=boot_timeout,
            boot_attempts=boot_attempts,
            stall_timeout=stall_timeout,
            guest_prefix=prefix,
            guest_files=files,
            nic=nic,
            mode=mode,
        )
        result = vm_record(opts, parse_record_args, progress.say, progress.guest)
    except Interrupted as sig:
        _interrupted(sig)
    t = result.timings
    progress.say(
        f"done: exit {result.exit_code}; boot {t.get('boot_s', 0):.1f} s, recording "
        f"{t.get('guest_command_s', 0):.1f} s for {duration:g} s of traffic, wall {t.get('wall_s', 0):.1f} s"
    )
    saved = result.trace is not None and (result.exit_code in (0, 1) or result.stopped_by is not None)
    if saved:
        click.echo(f"saved {result.trace} and {result.out_dir / 'vm.json'}")
    if result.verdict_line:
        click.echo(result.verdict_line)
    if saved:
        click.echo(f"details: flightrec analyze {result.trace}")
    if result.exit_code == 2:
        click.echo(
            f"flightrec: in the VM: {progress.guest_error or 'the recording failed (see vm-output.log)'}", err=True
        )
    elif result.stopped_by is not None and result.exit_code > 128:
        name = signal.Signals(result.stopped_by).name
        click.echo(
            f"flightrec: stopped early by {name}; "
            + ("the trace up to then is saved" if saved else "the recording had saved no trace"),
            err=True,
        )
    sys.exit(result.exit_code)


RUN_EPILOG = """\b
Examples:
  flightrec vm run -- uname -a
  flightrec vm run --kernel 7.3 -- uname -r
  flightrec vm run -- sh -c 'cat /proc/cmdline; ls /sys/kernel/tracing'
  flightrec vm run -o out -- sh -c 'dmesg > $FLIGHTREC_VM_OUT/dmesg.txt'

\b
The command runs as root with the host's PATH and current folder; what it
writes to $FLIGHTREC_VM_OUT is copied to -o DIR. Exit code: the command's,
or 2 when the VM could not run it.
"""


@vm.command("run", epilog=RUN_EPILOG)
@_vm_options
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Host folder to copy $FLIGHTREC_VM_OUT to.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Watchdog: seconds the command may take.",
)
@click.option(
    "--boot-attempts",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Boots in all when the guest dies before the command starts (never once it has).",
)
@click.argument("command", nargs=-1, required=True)
def run_cmd(
    kernel: Optional[str],
    cpus: int,
    memory_mb: int,
    accel: str,
    boot_timeout: float,
    stall_timeout: float,
    out_dir: Optional[Path],
    timeout: float,
    boot_attempts: int,
    command: tuple[str, ...],
) -> None:
    """Boot the VM, run COMMAND in it, power off (for debugging the guest)."""
    from flightrec.vm.kernel import guest_kernel
    from flightrec.vm.qemu import tools_missing
    from flightrec.vm.runner import run_in_guest

    progress = _Progress()
    try:
        why = tools_missing()
        if why:
            raise FlightrecError(why)
        k = guest_kernel(kernel, progress.say, with_vmlinux=False)
        result = run_in_guest(
            list(command),
            k,
            VmConfig(cpus=cpus, memory_mb=memory_mb, accel=accel),
            timeout=timeout,
            boot_timeout=boot_timeout,
            out_dir=out_dir,
            say=progress.say,
            on_output=progress.guest,
            boot_attempts=boot_attempts,
            stall_timeout=stall_timeout,
        )
    except Interrupted as sig:
        _interrupted(sig)
    progress.say(
        f"guest command exit {result.exit_code} after {result.command_s:.1f} s "
        f"(boot {result.boot_s:.1f} s, wall {result.wall_s:.1f} s)"
    )
    sys.exit(result.exit_code)


BUGS_EPILOG = """\b
Examples:
  flightrec vm bugs
  flightrec vm bugs --json | jq -r '.[].name'
  flightrec vm record --kernel veth-race --widen --duration 60 -o race   # the first one, by hand
"""


@vm.command("bugs", epilog=BUGS_EPILOG)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="A JSON list of objects: name, fix_commit, bug_kernel, fixed_kernel, record_args, verdict, kind "
    "(and title, doc).",
)
def bugs_cmd(as_json: bool) -> None:
    """The real kernel bugs flightrec reproduces, and how.

    For each: its upstream fix, the kernel built with the fix reverted and
    the one with it (--kernel NAME), the vm record options that reproduce it,
    and the verdict and anomaly kind the buggy kernel must give; the fixed
    kernel must run clean under the same options.
    """
    from flightrec.vm.bugs import BUGS

    if as_json:
        click.echo(json.dumps([b.as_json() for b in BUGS], indent=2))
        return
    for b in BUGS:
        args = " ".join(shlex.quote(a) for a in b.record_args)
        click.echo(
            f"{b.name}: {b.title} (fixed upstream by {b.fix_commit})\n"
            f"  flightrec vm record --kernel {b.bug_kernel} {args}   # verdict {b.verdict}, {b.kind}\n"
            f"  flightrec vm record --kernel {b.fixed_kernel} {args}   # clean\n"
            f"  see {b.doc}"
        )
