"""Running c/widen: its command line for a plan, and the loader attached for a ``with`` block."""

from __future__ import annotations

import json
import select
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flightrec import locate
from flightrec.errors import FlightrecError
from flightrec.probes.widen.plan import WidenOptions, WidenPlan

LOADER = locate.program("widen")
READY_TIMEOUT = 120.0  # seconds for the loader to load and attach (the verifier under TCG)


def describe(plan: WidenPlan, options: WidenOptions) -> str:
    """One plain line: that windows were widened, where and by how much."""
    queue = "any queue" if options.queue is None else f"queue {options.queue}"
    return (
        f"race windows WIDENED (fault amplifier): flush side {options.flush_ms:g} ms busy-wait on every "
        f"{options.flush_every}th hit at {plan.flush.location} ({plan.flush.file}:{plan.flush.line}, {queue}); "
        f"reserve side {options.reserve_ms:g} ms at {plan.reserve.location} "
        f"({plan.reserve.file}:{plan.reserve.line}) only while its queue is being flushed on another CPU"
    )


def loader_argv(plan: WidenPlan, options: WidenOptions, loader: Path = LOADER) -> list[str]:
    """c/widen's command line for ``plan`` and ``options``.

    :raises FlightrecError: bad options, or --queue without a queue id at the flush site.
    """
    options.check()
    argv = [
        str(loader),
        "--flush",
        plan.flush.location,
        "--flush-key",
        str(plan.flush.key.fetch),
        "--reserve",
        plan.reserve.location,
        "--reserve-key",
        str(plan.reserve.key.fetch),
        "--flush-ns",
        str(int(options.flush_ms * 1e6)),
        "--flush-every",
        str(options.flush_every),
        "--reserve-ns",
        str(int(options.reserve_ms * 1e6)),
    ]
    if options.queue is not None:
        if plan.flush.queue is None or plan.flush.queue.fetch is None:
            raise FlightrecError(
                "widener: the socket's queue id is not readable at the flush site in this "
                "kernel: widen every queue (leave the queue option out)"
            )
        argv += ["--flush-queue", plan.flush.queue.fetch, "--queue", str(options.queue)]
    return argv


@dataclass
class Widener:
    """c/widen attached for the life of a ``with`` block (in the guest: it needs kprobes)."""

    plan: WidenPlan
    options: WidenOptions = field(default_factory=WidenOptions)
    loader: Path = LOADER
    stats: Optional[dict] = None
    _proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """:raises FlightrecError: no loader, or the kernel refused (its one line in the message)."""
        argv = loader_argv(self.plan, self.options, self.loader)
        if not self.loader.is_file():
            raise FlightrecError(f"{self.loader} not built; {locate.build_fix()}")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if '"ready"' not in line:
            self._proc.kill()
            _, err = self._proc.communicate()
            self._proc = None
            why = (err.strip().splitlines() or [f"no ready line in {timeout:g} s"])[-1]
            raise FlightrecError(f"widener: {why}")

    def stop(self) -> dict:
        """Detach; returns the programs' counters (hits, delays and time spent on each side)."""
        if self._proc is None:
            return self.stats or {}
        self._proc.send_signal(signal.SIGINT)
        try:
            out, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        self._proc = None
        self.stats = {}
        for line in out.splitlines():
            if '"exit"' in line:
                self.stats = {k: v for k, v in json.loads(line).items() if k != "event"}
        if not self.stats and err.strip():
            self.stats = {"error": err.strip().splitlines()[-1]}
        return self.stats

    def __enter__(self) -> "Widener":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
