"""Parsed rows → one cross-CPU timeline of typed events, and its complete window.

The timeline is a pandas frame (one row per event, in time order) for the
questions asked of it as a whole (window, statistics, a descriptor's life,
the events around a moment); the replay walks the same columns as lists.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from flightrec.model import kinds
from flightrec.parse.fields import parse_kprobe_fields, parse_marker
from flightrec.parse.ftrace import ParsedTrace


@dataclass(frozen=True)
class LossSpan:
    """CPU `cpu` lost `count` events (None: unknown) somewhere in (after, before)."""

    line: int
    cpu: int
    count: Optional[int]
    after: float  # last surviving event of that CPU before the loss (-inf: none)
    before: float  # first surviving event after it (+inf: none)

    def overlaps(self, start: float, end: float) -> bool:
        return self.after < end and self.before > start


@dataclass(frozen=True)
class Window:
    """The span in which every CPU's events are present.

    When the text says the per-CPU buffers overran, each CPU's oldest events
    are gone and its surviving data starts at its own time: only from the
    latest of those starts is the picture complete.
    """

    start: float
    end: float
    complete_from: float
    cpu_first: dict[int, float]
    overrun: bool


@dataclass
class Timeline:
    """Every event of one trace, typed, in time order."""

    source: str
    parsed: ParsedTrace
    # Columns, index-aligned with `frame` rows.
    kind: list[str]
    addr: list[Optional[int]]
    xs: list[Optional[int]]
    length: list[Optional[int]]
    sock: list[Optional[str]]
    queue: list[Optional[int]]
    frm: list[Optional[str]]
    to: list[Optional[str]]
    detail: list[Optional[str]]
    window: Window
    losses: list[LossSpan]
    _frame: Optional[pd.DataFrame] = None

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def ts(self) -> list[float]:
        return self.parsed.ts

    @property
    def cpu(self) -> list[int]:
        return self.parsed.cpu

    @property
    def line(self) -> list[int]:
        return self.parsed.line

    @property
    def frame(self) -> pd.DataFrame:
        """The timeline as a frame, built on first use."""
        if self._frame is None:
            p = self.parsed
            self._frame = pd.DataFrame(
                {
                    "line": p.line,
                    "cpu": p.cpu,
                    "ts": p.ts,
                    "task": p.task,
                    "pid": p.pid,
                    "flags": p.flags,
                    "event": p.event,
                    "kind": pd.Categorical(self.kind),
                    "addr": pd.Series(self.addr, dtype=object),
                    "xs": pd.Series(self.xs, dtype=object),
                    "len": pd.Series(self.length, dtype=object),
                    "sock": self.sock,
                    "queue": pd.Series(self.queue, dtype=object),
                    "frm": self.frm,
                    "to": self.to,
                    "detail": self.detail,
                    "body": p.body,
                }
            )
        return self._frame

    def text(self, row: int) -> str:
        """The event's line as ftrace printed it, in a normalised layout."""
        p = self.parsed
        flags = f" {p.flags[row]}" if p.flags[row] else ""
        return f"{p.task[row]}-{p.pid[row]} [{p.cpu[row]:03d}]{flags} {p.ts[row]:.6f}: {p.event[row]}: {p.body[row]}"

    def row_at_or_after(self, ts: float) -> int:
        return bisect.bisect_left(self.parsed.ts, ts)

    def losses_between(self, start: float, end: float) -> list[LossSpan]:
        return [loss for loss in self.losses if loss.overlaps(start, end)]


def build_timeline(parsed: ParsedTrace, source: str) -> Timeline:
    """Type every event and compute the complete window and the loss spans."""
    _sort_by_time(parsed)
    n = len(parsed.line)
    kind: list[str] = [kinds.OTHER] * n
    addr: list[Optional[int]] = [None] * n
    xs: list[Optional[int]] = [None] * n
    length: list[Optional[int]] = [None] * n
    sock: list[Optional[str]] = [None] * n
    queue: list[Optional[int]] = [None] * n
    frm: list[Optional[str]] = [None] * n
    to: list[Optional[str]] = [None] * n
    detail: list[Optional[str]] = [None] * n

    kernel_cache: dict[str, Optional[str]] = {}
    events, bodies = parsed.event, parsed.body
    for i in range(n):
        ev = events[i]
        body = bodies[i]
        if ev in kinds.MARKER_EVENTS:
            if ev == "print":
                # trace-cmd shows the ftrace print event as "ip: text".
                _, sep, rest = body.partition(": ")
                if not sep:
                    continue
                body = rest
            m = parse_marker(body)
            if m is None:
                continue
            addr[i] = m.addr
            detail[i] = m.detail
            if m.sock is None:
                kind[i] = kinds.NOTE
            else:
                kind[i] = kinds.MARKER
                sock[i], queue[i], frm[i], to[i] = m.sock, m.queue, m.frm, m.to
            continue
        k = kernel_cache.get(ev, "")
        if k == "":
            k = kernel_cache[ev] = kinds.kernel_kind(ev)
        if k is None:
            continue
        fields = parse_kprobe_fields(body)
        try:
            a = fields.get("addr")
            x = fields.get("xs")
            values = (int(a, 16) if a is not None else None, int(x, 16) if x is not None else None)
            ln = fields.get("len")
            length[i] = int(ln, 16) if ln is not None else None
        except ValueError:
            continue
        if any(fields.get(f) is None for f in kinds.required_fields(k)):
            continue
        kind[i] = k
        addr[i], xs[i] = values

    window = _window(parsed)
    losses = _loss_spans(parsed)
    return Timeline(source, parsed, kind, addr, xs, length, sock, queue, frm, to, detail, window, losses)


def _sort_by_time(parsed: ParsedTrace) -> None:
    """ftrace merges CPUs by timestamp already; concatenated files may not be."""
    ts = parsed.ts
    if all(ts[i] <= ts[i + 1] for i in range(len(ts) - 1)):
        return
    order = sorted(range(len(ts)), key=lambda i: (ts[i], parsed.line[i]))
    for name in ("line", "task", "pid", "cpu", "flags", "ts", "event", "body"):
        col = getattr(parsed, name)
        setattr(parsed, name, [col[i] for i in order])


def _window(parsed: ParsedTrace) -> Window:
    if not parsed.ts:
        return Window(0.0, 0.0, 0.0, {}, parsed.overrun)
    first: dict[int, float] = {}
    for cpu, t in zip(parsed.cpu, parsed.ts):
        if cpu not in first:
            first[cpu] = t
    start, end = parsed.ts[0], parsed.ts[-1]
    complete_from = max(first.values()) if parsed.overrun else start
    return Window(start, end, complete_from, first, parsed.overrun)


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
