"""Which kernel events go beside the markers, and why.

The analyzer reads three kernel events (docs/markers.md): the RX reserve in
``__xsk_rcv_zc``, the flush in ``xsk_flush`` and the TX read in
``xp_raw_get_data``. Two backends produce them:

* ``kprobes``: probes on those functions. Installing and removing them
  belongs to ``flightrec.probes``, called from :func:`install` and
  :func:`remove` below — the only two places the recording touches probes.
* ``bpf``: tracepoint programs (c/xsk_trace/xsk_trace.bpf.c, loaded by the
  c/xsk_trace process, :class:`BpfTracer`) that print the same events with
  ``bpf_trace_printk``, plus ring slot and producer, for kernels without
  kprobes. Everything they load lives as long as that process.

This module decides the backend by probing what the kernel allows, and says why.
"""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from flightrec import locate, probes, tracefs
from flightrec.errors import FlightrecError
from flightrec.record import state
from flightrec.record.forwarder import child_guard

BACKENDS = ("auto", "kprobes", "bpf", "none")

LOADER_ENV = locate.PROGRAMS["xsk_trace"]
# The event the BPF programs' lines arrive as; enabled in flightrec's instance.
# The BPF programs' online race detector prints a line starting with this
# text (c/xsk_trace/xsk_trace.bpf.c detect_race); a trigger on the printk event
# stops the instance's tracing on it, as the print trigger does on the
# application's detection lines. Its filter runs on every printk line: a
# prefix compares 15 bytes, where "*text*" searched each whole line (strnstr,
# half the trace-event cost of a line in bench/attach's kernel profile).
RACE_PREFIX = "flightrec race "
RACE_TRIGGER_FILE = Path("events/bpf_trace/bpf_trace_printk/trigger")
RACE_TRIGGER = f'traceoff if bpf_string ~ "{RACE_PREFIX}*"'
# The BPF events stand in for these kernel functions (docs/markers.md).
BPF_TRACEPOINTS = {
    "rx_reserve": "raw_tp/xdp_redirect",
    "flush": "tp_btf/napi_poll",
    "tx_get_data": "tp_btf/netif_rx",
}

# name in the trace -> kernel function it probes (docs/markers.md).
KERNEL_EVENTS = {
    "rx_reserve": "__xsk_rcv_zc",
    "flush": "xsk_flush",
    "tx_get_data": "xp_raw_get_data",
}


@dataclass(frozen=True)
class Choice:
    """The backend chosen, why, and which kernel events the trace will lack."""

    backend: str  # "kprobes", "bpf" or "none"
    reason: str
    missing: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "reason": self.reason, "missing": list(self.missing)}


def kprobes_unavailable(tracefs_root: Path) -> Optional[str]:
    """Why kprobes cannot be used here, or None."""
    if not (tracefs_root / "kprobe_events").exists():
        config = _kernel_config("CONFIG_KPROBES")
        why = "CONFIG_KPROBES is not set" if config == "n" else "kprobe events are not enabled"
        return f"no kprobe_events in {tracefs_root} ({why} in this kernel)"
    return probes.kprobes_unavailable_reason(tracefs_root)


def _kernel_config(option: str) -> Optional[str]:
    """'y', 'm', 'n' for a kernel config option from /proc/config.gz, None if unknown."""
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            for line in config:
                if line.startswith(f"{option}="):
                    return line.strip().split("=", 1)[1]
                if line.startswith(f"# {option} is not set"):
                    return "n"
    except OSError:
        return None
    return "n"


def _missing_events() -> tuple[str, ...]:
    return tuple(f"{name} ({func})" for name, func in KERNEL_EVENTS.items())


def loader_path() -> Path:
    """The BPF backend's loader ($FLIGHTREC_XSK_TRACE, build/c/ or the installed bin/)."""
    return locate.program("xsk_trace")


def bpf_unavailable(tracefs_root: Optional[Path] = None, timeout: float = 20.0) -> Optional[str]:
    """Why the BPF tracepoint backend cannot be used here, or None.

    The honest test: ``xsk_trace --probe`` loads and attaches the programs,
    then detaches them and exits (the verifier and the attach are the kernel's
    answer, not a config file's).
    """
    loader = loader_path()
    if not os.access(loader, os.X_OK):
        if os.environ.get(LOADER_ENV):
            return f"${LOADER_ENV} names {loader}, which is not an executable; unset it or build c/xsk_trace"
        return f"BPF backend not built ({loader} missing)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no kernel BTF (/sys/kernel/btf/vmlinux); tp_btf programs need CONFIG_DEBUG_INFO_BTF"
    before = tracefs.toplevel_printk(tracefs_root) if tracefs_root else None
    try:
        proc = subprocess.run([str(loader), "--probe"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{loader} --probe failed: {err}"
    finally:
        if tracefs_root:
            tracefs.restore_toplevel_printk(tracefs_root, before, settle=1.0)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"{loader} --probe exited {proc.returncode}"
    return None


def choose_backend(requested: str, tracefs_root: Path) -> Choice:
    """Pick the kernel-event backend for ``--kernel-events``.

    auto: kprobes where they work, the BPF tracepoint backend where they do
    not, markers alone where neither does.

    :raises FlightrecError: ``kprobes`` or ``bpf`` was asked for and cannot be had.
    """
    if requested not in BACKENDS:
        raise FlightrecError(f"--kernel-events must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "none":
        return Choice("none", "not requested (--kernel-events none)", _missing_events())
    if requested == "bpf":
        why_not_bpf = bpf_unavailable(tracefs_root)
        if why_not_bpf is not None:
            raise FlightrecError(
                f"--kernel-events bpf: {why_not_bpf}; use --kernel-events auto to record markers alone"
            )
        return Choice("bpf", "requested (--kernel-events bpf); BPF tracepoints load and attach", ())
    why_not = kprobes_unavailable(tracefs_root)
    if why_not is None:
        return Choice("kprobes", "kprobes available", ())
    if requested == "kprobes":
        raise FlightrecError(f"--kernel-events kprobes: {why_not}; use --kernel-events auto to record markers alone")
    why_not_bpf = bpf_unavailable(tracefs_root)
    if why_not_bpf is None:
        return Choice("bpf", f"kprobes unavailable: {why_not}; BPF tracepoints load and attach", ())
    return Choice("none", f"recording markers alone: {why_not}; BPF backend: {why_not_bpf}", _missing_events())


def install(
    choice: Choice, instance_dir: Path, prepared: Optional[Any] = None, reg: Optional[state.Registry] = None
) -> tuple[Any, list[str]]:
    """Install the kernel probes, enabled in the instance only.

    The one call site of ``flightrec.probes.install``. Returns the handle for
    :func:`remove` (a JSON-able dict, kept in the crash registry ``reg``) and
    one line per probe that could not be had: those are warnings, the
    recording goes on with the rest. ``prepared`` holds definitions resolved
    elsewhere (flightrec.probes.prepare), used instead of resolving here.
    """
    if choice.backend != "kprobes":
        return None, []
    if reg is not None:
        # Noted before installing: a crash halfway leaves no handle, and
        # cleanup then removes flightrec's whole probe group.
        reg.extra["probes_pending"] = True
        reg.save()
    handle = probes.install(instance_dir, prepared=prepared) if prepared is not None else probes.install(instance_dir)
    if reg is not None:
        reg.extra["probes"] = handle
        reg.save()
    problems = list(handle.get("problems", [])) if isinstance(handle, dict) else []
    return handle, problems


def enable_in(instance: Any) -> None:
    """The BPF backend's lines into this tracefs instance only (put back when it
    closes), and the trigger that stops it on the online race detector's line."""
    instance.set(tracefs.PRINTK_EVENT, "1")
    instance.set(RACE_TRIGGER_FILE, RACE_TRIGGER, restore=f"!{RACE_TRIGGER}")


def installed_events(handle: Any) -> list[str]:
    return list(handle.get("events", [])) if isinstance(handle, dict) else []


def remove(handle: Any) -> list[str]:
    """Remove exactly what :func:`install` added; the one call site of
    ``flightrec.probes.remove``. Returns problems (empty when clean)."""
    if handle is None:
        return []
    return list(probes.remove(handle) or [])


def remove_all_flightrec_probes(tracefs_root: Path) -> list[str]:
    """After a crash mid-install (no handle saved): remove flightrec's whole probe group."""
    if not (tracefs_root / "kprobe_events").exists():
        return []
    _removed, problems = probes.remove_group(tracefs_root)
    return list(problems)


# --- the BPF tracepoint backend --------------------------------------------------


def netns_device(ifname: str, netns: Optional[str] = None) -> tuple[str, int]:
    """(``INODE:IFINDEX`` as xsk_trace's --dev wants, the ifindex) of a device in
    the namespace named ``netns``, or in flightrec's own when it is None.

    :raises FlightrecError: the namespace or device does not exist.
    """
    ns_file = state.NETNS_DIR / netns if netns else Path("/proc/self/ns/net")
    try:
        inode = os.stat(ns_file).st_ino
    except OSError as err:
        raise FlightrecError(f"no network namespace {netns}: {err.strerror}") from err
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "link", "show", "dev", ifname]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    try:
        ifindex = int(json.loads(proc.stdout)[0]["ifindex"])
    except (ValueError, LookupError, TypeError):
        where = f" in namespace {netns}" if netns else ""
        raise FlightrecError(f"no interface {ifname}{where}") from None
    return f"{inode}:{ifindex}", ifindex


class BpfTracer:
    """The xsk_trace process: its programs are attached exactly while it runs.

    Started with the parent-death signal set (a SIGKILL of flightrec takes it
    down, and the kernel drops its links), in its own session so a terminal
    Ctrl-C reaches flightrec only, which then stops it in order.
    """

    def __init__(self, devices: list[str], stderr_path: Path, binary: Optional[Path] = None) -> None:
        self.binary = binary or loader_path()
        self.devices = list(devices)
        self.stderr_path = stderr_path
        self.proc: Optional[subprocess.Popen] = None
        self.ready: Optional[dict] = None
        self.exit_event: Optional[dict] = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        argv = [str(self.binary)]
        for dev in self.devices:
            argv += ["--dev", dev]
        return argv

    def start(
        self, on_process: Optional[Callable[[subprocess.Popen, str], None]] = None, timeout: float = 20.0
    ) -> dict:
        """Start the loader and wait for its ready line; return it.

        ``on_process(process, what)`` is called as soon as the process exists
        (the crash registry, the exit watch), before it has attached anything.

        :raises FlightrecError: it could not start or the kernel refused (its stderr says why).
        """
        with open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    child_guard() + self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as e:
                raise FlightrecError(f"cannot start {self.binary}: {e.strerror}") from e
        if on_process is not None:
            on_process(self.proc, "xsk_trace")
        assert self.proc.stdout is not None
        line = self._readline(timeout)
        try:
            event = json.loads(line) if line else {}
        except ValueError:
            event = {}
        if event.get("event") != "ready":
            self.stop()
            raise FlightrecError(f"BPF backend did not start: {self.stderr_tail() or 'no ready line'}")
        self.ready = event
        return event

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                return self.proc.stdout.readline().decode(errors="replace")
            if self.proc.poll() is not None:
                return ""
        return ""

    def stop(self) -> Optional[int]:
        """SIGINT (it detaches and exits 0), then SIGTERM, then SIGKILL; return the exit status."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
                self.proc.wait(wait)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            rest = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
            for line in rest.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "exit":
                    self.exit_event = event
            self.proc.stdout.close()
        return self.proc.poll()

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(ln for ln in text.splitlines()[-lines:] if ln.strip())
