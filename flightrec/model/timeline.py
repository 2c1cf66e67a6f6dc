"""Parsed rows → one cross-CPU timeline of typed events, its window and each CPU's history.

The timeline is a pandas frame (one row per event, in time order) for the
questions asked of it as a whole (window, statistics, a descriptor's life,
the events around a moment); the replay walks the same columns as lists.
Where each CPU's stream is whole (flightrec.model.history) is worked out
here, once, from the text's overrun marks and lost-event lines.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Optional

from flightrec.model import kinds
from flightrec.model.history import History, build_history
from flightrec.parse.fields import marker_tuple, parse_hex
from flightrec.parse.ftrace import ParsedTrace

if TYPE_CHECKING:
    import pandas as pd


_FIRST_WORD = re.compile(r"[^ \t\v\f\r]*")


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


@dataclass(frozen=True)
class Typed:
    """What each event means: the columns `build_timeline` would compute."""

    kind: list[str]
    addr: list[Optional[int]]
    xs: list[Optional[int]]
    length: list[Optional[int]]
    sock: list[Optional[str]]
    queue: list[Optional[int]]
    frm: list[Optional[str]]
    to: list[Optional[str]]
    detail: list[Optional[str]]
    slot: list[Optional[int]]
    prod: list[Optional[int]]


@dataclass(frozen=True)
class Timeline(Typed):
    """Every event of one trace, typed, in time order: the typed columns
    (index-aligned with `frame` rows), plus the parsed rows they type."""

    source: str
    parsed: ParsedTrace
    window: Window
    losses: list[LossSpan]
    history: History

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


def typed_from_scan(sc) -> Typed:
    """The C scanner's typed columns as Python lists (None where absent)."""
    import numpy as np

    c = sc.cols

    def optional(values, present):
        out = values.astype(object)
        out[~present] = None
        return out.tolist()

    kind_names = np.array(kinds.SCAN_KINDS, dtype=object)
    states = np.array(["FREE", "FILL", "RX", "TX", "COMP", None], dtype=object)  # -1 -> None
    socks = np.array(sc.socks + [None], dtype=object)
    detail: list[Optional[str]] = [None] * len(c["kind"])
    data = sc.data
    for i, off, ln in zip(np.flatnonzero(c["detail_len"] >= 0).tolist(),
                          c["detail_off"][c["detail_len"] >= 0].tolist(),
                          c["detail_len"][c["detail_len"] >= 0].tolist()):
        detail[i] = data[off:off + ln].decode("utf-8", "replace")
    return Typed(
        kind=kind_names[c["kind"]].tolist(),
        addr=optional(c["addr"], (c["has_addr"] & 1) == 1),
        xs=optional(c["xs"], (c["has_addr"] & 2) == 2),
        length=optional(c["len"], c["len"] >= 0),
        sock=socks[c["sock"]].tolist(),
        queue=optional(c["queue"], c["queue"] >= 0),
        frm=states[c["frm"]].tolist(),
        to=states[c["to"]].tolist(),
        detail=detail,
        slot=optional(c["slot"], c["slot"] >= 0),
        prod=optional(c["prod"], c["prod"] >= 0),
    )


def build_timeline(parsed: ParsedTrace, source: str, typed: Optional[Typed] = None,
                   kernel_until: Optional[float] = None) -> Timeline:
    """Type every event (unless the C scanner already did) and compute the
    window, the loss spans and each CPU's history. `kernel_until` is when the
    kernel-event source stopped mid-run (meta.json), on the trace's clock."""
    if typed is None or not _in_time_order(parsed.ts):
        # the Python path re-sorts rows before typing them
        _sort_by_time(parsed)
        typed = _type_rows(parsed)
    window, losses = _window_and_losses(parsed)
    history = _history(parsed, window, losses, kernel_until)
    return Timeline(**vars(typed), source=source, parsed=parsed, window=window, losses=losses, history=history)


def _history(parsed: ParsedTrace, window: Window, losses: list[LossSpan], kernel_until: Optional[float]) -> History:
    counts = Counter(parsed.cpu)
    first: dict[int, tuple[float, int]] = {}
    for cpu, t, line in zip(parsed.cpu, parsed.ts, parsed.line):
        if cpu not in first:
            # the "##### CPU c buffer started" line, when there is one, stands just before
            first[cpu] = (t, parsed.cpu_started.get(cpu, line))
            if len(first) == len(counts):
                break
    return build_history(first, counts, window.overrun,
                         [(s.cpu, s.line, s.count, s.after, s.before) for s in losses], kernel_until,
                         parsed.header_cpus)


def _type_rows(parsed: ParsedTrace) -> Typed:
    """What each event means, in Python (the C scanner's twin: tests/unit/test_scan.py)."""
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
    slot: list[Optional[int]] = [None] * n
    prod: list[Optional[int]] = [None] * n

    kernel_cache: dict[str, Optional[str]] = {}
    events, bodies = parsed.event, parsed.body
    marker_events = kinds.MARKER_EVENTS
    MARKER, NOTE = kinds.MARKER, kinds.NOTE
    for i in range(n):
        ev = events[i]
        body = bodies[i]
        if ev in marker_events:
            if ev == "print":
                # trace-cmd shows the ftrace print event as "ip: text".
                _, sep, rest = body.partition(": ")
                if not sep:
                    continue
                body = rest
            m = marker_tuple(body)
            if m is None:
                continue
            addr[i] = m[2]
            detail[i] = m[5]
            if m[0] is None:
                kind[i] = NOTE
            else:
                kind[i] = MARKER
                sock[i], queue[i], frm[i], to[i] = m[0], m[1], m[3], m[4]
            continue
        if ev == "bpf_trace_printk":
            # the BPF backend's kernel events: "flightrec NAME fields"
            if not body.startswith("flightrec "):
                continue
            body = body[10:]
            ev = _FIRST_WORD.match(body).group()
            body = body[len(ev):]
        k = kernel_cache.get(ev, "")
        if k == "":
            k = kernel_cache[ev] = kinds.kernel_kind(ev)
        if k is None:
            continue
        a = x = ln = sl = pr = None
        for word in body.split():
            name, eq, value = word.partition("=")
            if not eq:
                continue
            if name == "addr":
                a = value
            elif name == "xs":
                x = value
            elif name == "len":
                ln = value
            elif name == "slot":
                sl = value
            elif name == "prod":
                pr = value
        a_val = parse_hex(a, False) if a is not None else None
        x_val = parse_hex(x, False) if x is not None else None
        ln_val = parse_hex(ln, False) if ln is not None else None
        sl_val = parse_hex(sl, False) if sl is not None else None
        pr_val = parse_hex(pr, False) if pr is not None else None
        if ((a is not None and a_val is None) or (x is not None and x_val is None) or (ln is not None and ln_val is None)
                or (sl is not None and sl_val is None) or (pr is not None and pr_val is None)):
            continue
        if (a_val is None and "addr" in kinds.required_fields(k)) or (x_val is None and "xs" in kinds.required_fields(k)):
            continue
        length[i] = ln_val
        slot[i] = None if sl_val is None else sl_val & 0x7FFFFFFFFFFFFFFF
        prod[i] = None if pr_val is None else pr_val & 0x7FFFFFFFFFFFFFFF
        kind[i] = k
        addr[i], xs[i] = a_val, x_val

    return Typed(kind, addr, xs, length, sock, queue, frm, to, detail, slot, prod)


def _in_time_order(ts: list[float]) -> bool:
    return all(a <= b for a, b in zip(ts, ts[1:]))


def _sort_by_time(parsed: ParsedTrace) -> None:
    """ftrace merges CPUs by timestamp already; concatenated files may not be."""
    ts = parsed.ts
    if _in_time_order(ts):
        return
    order = sorted(range(len(ts)), key=lambda i: (ts[i], parsed.line[i]))
    for name in ("line", "task", "pid", "cpu", "flags", "ts", "event", "body"):
        col = list(getattr(parsed, name))
        setattr(parsed, name, [col[i] for i in order])


def _window_and_losses(parsed: ParsedTrace) -> tuple[Window, list[LossSpan]]:
    """A loss before a CPU's first surviving event is that CPU's buffer wrapping
    (trace-cmd says so with "[N EVENTS DROPPED]"); only later ones are gaps."""
    spans = _loss_spans(parsed)
    gaps = [s for s in spans if s.after != float("-inf")]
    return _window(parsed, overrun=parsed.overrun or len(gaps) < len(spans)), gaps


def _window(parsed: ParsedTrace, overrun: bool) -> Window:
    if not parsed.ts:
        return Window(0.0, 0.0, 0.0, {}, overrun)
    first: dict[int, float] = {}
    for cpu, t in zip(parsed.cpu, parsed.ts):
        if cpu not in first:
            first[cpu] = t
    start, end = parsed.ts[0], parsed.ts[-1]
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
