"""Helpers shared by the record and cleanup tests: run flightrec, snapshot the machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from flightrec import tracefs
from flightrec.record import forwarder, session, state

REPO = Path(__file__).resolve().parents[2]


def skip_unless_can_record() -> None:
    """Skip with the reason when this machine cannot record."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, XDP, tracefs)")
    why = forwarder.forwarder_missing()
    if why:
        pytest.skip(why)
    why = session.can_run()
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


def flightrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "flightrec", *args]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(flightrec(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _default_signals() -> None:
    # A shell running the tests in the background ignores SIGINT, and flightrec
    # keeps an inherited SIG_IGN: give it the default, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(flightrec(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_default_signals)


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
        if reg and reg.get("pid") == proc.pid and any(
            p["what"] == "iperf3-client-tcp" for p in reg.get("processes", [])
        ):
            return reg
        time.sleep(0.1)
    raise AssertionError("recording did not start forwarding in time")


def forwarder_pid(reg: dict) -> int:
    return next(p["pid"] for p in reg["processes"] if p["what"] == "forwarder")


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[str, str]:
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)
