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

With ``graceful_stop``, the first signal once the command runs only asks it
to stop: the host writes ``job/stop`` (the signal's name), the guest side
(flightrec/vm/guest.py) interrupts its recording, which saves its trace, and
the run ends as usual; a second signal stops the VM at once.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from flightrec.errors import FlightrecError
from flightrec.vm import initramfs
from flightrec.vm.guest import STOP_FILE
from flightrec.vm.kernel import GuestKernel
from flightrec.vm.qemu import Machine, VmConfig

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_BOOT_TIMEOUT = 90.0  # seconds from QEMU's start to the guest's command (TCG boots in ~5 s)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORK_PREFIX = "flightrec-vm-"  # /tmp/flightrec-vm-<pid>-XXXX: the pid tells a stale one
STOP_GRACE = 120.0  # seconds a stopping guest may take to save and power off (TCG is slow)

Say = Callable[[str], None]


class Interrupted(Exception):
    """A handled signal arrived while the guest ran; the VM has been stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        d["qemu_argv"] = list(self.qemu_argv)
        return d


def remove_stale_work_dirs() -> list[Path]:
    """Scratch folders of a flightrec that was SIGKILLed (its QEMU died with it: PDEATHSIG)."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
        pid = d.name[len(WORK_PREFIX):].split("-", 1)[0]
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
        "PYTHONPATH": str(REPO_ROOT) + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "FLIGHTREC_IN_VM": "1",
        "FLIGHTREC_VM_JOB": str(job),
        "FLIGHTREC_VM_OUT": str(job / "out"),
        **env,
    }
    lines = ["#!/bin/sh", "# written by flightrec vm on the host, run by the guest's init"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += [f"cd {shlex.quote(str(cwd))} || {{ echo 2 > {shlex.quote(str(job / 'rc'))}; exit 2; }}",
              f"{shlex.join(command)} > {shlex.quote(str(job / 'output.log'))} 2>&1 < /dev/null",
              "rc=$?",
              f"echo $rc > {shlex.quote(str(job / 'rc'))}",
              "sync", "exit $rc"]
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


def run_in_guest(command: list[str], kernel: GuestKernel, config: VmConfig, *, timeout: float,
                 boot_timeout: float = DEFAULT_BOOT_TIMEOUT, out_dir: Optional[Path] = None,
                 files: Optional[dict[str, str]] = None, env: Optional[dict[str, str]] = None,
                 cwd: Optional[Path] = None, say: Say = lambda _: None,
                 on_output: Say = lambda _: None, graceful_stop: bool = False) -> GuestRun:
    """Boot ``kernel``, run ``command`` in the guest (as root, host root read-only), power off.

    ``files`` are written into the job folder first (name -> text); the
    command finds them under ``$FLIGHTREC_VM_JOB``. ``timeout`` bounds the
    command, ``boot_timeout`` the boot: past either, the watchdog stops QEMU.
    ``graceful_stop``: see the module's notes; the command must watch for
    ``$FLIGHTREC_VM_JOB/stop``.

    :raises FlightrecError: QEMU, virtiofsd or busybox missing; boot failure; watchdog.
    :raises Interrupted: SIGINT, SIGTERM or SIGHUP (the VM is stopped first).
    """
    config.check()
    t0 = time.monotonic()
    with _signals_raise() as mode:
        initrd = initramfs.build(kernel)
        remove_stale_work_dirs()
        if any(c.isspace() for c in tempfile.gettempdir() + str(kernel.modules_dir or "")):
            # Both go on the kernel command line, which splits at whitespace.
            raise FlightrecError(f"the VM's folders must not contain spaces: {tempfile.gettempdir()} "
                                 "(set TMPDIR to another folder)")
        work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        machine: Optional[Machine] = None
        try:
            job = work / "job"
            (job / "out").mkdir(parents=True)
            for name, text in (files or {}).items():
                (job / name).write_text(text)
            (job / "run.sh").write_text(_run_script(command, job, (cwd or Path.cwd()).resolve(), env or {}))
            params = ["console=ttyS0", "quiet", "loglevel=4", "panic=-1", "rdinit=/init",
                      # TCG: no speculative-execution mitigations to pay for in a throwaway guest.
                      "mitigations=off", f"flightrec.job={job}"]
            if kernel.modules_dir is not None:
                params.append(f"flightrec.modules={kernel.modules_dir}")
            params += list(config.cmdline)
            machine = Machine(kernel.bzimage, initrd, " ".join(params), config,
                              {"hostroot": Path("/"), "job": job}, work)
            say(f"boot: {kernel.release}, {config.cpus} vCPUs, {config.memory_mb} MB, accel {config.accel}")
            t_start = time.monotonic()
            machine.start()
            peak: list[float] = [0.0]
            ready_at, uptime, done_at = _watch(machine, job, t_start, timeout, boot_timeout, say, on_output,
                                               peak, mode if graceful_stop else None)
            boot_s = ready_at - t_start
            command_s = (done_at or time.monotonic()) - ready_at
            rc_file = job / "rc"
            if not rc_file.is_file():
                raise FlightrecError(f"the guest powered off without an exit code; console: "
                                     f"{_console_tail(machine)}")
            exit_code = int(rc_file.read_text().strip() or "2")
            copied = None
            if out_dir is not None:
                say(f"copying back: {job / 'out'} -> {out_dir}")
                copied = _copy_back(job, work, out_dir)
            result = GuestRun(exit_code, copied, round(boot_s, 2), uptime, round(command_s, 2),
                              round(time.monotonic() - t0, 2), machine.accel, round(peak[0]), str(job / "out"),
                              tuple(machine.argv), mode.stop)
            if copied is not None:
                (copied / "vm.json").write_text(json.dumps({"kernel": kernel.as_dict(), **result.as_dict()},
                                                           indent=2) + "\n")
            return result
        finally:
            mode.teardown = True
            if machine is not None:
                machine.stop()
            shutil.rmtree(work, ignore_errors=True)


def _watch(machine: Machine, job: Path, t_start: float, timeout: float, boot_timeout: float,
           say: Say, on_output: Say, peak: list[float],
           signals: Optional[_Signals] = None) -> tuple[float, float, Optional[float]]:
    """Follow the console and the command's output until QEMU exits; the watchdog.
    With ``signals`` (graceful stop), pass a stop request on to the guest.

    Returns (ready time, guest uptime at ready, done time or None).
    :raises FlightrecError: boot failure, or the watchdog fired.
    """
    console, output = _Tail(machine.console), _Tail(job / "output.log")
    ready_at: Optional[float] = None
    done_at: Optional[float] = None
    stop_at: Optional[float] = None
    uptime = 0.0
    ticks = 0
    while True:
        ticks += 1
        if ticks % 10 == 0:  # once a second
            peak[0] = max(peak[0], machine.rss_mb())
        if signals is not None and signals.stop is not None and stop_at is None:
            stop_at = time.monotonic()
            name = signal.Signals(signals.stop).name
            (job / STOP_FILE).write_text(name + "\n")
            say(f"got {name}: asking the guest to stop and save its trace (again to stop the VM at once)")
        for line in console.lines():
            if initramfs.READY in line and ready_at is None:
                ready_at = time.monotonic()
                uptime = _float_after(line, initramfs.READY)
                say(f"guest ready in {ready_at - t_start:.1f} s (guest kernel uptime {uptime:.1f} s)")
                if signals is not None:
                    signals.stoppable = True  # from now on there is a command to stop
            elif initramfs.DONE in line:
                done_at = time.monotonic()
                if signals is not None:
                    signals.stoppable = False  # nothing left to stop: a signal now stops the VM
            elif initramfs.FAIL in line:
                raise FlightrecError(f"guest boot failed: {line.split(initramfs.FAIL, 1)[1].strip()}")
        for line in output.lines():
            on_output(line)
        status = machine.poll()
        if status is not None:
            for line in output.flush():
                on_output(line)
            if ready_at is None:
                why = machine.qemu_error() or _console_tail(machine)
                raise FlightrecError(f"the guest did not boot (QEMU exit {status}): {why}")
            return ready_at, uptime, done_at
        now = time.monotonic()
        if ready_at is None and now - t_start > boot_timeout:
            raise FlightrecError(f"watchdog: the guest did not reach its command within {boot_timeout:g} s; "
                                 f"QEMU stopped; console: {_console_tail(machine)}")
        if ready_at is not None and done_at is None and now - ready_at > timeout:
            raise FlightrecError(f"watchdog: the guest's command ran over {timeout:g} s; QEMU stopped")
        if stop_at is not None and done_at is None and now - stop_at > STOP_GRACE:
            raise FlightrecError(f"watchdog: the guest's command did not stop within {STOP_GRACE:g} s of "
                                 "the request; QEMU stopped")
        if done_at is not None and now - done_at > 30:
            raise FlightrecError("watchdog: the guest did not power off within 30 s of its command's end")
        time.sleep(0.1)


def _float_after(line: str, marker: str) -> float:
    try:
        return float(line.split(marker, 1)[1].split()[0])
    except (IndexError, ValueError):
        return 0.0


def _console_tail(machine: Machine, n: int = 4) -> str:
    try:
        text = machine.console.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no console output)"


def _copy_back(job: Path, work: Path, out_dir: Path) -> Path:
    """Copy job/out to ``out_dir`` with the guest's console and command output beside it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(job / "out", out_dir, dirs_exist_ok=True, symlinks=True)
        for src, name in ((work / "console.log", "vm-console.log"), (job / "output.log", "vm-output.log")):
            if src.is_file():
                shutil.copyfile(src, out_dir / name)
    except OSError as e:
        raise FlightrecError(f"cannot copy the guest's output to {out_dir}: {e}") from None
    return out_dir
