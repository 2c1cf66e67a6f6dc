"""Drive the C forwarder (``c/forwarder``) as a child process.

The forwarder reports on stdout, one JSON object a line::

    {"event": "ready"}
    {"event": "stats", "t": 1.0, "rx": [..per queue..], "tx": [..], "markers": N}
    {"event": "anomaly", ...}
    {"event": "exit", ...}

and exits 0 (clean), 3 (anomaly caught, tracing already stopped by itself)
or 2 (setup error). A reader thread turns the lines into :class:`Event`
objects on a queue, so the session can wait on them with a timeout.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from flightrec import locate
from flightrec.errors import FlightrecError

EXIT_CLEAN = 0
EXIT_SETUP = 2
EXIT_ANOMALY = 3

INJECT_FAULTS = ("double-fill", "fill-and-tx", "short-len", "flip-payload", "reuse-in-flight")


def forwarder_path() -> Path:
    """Where the forwarder binary is ($FLIGHTREC_FORWARDER, build/c/ or the installed bin/)."""
    return locate.program("forwarder")


def forwarder_missing() -> Optional[str]:
    """Why the forwarder cannot be run, with the fix; None when it can."""
    path = forwarder_path()
    if not path.exists():
        return f"forwarder not built ({path} missing); {locate.build_fix('the forwarder')}"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


def child_guard() -> list[str]:
    """A prefix that makes a child die with flightrec, even by SIGKILL.

    setpriv sets PR_SET_PDEATHSIG and execs, and the setting survives the
    exec; preexec_fn would do the same but is unsafe with threads running.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def start_logged(
    argv: list[str], stdout_path: Path, stderr_path: Path, env: Optional[dict[str, str]] = None
) -> subprocess.Popen:
    """Start ``argv`` dying with flightrec (child_guard), in its own session,
    its stdout and stderr into those files.

    :raises OSError: it could not be started.
    """
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        return subprocess.Popen(
            child_guard() + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )


def last_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` non-blank lines of a log file ([] when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


@dataclass(frozen=True)
class Event:
    """One line of the forwarder's stdout; ``kind`` is its "event" field."""

    kind: str
    data: dict = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when read


@dataclass(frozen=True)
class ForwarderConfig:
    outer: str  # NETNS_PATH:IFNAME
    inner: str
    queues: int
    trace_dir: Optional[Path]
    duration: float
    inject: Optional[str] = None
    inject_after: Optional[int] = None
    stats_path: Optional[Path] = None
    frames: Optional[int] = None
    flagged_path: Optional[Path] = None  # --flagged: bytes of every flagged packet
    mode: Optional[str] = None  # --mode copy|zerocopy|auto (the forwarder's default: copy)
    payload_port: Optional[int] = None  # --payload-port: check stamped UDP payloads to it
    inject_count: Optional[int] = None  # --inject-count (flip-payload)
    markers: Optional[str] = None  # --markers batched|per-descriptor (the forwarder's default: batched)
    tx_twins: bool = False  # --tx-twins: a TX-only second socket per queue, sharing its COMPLETION ring

    def argv(self, binary: Path) -> list[str]:
        argv = [
            str(binary),
            "--outer",
            self.outer,
            "--inner",
            self.inner,
            "--queues",
            str(self.queues),
            "--duration",
            f"{self.duration:g}",
        ]
        if self.trace_dir is not None:
            argv += ["--trace-dir", str(self.trace_dir)]
        if self.inject:
            argv += ["--inject", self.inject]
        if self.inject_after is not None:
            argv += ["--inject-after", str(self.inject_after)]
        if self.stats_path is not None:
            argv += ["--stats", str(self.stats_path)]
        if self.frames is not None:
            argv += ["--frames", str(self.frames)]
        if self.flagged_path is not None:
            argv += ["--flagged", str(self.flagged_path)]
        if self.mode is not None:
            argv += ["--mode", self.mode]
        if self.payload_port is not None:
            argv += ["--payload-port", str(self.payload_port)]
        if self.inject_count is not None:
            argv += ["--inject-count", str(self.inject_count)]
        if self.markers is not None:
            argv += ["--markers", self.markers]
        if self.tx_twins:
            argv.append("--tx-twins")
        return argv


class Forwarder:
    """The running forwarder; :meth:`stop` is safe to call any number of times."""

    def __init__(self, config: ForwarderConfig, stderr_path: Path, binary: Optional[Path] = None) -> None:
        self.config = config
        self.binary = binary or forwarder_path()
        self.stderr_path = stderr_path
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.proc: Optional[subprocess.Popen] = None
        self.last_stats: Optional[dict] = None
        self.anomalies: list[dict] = []
        self.exit_event: Optional[dict] = None
        self.ready: Optional[dict] = None  # the ready line: per-socket mode read back, driver, rings
        self._reader: Optional[threading.Thread] = None
        self.killed_by_us = False

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        missing = forwarder_missing() if self.binary == forwarder_path() else None
        if missing:
            raise FlightrecError(missing)
        argv = child_guard() + self.config.argv(self.binary)
        with open(self.stderr_path, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    # Own process group: a terminal Ctrl-C reaches flightrec
                    # only, which then stops the forwarder in order.
                    start_new_session=True,
                )
            except OSError as e:
                raise FlightrecError(f"cannot start {self.binary}: {e.strerror}") from e
        self._reader = threading.Thread(target=self._read_stdout, name="forwarder-stdout", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                data = json.loads(line)
                kind = str(data.get("event", "unknown")) if isinstance(data, dict) else "text"
            except ValueError:
                data, kind = {"line": line}, "text"
            if not isinstance(data, dict):
                data = {"value": data}
            if kind == "stats":
                self.last_stats = data
            elif kind == "anomaly":
                self.anomalies.append(data)
            elif kind == "exit":
                self.exit_event = data
            self.events.put(Event(kind, data, time.monotonic()))
        self.events.put(Event("eof", {}, time.monotonic()))

    def next_event(self, timeout: float) -> Optional[Event]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_ready(self, timeout: float = 15.0, check: Optional[Callable[[], None]] = None) -> None:
        """Block until the forwarder says ready; call ``check`` (which may raise) meanwhile.

        :raises FlightrecError: it exited first or took longer than ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.next_event(min(0.2, max(0.0, deadline - time.monotonic())))
            if check is not None:
                check()
            if event is None:
                continue
            if event.kind == "ready":
                self.ready = event.data
                return
            if event.kind in ("eof", "exit"):
                code = self.wait(5)
                raise FlightrecError(f"forwarder failed to start (exit {code}): {self.stderr_tail()}")
        raise FlightrecError(f"forwarder not ready after {timeout:g} s: {self.stderr_tail()}")

    def poll(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code

    def stop(self, grace: float = 5.0) -> Optional[int]:
        """SIGINT, then SIGTERM, then SIGKILL; return the exit status (negative: signal)."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.killed_by_us = True
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            if self.wait(wait) is not None:
                break
        code = self.wait(1)
        if self.proc.stdout:
            self.proc.stdout.close()
        return code

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(last_lines(self.stderr_path, lines)) or "none"

    def read_stats_file(self) -> Optional[dict]:
        """The JSON the forwarder wrote at exit (--stats), if any."""
        path = self.config.stats_path
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return {"error": f"unreadable {path.name}: {err}"}


def describe_exit(code: Optional[int]) -> str:
    """A short reason for a forwarder exit status."""
    if code is None:
        return "still running"
    if code == EXIT_CLEAN:
        return "clean"
    if code == EXIT_ANOMALY:
        return "anomaly"
    if code == EXIT_SETUP:
        return "setup error"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"error (exit {code})"
