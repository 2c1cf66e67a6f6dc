"""Run one command in a disposable guest and get its exit code and output folder back.

The host makes a scratch folder ``$TMPDIR/flightrec-vm-<pid>-XXXX/`` with ``job/``
(exported to the guest read-write at the same path) and the host-only
sockets and logs beside it. ``job/run.sh`` runs the command with the host's
PATH, cwd and checkout (PYTHONPATH), its output to ``job/output.log`` (the
host tails it live), its exit code to ``job/rc``. Whatever the command
writes under ``$FLIGHTREC_VM_OUT`` (``job/out``) is copied to the host's
output folder once the guest has powered off. On every way out (done, boot
failure, watchdog, Ctrl-C, SIGTERM) QEMU and virtiofsd are stopped and the
scratch folder removed.

Failures keep their evidence: with an output folder, every failed run (boot
failure, guest death, a watchdog, a signal) leaves the guest's console in
``vm-console.log`` and the command's output in ``vm-output.log`` there, with
whatever ``job/out`` held, and ``vm.json`` saying what went wrong; the error
line names the console file.

Retries (``boot_attempts`` > 1, opt-in): a guest that dies or hangs before its
command starts (a kernel panic at boot, QEMU exiting, the boot watchdog) is
booted again, up to that many boots in all, saying so. Each failed boot's
console is kept as ``vm-console-boot<N>.log`` and listed in ``vm.json``.
Nothing is retried once the command has started, nor a boot the init script
refused (a missing module does not go away).

Progress watchdog: the guest's init keeps one heartbeat loop per vCPU, pinned
to it (flightrec/vm/initramfs.py), rewriting ``job/heartbeat.<cpu>`` every
second. Once the command runs, a vCPU whose heartbeat stops for
``stall_timeout`` seconds (:data:`STALL_TIMEOUT`) means the guest stopped making
progress there: a kernel spinning with preemption off, a stuck softirq, a
soft lockup. If some vCPUs still beat and the caller asked for
``graceful_stop``, the guest is first asked to stop and save its trace (as for
Ctrl-C, within :data:`STOP_GRACE`); otherwise, or when every vCPU has stopped,
QEMU is stopped at once and whatever ``job/out`` holds is copied back. Either
way the run fails with one line: the reason, the guest's last console and
output lines and where the console is.

The guest's own account (flightrec/vm/initramfs.py): its init's stall watcher
writes ``flightrec-vm: stall ...`` lines on the console when the heartbeats stop
(a write to the job share that never returns, or a loop that never runs) and
``DUMP_LEAD`` seconds before the whole-run watchdog, with the processes' wait
channels and the Python stacks of the processes that asked (flightrec.vm.guest.
offer_stack_dump); :func:`guest_stall` puts it in the watchdogs' lines.

With ``graceful_stop``, the first signal once the command runs only asks it
to stop: the host writes ``job/stop`` (the signal's name), the guest side
(flightrec/vm/guest.py) interrupts its recording, which saves its trace, and
the run ends as usual; a second signal stops the VM at once.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from flightrec import locate, runfolder
from flightrec.errors import FlightrecError
from flightrec.vm import initramfs
from flightrec.vm.guest import STOP_FILE
from flightrec.vm.kernel import GuestKernel
from flightrec.vm.qemu import Machine, VmConfig

DEFAULT_BOOT_TIMEOUT = 90.0  # seconds from QEMU's start to the guest's command (TCG boots in ~5 s)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORK_PREFIX = "flightrec-vm-"  # /tmp/flightrec-vm-<pid>-XXXX: the pid tells a stale one
STOP_GRACE = 120.0  # seconds a stopping guest may take to save and power off (TCG is slow)
# Progress watchdog: seconds without a heartbeat from a vCPU. Under TCG on a busy
# 2-core host a heartbeat came at most ~3 s late while the guest recorded; 20 s
# leaves room for a host that starves QEMU for a while, and still ends a hung
# guest long before the whole-run watchdog (duration + 150 s for vm record).
STALL_TIMEOUT = 20.0
# The guest's init gives its evidence (blocked tasks, Python stacks) this many seconds
# before the command's watchdog fires, so it is on the console when QEMU is stopped.
DUMP_LEAD = 15

Say = Callable[[str], None]


class Interrupted(BaseException):
    """A handled signal arrived while the guest ran; the VM has been stopped.
    ``console`` is where the guest's console was kept (with an output folder).
    A BaseException for the reason flightrec.record.session.Interrupted is one."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.console: Optional[Path] = None


class BootDied(FlightrecError):
    """The guest died (a panic, QEMU exiting) or hung before its command started: worth another boot."""


@dataclass(frozen=True)
class FailedBoot:
    """One boot that died before the command started, and what was kept of it."""

    reason: str
    console: Optional[str] = None  # file name in the output folder


@dataclass(frozen=True)
class GuestRun:
    """What came back from the guest."""

    exit_code: int
    out_dir: Optional[Path]  # host folder holding the guest's output, or None
    boot_s: float  # QEMU started -> guest's command started
    guest_uptime_at_ready: float  # the guest kernel's own clock at that point
    command_s: float  # the command's run time, seen from the host
    wall_s: float  # the whole run_in_guest call
    accel: str
    qemu_peak_rss_mb: float = 0.0
    guest_out: str = ""  # $FLIGHTREC_VM_OUT as the guest saw it (gone once the run is over)
    qemu_argv: tuple[str, ...] = ()
    stopped_by: Optional[int] = None  # the signal that asked the command to stop early (graceful_stop)
    heartbeat_max_gap_s: float = 0.0  # the progress watchdog's margin: longest gap between heartbeats
    boots: int = 1  # boots it took (boot_attempts)
    failed_boots: tuple[FailedBoot, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        d["qemu_argv"] = list(self.qemu_argv)
        d["failed_boots"] = [asdict(b) for b in self.failed_boots]
        return d


def remove_stale_work_dirs() -> list[Path]:
    """Scratch folders of a flightrec that was SIGKILLed (its QEMU died with it: PDEATHSIG)."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
        pid = d.name[len(WORK_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _run_script(command: list[str], job: Path, cwd: Path, env: dict[str, str]) -> str:
    exports = {
        # busybox's modprobe & co. first: the host may have no kmod.
        "PATH": "/run/flightrec-vm/bin:" + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TERM": "dumb",  # nothing may wait for a terminal: no pager, no prompt
        "PAGER": "cat",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": ":".join([str(locate.IMPORT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "FLIGHTREC_IN_VM": "1",
        "FLIGHTREC_VM_JOB": str(job),
        "FLIGHTREC_VM_OUT": str(job / "out"),
        **env,
    }
    lines = ["#!/bin/sh", "# written by flightrec vm on the host, run by the guest's init"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += [
        f"cd {shlex.quote(str(cwd))} || {{ echo 2 > {shlex.quote(str(job / 'rc'))}; exit 2; }}",
        f"{shlex.join(command)} > {shlex.quote(str(job / 'output.log'))} 2>&1 < /dev/null",
        "rc=$?",
        f"echo $rc > {shlex.quote(str(job / 'rc'))}",
        "sync",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class _Signals:
    """What the signal handler does, set as the run goes."""

    teardown: bool = False  # ignore signals: a second Ctrl-C must not cut the cleanup short
    stoppable: bool = False  # the first signal asks the command to stop instead of raising
    stop: Optional[int] = None  # that signal, once it came


@contextmanager
def _signals_raise() -> Iterator[_Signals]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only), so the
    VM is stopped by the same ``finally`` as every other way out, unless the
    yielded state says otherwise. A signal the caller ignores (nohup) stays ignored."""
    mode = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield mode
        return

    def handler(signum: int, _frame: object) -> None:
        if mode.teardown:
            return
        if mode.stoppable and mode.stop is None:
            mode.stop = signum  # the watch loop passes it on to the guest
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in HANDLED_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield mode
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Tail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        self.pos += len(data)
        data = self.rest + data
        *done, self.rest = data.split(b"\n")
        return [ln.decode(errors="replace").rstrip("\r") for ln in done]

    def flush(self) -> list[str]:
        out = self.lines()
        if self.rest:
            out.append(self.rest.decode(errors="replace"))
            self.rest = b""
        return out


def run_in_guest(
    command: list[str],
    kernel: GuestKernel,
    config: VmConfig,
    *,
    timeout: float,
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
    out_dir: Optional[Path] = None,
    files: Optional[dict[str, str]] = None,
    env: Optional[dict[str, str]] = None,
    cwd: Optional[Path] = None,
    say: Say = lambda _: None,
    on_output: Say = lambda _: None,
    graceful_stop: bool = False,
    boot_attempts: int = 1,
    stall_timeout: float = STALL_TIMEOUT,
) -> GuestRun:
    """Boot ``kernel``, run ``command`` in the guest (as root, host root read-only), power off.

    ``files`` are written into the job folder first (name -> text); the
    command finds them under ``$FLIGHTREC_VM_JOB``. ``timeout`` bounds the
    command, ``boot_timeout`` the boot: past either, the watchdog stops QEMU.
    ``stall_timeout``: the progress watchdog (see the module's notes).
    ``graceful_stop``: see the module's notes; the command must watch for
    ``$FLIGHTREC_VM_JOB/stop``. ``boot_attempts``: boots in all when the guest
    dies before its command starts (1: no retry).

    :raises FlightrecError: QEMU, virtiofsd or busybox missing; boot failure; a watchdog.
    :raises Interrupted: SIGINT, SIGTERM or SIGHUP (the VM is stopped first).
    """
    config.check()
    if boot_attempts < 1:
        raise FlightrecError(f"boot attempts must be at least 1, got {boot_attempts}")
    t0 = time.monotonic()
    with _signals_raise() as mode:
        initrd = initramfs.build(kernel)
        remove_stale_work_dirs()
        if any(c.isspace() for c in tempfile.gettempdir() + str(kernel.modules_dir or "")):
            # Both go on the kernel command line, which splits at whitespace.
            raise FlightrecError(
                f"the VM's folders must not contain spaces: {tempfile.gettempdir()} (set TMPDIR to another folder)"
            )
        attempt = _Attempt(
            command,
            kernel,
            config,
            initrd,
            timeout,
            boot_timeout,
            stall_timeout,
            out_dir,
            files or {},
            env or {},
            (cwd or Path.cwd()).resolve(),
            say,
            on_output,
            mode if graceful_stop else None,
        )
        failed: list[FailedBoot] = []
        boot = 0
        while True:
            boot += 1
            mode.teardown = False  # signals count again while this boot runs
            try:
                result = attempt.run(boot, boot_attempts)
            except BootDied as e:
                mode.teardown = True
                attempt.stop()
                kept = _keep_console(attempt.work, out_dir, f"vm-console-boot{boot}.log")
                failed.append(FailedBoot(str(e), kept))
                if boot == boot_attempts:
                    raise _failure(attempt, out_dir, str(e), boot, failed, kernel) from None
                say(f"boot {boot} of {boot_attempts} failed: {e}; booting again")
                continue  # the finally below removes this boot's scratch folder
            except FlightrecError as e:
                mode.teardown = True
                attempt.stop()
                raise _failure(attempt, out_dir, str(e), boot, failed, kernel) from None
            except Interrupted as e:
                mode.teardown = True
                attempt.stop()
                e.console = _failure(attempt, out_dir, f"interrupted by {e}", boot, failed, kernel).console
                raise
            finally:
                mode.teardown = True
                attempt.cleanup()
            result = replace(result, failed_boots=tuple(failed), boots=boot, wall_s=round(time.monotonic() - t0, 2))
            if result.out_dir is not None:
                runfolder.write_json(result.out_dir, runfolder.VM, {"kernel": kernel.as_dict(), **result.as_dict()})
            return result


class RunFailed(FlightrecError):
    """A run failed; ``console`` is the guest's console kept in the output folder, if any."""

    def __init__(self, message: str, console: Optional[Path]) -> None:
        super().__init__(message)
        self.console = console


def _failure(
    attempt: "_Attempt", out_dir: Optional[Path], reason: str, boots: int, failed: list[FailedBoot], kernel: GuestKernel
) -> RunFailed:
    """Keep what the failed run left (console, output, job/out, vm.json) in ``out_dir``
    (QEMU stopped first); the error names the console file."""
    if out_dir is None or attempt.work is None:
        return RunFailed(reason, None)
    console = out_dir / runfolder.VM_CONSOLE
    try:
        _copy_back(attempt.work / "job", attempt.work, out_dir)
        runfolder.write_json(
            out_dir,
            runfolder.VM,
            {
                "kernel": kernel.as_dict(),
                "error": reason,
                "boots": boots,
                "failed_boots": [asdict(b) for b in failed],
                "accel": attempt.config.accel,
                "qemu_argv": list(attempt.argv),
            },
        )
    except (OSError, FlightrecError) as e:
        return RunFailed(f"{reason} (and the guest's console could not be kept: {e})", None)
    if not console.is_file():  # stopped before QEMU started: there is no console
        return RunFailed(reason, None)
    return RunFailed(f"{reason}; guest console: {console}", console)


def _keep_console(work: Optional[Path], out_dir: Optional[Path], name: str) -> Optional[str]:
    """A failed boot's console as ``out_dir/name`` (None without an output folder)."""
    if out_dir is None or work is None or not (work / "console.log").is_file():
        return None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "console.log", out_dir / name)
    except OSError:
        return None
    return name


class _Attempt:
    """One boot of the guest: its scratch folder, QEMU and watch loop."""

    def __init__(
        self,
        command: list[str],
        kernel: GuestKernel,
        config: VmConfig,
        initrd: Path,
        timeout: float,
        boot_timeout: float,
        stall_timeout: float,
        out_dir: Optional[Path],
        files: dict[str, str],
        env: dict[str, str],
        cwd: Path,
        say: Say,
        on_output: Say,
        signals: Optional[_Signals],
    ) -> None:
        self.command, self.kernel, self.config, self.initrd = command, kernel, config, initrd
        self.timeout, self.boot_timeout, self.stall_timeout = timeout, boot_timeout, stall_timeout
        self.out_dir, self.files, self.env, self.cwd = out_dir, files, env, cwd
        self.say, self.on_output, self.signals = say, on_output, signals
        self.work: Optional[Path] = None
        self.machine: Optional[Machine] = None
        self.argv: list[str] = []

    def run(self, boot: int, boots: int) -> GuestRun:
        """:raises BootDied: the guest died before its command; FlightrecError: any other failure."""
        t_start = time.monotonic()
        self.work = work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        job = work / "job"
        (job / "out").mkdir(parents=True)
        for name, text in self.files.items():
            (job / name).write_text(text)
        (job / "run.sh").write_text(_run_script(self.command, job, self.cwd, self.env))
        params = [
            "console=ttyS0",
            "panic=-1",
            "rdinit=/init",
            # Warnings and unleveled lines too (a soft lockup's backtrace is unleveled),
            # not the boot's info chatter.
            "loglevel=5",
            # A stuck vCPU is reported after 10 s (not 20), before the progress watchdog
            # fires, with every vCPU's backtrace: the evidence lands in vm-console.log.
            "watchdog_thresh=5",
            "softlockup_all_cpu_backtrace=1",
            # TCG: no speculative-execution mitigations to pay for in a throwaway guest.
            "mitigations=off",
            f"flightrec.job={job}",
        ]
        if self.timeout > 2 * DUMP_LEAD:
            params.append(f"flightrec.dump_at={int(self.timeout) - DUMP_LEAD}")
        if self.kernel.modules_dir is not None:
            params.append(f"flightrec.modules={self.kernel.modules_dir}")
        params += list(self.config.kernel_params())
        self.machine = machine = Machine(
            self.kernel.bzimage, self.initrd, " ".join(params), self.config, {"hostroot": Path("/"), "job": job}, work
        )
        which = f"boot {boot} of {boots}" if boot > 1 else "boot"
        c = self.config
        self.say(f"{which}: {self.kernel.release}, {c.cpus} vCPUs, {c.memory_mb} MB, accel {c.accel}")
        machine.start()
        self.argv = machine.argv
        watch = _Watch(machine, job, self, t_start)
        watch.run()
        assert watch.ready_at is not None
        command_s = (watch.done_at or time.monotonic()) - watch.ready_at
        rc_file = job / "rc"
        if watch.stalled is not None:
            raise FlightrecError(watch.stalled + _kept_output(job))
        if not rc_file.is_file():
            raise FlightrecError(
                f"the guest died while running its command (QEMU exit {machine.poll()}): "
                f"{death_reason(_read(machine.console))}"
            )
        exit_code = int(rc_file.read_text().strip() or "2")
        copied = None
        if self.out_dir is not None:
            self.say(f"copying back: {job / 'out'} -> {self.out_dir}")
            copied = _copy_back(job, work, self.out_dir)
        return GuestRun(
            exit_code,
            copied,
            round(watch.ready_at - t_start, 2),
            watch.uptime,
            round(command_s, 2),
            0.0,
            machine.accel,
            round(watch.peak_rss),
            str(job / "out"),
            tuple(machine.argv),
            None if self.signals is None else self.signals.stop,
            round(watch.beats.max_gap, 1),
        )

    def stop(self) -> None:
        """Stop QEMU and virtiofsd (idempotent): the console is complete after this."""
        if self.machine is not None:
            self.machine.stop()

    def cleanup(self) -> None:
        """Stop QEMU and virtiofsd, remove the scratch folder (kept files are copied first)."""
        self.stop()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def _kept_output(job: Path) -> str:
    names = sorted(p.name for p in (job / "out").iterdir()) if (job / "out").is_dir() else []
    return (
        f"; the guest had written {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
        if names
        else "; the guest had written nothing to its output folder"
    )


class _Heartbeats:
    """The per-vCPU heartbeat files of the guest's init: which vCPU stopped beating."""

    def __init__(self, job: Path, cpus: int) -> None:
        self.job, self.cpus = job, cpus
        self.seen: dict[int, str] = {}
        self.changed: dict[int, float] = {}
        self.max_gap = 0.0  # the longest a vCPU went without a new heartbeat, seen from the host

    def start(self, now: float) -> None:
        self.changed = {cpu: now for cpu in range(self.cpus)}

    def poll(self, now: float) -> None:
        for cpu in range(self.cpus):
            try:
                text = (self.job / f"{initramfs.HEARTBEAT}{cpu}").read_text().strip()
            except OSError:
                continue
            if text and text != self.seen.get(cpu):  # empty: read between the guest's truncate and write
                if cpu in self.seen:
                    self.max_gap = max(self.max_gap, now - self.changed[cpu])
                self.seen[cpu], self.changed[cpu] = text, now

    def stalled(self, now: float, after: float) -> list[int]:
        return [cpu for cpu, t in self.changed.items() if now - t > after]

    def describe(self, cpus: list[int], after: float) -> str:
        which = (
            "every vCPU"
            if len(cpus) == self.cpus
            else ("vCPU " if len(cpus) == 1 else "vCPUs ") + ", ".join(map(str, cpus))
        )
        last = []
        for cpu in cpus:
            parts = self.seen.get(cpu, "").split()
            if len(parts) == 2:
                last.append(f"vCPU {cpu} at guest uptime {parts[1]} s")
        when = f" (last heartbeat: {'; '.join(last)})" if last else " (no heartbeat at all)"
        return f"progress watchdog: no heartbeat from {which} of the guest for {after:g} s{when}"


class _Watch:
    """Follow the console and the command's output until QEMU exits; the watchdogs.
    With signals (graceful stop), pass a stop request on to the guest."""

    def __init__(self, machine: Machine, job: Path, attempt: _Attempt, t_start: float) -> None:
        self.machine, self.job, self.a, self.t_start = machine, job, attempt, t_start
        self.ready_at: Optional[float] = None
        self.done_at: Optional[float] = None
        self.uptime = 0.0
        self.peak_rss = 0.0
        self.stalled: Optional[str] = None  # the progress watchdog's reason, once it fired
        self.stop_at: Optional[float] = None
        self.beats = _Heartbeats(job, attempt.config.cpus)

    def run(self) -> None:
        """:raises BootDied, FlightrecError: boot failure, or a watchdog fired."""
        machine, a = self.machine, self.a
        console, output = _Tail(machine.console), _Tail(self.job / "output.log")
        ticks = 0
        while True:
            ticks += 1
            now = time.monotonic()
            if ticks % 10 == 0:  # once a second
                self.peak_rss = max(self.peak_rss, machine.rss_mb())
                if self.ready_at is not None and self.done_at is None:
                    self.beats.poll(now)
                    self._check_progress(now)
            if a.signals is not None and a.signals.stop is not None and self.stop_at is None:
                name = signal.Signals(a.signals.stop).name
                self._ask_to_stop(
                    name, f"got {name}: asking the guest to stop and save its trace (again to stop the VM at once)"
                )
            for line in console.lines():
                self._console_line(line)
            for line in output.lines():
                a.on_output(line)
            status = machine.poll()
            if status is not None:
                for line in console.flush():  # what QEMU wrote just before it exited (an init FAIL line)
                    self._console_line(line)
                for line in output.flush():
                    a.on_output(line)
                if self.ready_at is None:
                    why = machine.qemu_error() or death_reason(_read(machine.console))
                    raise BootDied(f"the guest died before its command started (QEMU exit {status}): {why}")
                return
            self._check_time(time.monotonic())
            time.sleep(0.1)

    def _console_line(self, line: str) -> None:
        a = self.a
        if initramfs.READY in line and self.ready_at is None:
            self.ready_at = time.monotonic()
            self.uptime = _float_after(line, initramfs.READY)
            self.beats.start(self.ready_at)
            a.say(f"guest ready in {self.ready_at - self.t_start:.1f} s (guest kernel uptime {self.uptime:.1f} s)")
            if a.signals is not None:
                a.signals.stoppable = True  # from now on there is a command to stop
        elif initramfs.DONE in line:
            self.done_at = time.monotonic()
            if a.signals is not None:
                a.signals.stoppable = False  # nothing left to stop: a signal now stops the VM
        elif initramfs.FAIL in line:
            raise FlightrecError(f"guest boot failed: {line.split(initramfs.FAIL, 1)[1].strip()}")

    def _ask_to_stop(self, name: str, why: str) -> None:
        self.stop_at = time.monotonic()
        (self.job / STOP_FILE).write_text(name + "\n")
        self.a.say(why)

    def _check_progress(self, now: float) -> None:
        """The progress watchdog: a vCPU without a heartbeat for stall_timeout seconds."""
        a = self.a
        stalled = self.beats.stalled(now, a.stall_timeout)
        if not stalled:
            return
        every = len(stalled) == a.config.cpus
        if self.stalled is None:
            self.stalled = self.beats.describe(stalled, a.stall_timeout) + self._last_lines()
            if a.signals is not None and not every:
                a.signals.stoppable = False  # a signal now stops the VM at once
                if self.stop_at is None:
                    self._ask_to_stop("SIGTERM", f"{self.stalled}; asking the guest to stop and save its trace")
                self.stalled += "; the guest was asked to stop and save its trace"
                return
        elif a.signals is not None and not every:
            return  # asked to stop, and some vCPU still runs tasks: give it STOP_GRACE
        raise FlightrecError(self.stalled + "; QEMU stopped" + _kept_output(self.job))

    def _last_lines(self) -> str:
        """The guest kernel's reports (a soft lockup and the vCPUs' backtraces come within
        10 s: watchdog_thresh=5), else its last console lines; the command's last output."""
        text = _read(self.machine.console)
        reports = kernel_reports(text)
        said = guest_stall(text)
        parts = [f"guest kernel: {'; '.join(reports[:4])}"] if reports else []
        parts += [f"the guest said: {said}"] if said else []
        # Neither: the console's last lines (its evidence, when there is some, fills them).
        parts = parts or [f"last console lines: {_tail_lines(text, 3) or '(none)'}"]
        output = _tail_lines(_read(self.job / "output.log"), 2)
        return f"; {'; '.join(parts)}; last output: {output or '(none)'}"

    def _check_time(self, now: float) -> None:
        a = self.a
        if self.ready_at is None and now - self.t_start > a.boot_timeout:
            raise BootDied(
                f"watchdog: the guest did not reach its command within {a.boot_timeout:g} s; "
                f"QEMU stopped; console: {_tail_lines(_read(self.machine.console), 4)}"
            )
        if self.ready_at is not None and self.done_at is None and now - self.ready_at > a.timeout:
            said = guest_stall(_read(self.machine.console))
            raise FlightrecError(
                f"watchdog: the guest's command ran over {a.timeout:g} s; QEMU stopped"
                + (f"; the guest said: {said}" if said else "")
            )
        if self.stop_at is not None and self.done_at is None and now - self.stop_at > STOP_GRACE:
            reason = self.stalled + "; " if self.stalled else ""
            raise FlightrecError(
                f"{reason}watchdog: the guest's command did not stop within {STOP_GRACE:g} s of "
                "the request; QEMU stopped"
            )
        if self.done_at is not None and now - self.done_at > 30:
            raise FlightrecError("watchdog: the guest did not power off within 30 s of its command's end")


# A kernel report starts with one of these lines; the RIP lines after it say where.
_REPORT = re.compile(
    r"(Kernel panic - not syncing: .*|BUG: .*|Oops: .*|general protection fault.*|kernel BUG at .*|"
    r"WARNING: CPU: .*|rcu: INFO: .*|NMI backtrace for cpu \d+|invalid opcode: .*|divide error: .*)"
)
_RIP = re.compile(r"RIP: 0010:(\S+)")  # kernel code (CS 0x10); a user RIP says nothing here


def kernel_reports(console: str) -> list[str]:
    """The guest kernel's own reports in its console, in order, each with where it happened:
    "BUG: soft lockup - CPU#0 stuck for 13s! [sh:142] at smp_call_function_many_cond+0xf1/0x330",
    "NMI backtrace for cpu 1 at kprobe_int3_handler+0xd1/0x1b0 < __schedule+0x1bd/0xa00" (the
    second RIP is the code the first one interrupted)."""
    reports: list[tuple[str, list[str]]] = []
    for raw in console.splitlines():
        line = re.sub(r"^\[\s*[\d.]+\]\s*", "", raw).strip()
        m = _REPORT.search(line)
        if m:
            reports.append((m.group(1), []))
            continue
        r = _RIP.search(line)
        if r and reports and len(reports[-1][1]) < 2 and r.group(1) not in reports[-1][1]:
            reports[-1][1].append(r.group(1))
    out: list[str] = []
    seen: set[str] = set()
    for head, rips in reports:
        text = head + (" at " + " < ".join(rips) if rips else "")
        key = re.sub(r"\d+s!", "Ns!", text)  # a soft lockup repeats with a longer "stuck for Ns!"
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+) in (\S+)')
_TASK = re.compile(r"^task (\d+) (\S+) (\S) ?(\S*)$")


def _on_a_share(wchan: str) -> bool:
    """A wait channel of FUSE, which virtiofs is: a task waiting on a share's daemon."""
    return wchan == "request_wait_answer" or wchan.startswith("fuse_")


def guest_stall(console: str) -> str:
    """The guest init's own account of a hang (flightrec/vm/initramfs.py's stall
    watcher), in one line: why it spoke, the processes in uninterruptible sleep
    or waiting on a share, with their wait channels, and where the dumped Python
    process's main thread was in flightrec ("" when it said nothing)."""
    reasons: list[str] = []
    blocked: list[str] = []
    stacks: list[str] = []  # per dumped thread: where it was in flightrec
    for raw in console.splitlines():
        line = re.sub(r"^\[\s*[\d.]+\]\s*", "", raw).rstrip()
        if initramfs.STALL in line:
            said = line.split(initramfs.STALL, 1)[1].strip()
            task = _TASK.match(said)
            if task is None:
                reasons.append(said)
            elif task.group(3) == "D" or _on_a_share(task.group(4)):
                name = f"{task.group(2)} (pid {task.group(1)}, {task.group(3)} in {task.group(4) or '?'})"
                if name not in blocked:
                    blocked.append(name)
            continue
        if re.match(r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):", line):
            stacks.append("")
            continue
        frame = _FRAME.match(line)
        if frame and stacks and "/flightrec/" in frame.group(1):
            path, lineno, func = frame.groups()
            # Its two innermost frames in flightrec: the step it was in, and what called it.
            if stacks[-1].count(" < ") < 1:
                here = f"flightrec/{path.rsplit('/flightrec/', 1)[1]}:{lineno} in {func}"
                stacks[-1] = f"{stacks[-1]} < {here}" if stacks[-1] else here
    if not reasons:
        return ""
    parts = [reasons[0]]
    if blocked:
        more = f" and {len(blocked) - 4} more" if len(blocked) > 4 else ""
        parts.append("waiting in the kernel: " + ", ".join(blocked[:4]) + more)
    where = [s for s in stacks if s]
    if where:  # the main thread is dumped last
        parts.append(f"flightrec's main thread at {where[-1]}")
    return "; ".join(parts)


def death_reason(console: str) -> str:
    """What killed the guest, from its console: the panic and the reports before it, or its last lines."""
    reports = kernel_reports(console)
    panics = [r for r in reports if r.startswith("Kernel panic")]
    if panics:
        return "; ".join([panics[0], *[r for r in reports if not r.startswith("Kernel panic")][:3]])
    return "; ".join(reports[:4]) or _tail_lines(console, 4) or "(no console output)"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail_lines(text: str, n: int) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _float_after(line: str, marker: str) -> float:
    try:
        return float(line.split(marker, 1)[1].split()[0])
    except (IndexError, ValueError):
        return 0.0


def _copy_back(job: Path, work: Path, out_dir: Path) -> Path:
    """Copy job/out to ``out_dir`` with the guest's console and command output beside it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (job / "out").is_dir():
            shutil.copytree(job / "out", out_dir, dirs_exist_ok=True, symlinks=True)
        for src, name in ((work / "console.log", runfolder.VM_CONSOLE), (job / "output.log", runfolder.VM_OUTPUT)):
            if src.is_file():
                shutil.copyfile(src, out_dir / name)
    except OSError as e:
        raise FlightrecError(f"cannot copy the guest's output to {out_dir}: {e}") from None
    return out_dir
