"""Helpers shared by the record and cleanup tests: run flightrec, snapshot the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Optional

import pytest

from flightrec import capabilities, tracefs
from flightrec.record import forwarder, state

REPO = Path(__file__).resolve().parents[2]


def skip_unless_can_record() -> None:
    """Skip with the reason when this machine cannot record."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, XDP, tracefs)")
    why = forwarder.forwarder_missing()
    if why:
        pytest.skip(why)
    why = capabilities.can_run()
    if why:
        pytest.skip(why)
    tracefs.ensure_mounted()


def snapshot() -> dict:
    """What a recording must leave exactly as it found it.

    Namespaces and instances are compared by flightrec's own prefix only:
    everything a recording creates carries it, and other tools running on the
    same machine (a forwarder test, a benchmark) must not fail these tests.
    """
    root = tracefs.ensure_mounted()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    top = tracefs.global_settings(root)
    return {
        "netns": sorted(n for n in state.list_netns() if n.startswith("flightrec")),
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines() if ":" in line),
        "instances": [i for i in top.instances if i.startswith("flightrec")],
        "trace_clock": top.trace_clock,
        "buffer_size_kb": top.buffer_size_kb,
        "tracing_on": top.tracing_on,
        "current_tracer": top.current_tracer,
        "registry": state.registry_path().exists(),
    }


# Every BPF program flightrec loads, by name: the BPF kernel-event backend
# (c/xsk_trace/xsk_trace.bpf.c), the forwarder's XDP program, the VM's widener.
XSK_TRACE_PROGRAMS = frozenset({"xsk_rx_reserve", "xsk_flush", "xsk_tx_get_data"})
FLIGHTREC_PROGRAMS = XSK_TRACE_PROGRAMS | {"xdp_meta", "widen_flush", "widen_reserve"}
# What `ps` calls the processes a recording starts.
HELPER_COMMS = frozenset({"forwarder", "xsk_trace", "iperf3", "stamp"})


def _bpftool(*args: str) -> list:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"bpftool {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout or "[]")


def bpf_programs(names: frozenset = FLIGHTREC_PROGRAMS) -> dict[int, str]:
    """id -> name of the loaded BPF programs named in ``names``."""
    return {p["id"]: p.get("name", "") for p in _bpftool("prog", "show") if p.get("name") in names}


def bpf_links(names: frozenset = FLIGHTREC_PROGRAMS) -> int:
    """How many BPF links hold a program named in ``names``."""
    ids = set(bpf_programs(names))
    return sum(1 for link in _bpftool("link", "show") if link.get("prog_id") in ids)


def helper_processes() -> list[str]:
    """Live forwarder, xsk_trace, iperf3 and stamp processes ("pid comm")."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm in HELPER_COMMS and state.process_start_time(int(d.name)) is not None:
            found.append(f"{d.name} {comm}")
    return sorted(found)


def root_xdp() -> list[str]:
    """Links of the root namespace with an XDP program attached."""
    out = subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    return sorted(link["ifname"] for link in json.loads(out or "[]") if link.get("xdp"))


def kprobes(root: Path) -> list[str]:
    """flightrec's lines of kprobe_events ([] on a kernel without kprobes)."""
    try:
        text = (root / "kprobe_events").read_text()
    except OSError:
        return []
    return [line for line in text.splitlines() if "flightrec" in line]


def everything() -> dict:
    """:func:`snapshot` and the rest of what a run may touch: BPF programs and
    links, XDP on the root namespace's links, kprobes, the top-level
    bpf_trace_printk enable, /run/flightrec's entries (the lock file aside)
    and the helper processes. Equal before and after a run: nothing left."""
    root = tracefs.ensure_mounted()
    printk = root / "events" / "bpf_trace" / "bpf_trace_printk" / "enable"
    try:
        run_entries = sorted(p.name for p in state.STATE_DIR.iterdir() if p.name != "lock")
    except FileNotFoundError:
        run_entries = []
    return {
        **snapshot(),
        "bpf_programs": sorted(bpf_programs().values()),
        "bpf_links": bpf_links(),
        "root_xdp": root_xdp(),
        "kprobes": kprobes(root),
        "printk_enable": printk.read_text().strip() if printk.exists() else None,
        "run_flightrec": run_entries,
        "helper_processes": helper_processes(),
    }


def differences(before: dict, after: dict) -> list[str]:
    """One "key: before -> after" line per entry that changed."""
    return [
        f"{key}: {before.get(key)} -> {after.get(key)}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def left_behind(before: dict, timeout: float = 10.0) -> list[str]:
    """:func:`differences` from ``before`` to :func:`everything` now, asked again
    for up to ``timeout`` s: BPF programs are freed after an RCU grace period,
    and a killed run's children take a moment to die."""
    deadline = time.monotonic() + timeout
    left = differences(before, everything())
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = differences(before, everything())
    return left


def flightrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "flightrec", *args]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(flightrec(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def default_signals() -> None:
    # A shell running the tests in the background ignores SIGINT, and flightrec
    # keeps an inherited SIG_IGN: give it the default, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Every flightrec a test started: the conftest's stop_strays ends the ones a
# failed assertion left running, so that one failure does not fail the next
# tests with "another flightrec is recording".
STARTED: list[subprocess.Popen] = []


def stop_strays() -> list[int]:
    """SIGINT (then SIGKILL) every flightrec a test started and left running; their pids."""
    strays = [p for p in STARTED if p.poll() is None]
    for p in strays:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=30)
    STARTED.clear()
    return [p.pid for p in strays]


def start(*args: str) -> subprocess.Popen:
    STARTED.append(_popen(*args))
    return STARTED[-1]


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        flightrec(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=default_signals,
    )


def registry() -> Optional[dict]:
    try:
        return json.loads(state.registry_path().read_text())
    except (OSError, ValueError):
        return None


def wait_forwarding(proc: subprocess.Popen, timeout: float = 20) -> dict:
    """Wait until the recording's registry lists iperf3 clients (traffic flows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flightrec exited early: {proc.communicate()}"
        reg = registry()
        if (
            reg
            and reg.get("pid") == proc.pid
            and any(p["what"] == "iperf3-client-tcp" for p in reg.get("processes", []))
        ):
            return reg
        time.sleep(0.1)
    raise AssertionError("recording did not start forwarding in time")


def forwarder_pid(reg: dict) -> int:
    return next(p["pid"] for p in reg["processes"] if p["what"] == "forwarder")


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[str, str]:
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


class TimedLines:
    """A child's output read by a thread, each line with the time.monotonic() it arrived."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.done = False
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> Optional[float]:
        """When a line containing ``needle`` arrived (waiting up to ``timeout``), or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = self.first_after(0.0, needle)
                left = deadline - time.monotonic()
                if found is not None or self.done or left <= 0:
                    return found
                self.cond.wait(min(left, 0.5))

    def first_after(self, t: float, needle: str) -> Optional[float]:
        """When the first line containing ``needle`` at or after ``t`` arrived, or None."""
        with self.cond:
            return next((at for at, line in self.lines if at >= t and needle in line), None)

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.lines)


def build_with_markers(source: Path, exe: Path, *libs: str) -> Path:
    """``source`` compiled as a user's program would be, against the header that
    `flightrec markers --cflags` names (warnings are errors); skips without a compiler."""
    cc = shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    cflags = run("markers", "--cflags").stdout.split()
    subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-O2", *cflags, "-o", str(exe), str(source), *libs], check=True)
    return exe
