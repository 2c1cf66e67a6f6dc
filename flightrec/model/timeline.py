"""Typed rows (flightrec.parse) → one cross-CPU timeline of events, its window and each CPU's history.

The timeline is a pandas frame (one row per event, in time order) for the
questions asked of it as a whole (window, statistics, a descriptor's life,
the events around a moment); the replay walks the same columns as lists.
Where each CPU's stream is whole (flightrec.model.history) is worked out
here, once, from the text's overrun marks and lost-event lines.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Optional

import numpy as np

from flightrec.model.history import History, build_history
from flightrec.parse.events import Typed
from flightrec.parse.ftrace import ParsedTrace

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LossSpan:
    """CPU `cpu` lost `count` events (None: unknown) somewhere in (after, before)."""

    line: int
    cpu: int
    count: Optional[int]
    after: float  # last surviving event of that CPU before the loss (-inf: none)
    before: float  # first surviving event after it (+inf: none)


@dataclass(frozen=True)
class Window:
    """The span of the trace, and from when every CPU's events are present.

    When the text says the per-CPU buffers overran, each CPU's oldest events
    are gone and its surviving data starts at its own time: only from the
    latest of those starts (`complete_from`) is every CPU recording. The
    analysis reasons per CPU instead (`Timeline.history`); the cut is kept
    for the reports.
    """

    start: float
    end: float
    complete_from: float
    cpu_first: dict[int, float]
    overrun: bool


@dataclass(frozen=True, kw_only=True)
class Timeline(Typed):
    """Every event of one trace, typed, in time order: the typed columns
    (`kind`, `addr`, `xs`, `sock`, ... index-aligned with `frame` rows; see
    flightrec.parse.events.Typed), plus the parsed rows they type."""

    source: str
    parsed: ParsedTrace
    window: Window
    losses: list[LossSpan]
    history: History

    def __len__(self) -> int:
        return self.rows

    @property
    def ts(self) -> Sequence[float]:
        return self.parsed.ts

    @property
    def cpu(self) -> Sequence[int]:
        return self.parsed.cpu

    @property
    def line(self) -> list[int]:
        return self.parsed.line

    @cached_property
    def frame(self) -> "pd.DataFrame":
        """The timeline as a frame, built on first use (pandas is imported
        here: a plain `analyze --json` never needs it)."""
        import pandas as pd

        p = self.parsed
        return pd.DataFrame(
            {
                "line": p.line,
                "cpu": p.cpu,
                "ts": p.ts,
                "task": list(p.task),
                "pid": p.pid,
                "flags": list(p.flags),
                "event": list(p.event),
                "kind": pd.Categorical(self.kind),
                "addr": pd.Series(self.addr, dtype=object),
                "xs": pd.Series(self.xs, dtype=object),
                "len": pd.Series(self.length, dtype=object),
                "sock": self.sock,
                "queue": pd.Series(self.queue, dtype=object),
                "frm": self.frm,
                "to": self.to,
                "detail": self.detail,
                "body": list(p.body),
            }
        )

    def text(self, row: int) -> str:
        """The event's line as ftrace printed it, in a normalised layout."""
        p = self.parsed
        flags = f" {p.flags[row]}" if p.flags[row] else ""
        return f"{p.task[row]}-{p.pid[row]} [{p.cpu[row]:03d}]{flags} {p.ts[row]:.6f}: {p.event[row]}: {p.body[row]}"


def build_timeline(parsed: ParsedTrace, typed: Typed, source: str, kernel_until: Optional[float] = None) -> Timeline:
    """Put the typed rows in time order and compute the window, the loss spans
    and each CPU's history. `kernel_until` is when the kernel-event source
    stopped mid-run (meta.json), on the trace's clock."""
    columns, arrays = typed.columns, typed.arrays
    if not _in_time_order(parsed):
        columns, arrays = typed.permuted(_sort_by_time(parsed)), {}
    cpus = _cpus(parsed)
    window, losses = _window_and_losses(parsed, cpus)
    history = _history(parsed, cpus, window, losses, kernel_until)
    return Timeline(
        typed.rows, columns, arrays, source=source, parsed=parsed, window=window, losses=losses, history=history
    )


def _history(
    parsed: ParsedTrace,
    per_cpu: tuple[list[int], list[int], list[int]],
    window: Window,
    losses: list[LossSpan],
    kernel_until: Optional[float],
) -> History:
    cpus, rows, counts = per_cpu
    ts, line = parsed.array("ts"), parsed.array("line")
    # the "##### CPU c buffer started" line, when there is one, stands just before
    first = {c: (float(ts[r]), parsed.cpu_started.get(c, int(line[r]))) for c, r in zip(cpus, rows)}
    return build_history(
        first,
        dict(zip(cpus, counts)),
        window.overrun,
        [(s.cpu, s.line, s.count, s.after, s.before) for s in losses],
        kernel_until,
        parsed.header_cpus,
    )


def _cpus(parsed: ParsedTrace) -> tuple[list[int], list[int], list[int]]:
    """The CPUs in order of their first event: each one's first row and event count."""
    cpu = parsed.array("cpu")
    if len(cpu) == 0:
        return [], [], []
    counts = np.bincount(cpu)
    present = np.flatnonzero(counts)
    first = [int((cpu == c).argmax()) for c in present.tolist()]
    order = np.argsort(first, kind="stable")
    return present[order].tolist(), np.asarray(first)[order].tolist(), counts[present][order].tolist()


def _in_time_order(parsed: ParsedTrace) -> bool:
    ts = parsed.array("ts")
    return bool(np.all(ts[1:] >= ts[:-1]))


def _sort_by_time(parsed: ParsedTrace) -> list[int]:
    """ftrace merges CPUs by timestamp already; concatenated files may not be.
    Sorts the parsed rows in place; returns the order, for the typed ones."""
    ts = parsed.ts
    order = sorted(range(len(ts)), key=lambda i: (ts[i], parsed.line[i]))
    for name in ("line", "task", "pid", "cpu", "flags", "ts", "event", "body"):
        col = list(getattr(parsed, name))
        setattr(parsed, name, [col[i] for i in order])
    parsed.arrays.clear()
    return order


def _window_and_losses(
    parsed: ParsedTrace, per_cpu: tuple[list[int], list[int], list[int]]
) -> tuple[Window, list[LossSpan]]:
    """A loss before a CPU's first surviving event is that CPU's buffer wrapping
    (trace-cmd says so with "[N EVENTS DROPPED]"); only later ones are gaps."""
    spans = _loss_spans(parsed)
    gaps = [s for s in spans if s.after != float("-inf")]
    return _window(parsed, per_cpu, overrun=parsed.overrun or len(gaps) < len(spans)), gaps


def _window(parsed: ParsedTrace, per_cpu: tuple[list[int], list[int], list[int]], overrun: bool) -> Window:
    if not parsed.ts:
        return Window(0.0, 0.0, 0.0, {}, overrun)
    cpus, rows, _ = per_cpu
    ts = parsed.array("ts")
    first = {c: float(ts[r]) for c, r in zip(cpus, rows)}
    start, end = float(ts[0]), float(ts[-1])
    complete_from = max(first.values()) if overrun else start
    return Window(start, end, complete_from, first, overrun)


def _loss_spans(parsed: ParsedTrace) -> list[LossSpan]:
    if not parsed.losses:
        return []
    per_cpu: dict[int, list[tuple[int, float]]] = {}
    for line, cpu, t in zip(parsed.line, parsed.cpu, parsed.ts):
        per_cpu.setdefault(cpu, []).append((line, t))
    spans = []
    for loss in parsed.losses:
        events = sorted(per_cpu.get(loss.cpu, []))
        pos = bisect.bisect_left(events, (loss.line, float("-inf")))
        after = events[pos - 1][1] if pos > 0 else float("-inf")
        before = events[pos][1] if pos < len(events) else float("inf")
        spans.append(LossSpan(loss.line, loss.cpu, loss.count, after, before))
    return spans
