"""Whose history a claim leans on: from when each CPU's stream is whole.

A flight recorder's per-CPU buffers overwrite their own oldest pages when full
(kernel/trace/ring_buffer.c, rb_handle_head_page moves the head page of the
writing CPU's buffer only), so when a trace overran, each CPU's surviving
stream begins at its own moment and is whole from there on. Two kinds of
claim follow from that:

- a fact seen on CPU c at time t (an event in the trace) is trustworthy: t is
  at or after CPU c's first surviving event;
- a claim that something did NOT happen between t1 and t2 on CPU d needs CPU
  d to have been recording from t1 on, with no lost events between t1 and t2
  (`CPU:d [LOST N EVENTS]`), and, for kernel events, the kernel-event source
  still running at t2 (meta.json's `kernel_events.ended_at`).

A CPU with no event at all in an overrun trace wrote nothing (a writer always
keeps its newest pages), so its empty history is whole. When nothing overran,
every CPU's history is the whole trace. The text of /sys/kernel/tracing/trace
cannot say which CPU overran (trace.c prints `##### CPU c buffer started` for
every CPU once any did), so every CPU's history begins at its first event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

INF = float("inf")

EVENTS = "events"  # any event: markers and kernel events alike
MARKERS = "markers"  # the application's trace_marker lines
KERNEL_HISTORY = "kernel"  # the kernel's reserve / flush / tx events


@dataclass(frozen=True)
class Gap:
    """A stretch of one CPU's stream (every CPU's for cpu None) the trace does not hold."""

    cpu: Optional[int]
    after: float  # the last moment known before it (-inf: from the start)
    before: float  # the first moment known after it (+inf: to the end)
    why: str  # "buffer" (the CPU's buffer began at `before`), "lost", "kernel-ended", "unpaired"
    events: str = EVENTS  # what the gap hides: EVENTS or KERNEL_HISTORY
    line: Optional[int] = None
    count: Optional[int] = None

    def hides(self, t1: float, t2: float, events: str) -> bool:
        """True when events of `events` kind between t1 and t2 may be missing."""
        if self.events == KERNEL_HISTORY and events == MARKERS:
            return False
        return self.after < t2 and self.before > t1

    def describe(self) -> str:
        who = "every CPU" if self.cpu is None else f"CPU {self.cpu}"
        if self.why == "buffer":
            return f"{who}'s events before {self.before:.6f} (its buffer begins there" + (
                f", line {self.line})" if self.line is not None else ")"
            )
        if self.why == "unpaired":
            return (
                f"the kernel's reserve for a read after line {self.line} (no reserve event in the trace pairs with it)"
            )
        if self.why == "kernel-ended":
            return f"kernel events after {self.after:.6f} (the kernel-event source stopped then)"
        n = self.count if self.count is not None else "some"
        return f"{who} lost {n} events (line {self.line}, between {self.after:.6f} and {self.before:.6f})"


@dataclass(frozen=True)
class CpuHistory:
    """Where one CPU's history begins."""

    cpu: int
    since: float  # -inf: the whole trace
    line: Optional[int]  # its first event's line (or its "buffer started" line), when it begins late
    events: int


@dataclass(frozen=True)
class History:
    """From when each CPU's stream is whole, and until when the kernel side ran."""

    cpus: dict[int, CpuHistory]
    gaps: tuple[Gap, ...]  # buffer starts, lost events and the kernel-event source's end
    overrun: bool
    kernel_until: float = INF  # meta.json's kernel_events.ended_at, or +inf
    idle: tuple[int, ...] = ()  # CPUs the header counts that have no event: they wrote nothing

    def since(self, cpu: int) -> float:
        h = self.cpus.get(cpu)
        return h.since if h is not None else -INF

    @property
    def all_since(self) -> float:
        """From when every CPU is recording (the old single cut, `complete_from`)."""
        return max((h.since for h in self.cpus.values()), default=-INF)

    def missing(self, t1: float, t2: float, events: str, cpus: Optional[Iterable[int]] = None) -> tuple[Gap, ...]:
        """The gaps that could hide events of `events` kind between t1 and t2 on `cpus` (None: every CPU)."""
        want = None if cpus is None else set(cpus)
        return tuple(
            g for g in self.gaps if (want is None or g.cpu is None or g.cpu in want) and g.hides(t1, t2, events)
        )


def build_history(
    cpu_first: dict[int, tuple[float, int]],
    counts: dict[int, int],
    overrun: bool,
    losses: Iterable[tuple[int, Optional[int], Optional[int], float, float]],
    kernel_until: Optional[float] = None,
    header_cpus: Optional[int] = None,
) -> History:
    """`cpu_first`: each CPU's first event (time, line); `losses`: (cpu, line, count, after, before)
    of the events lost inside a CPU's stream; `header_cpus`: the CPU count the text's header gives."""
    cpus: dict[int, CpuHistory] = {}
    gaps: list[Gap] = []
    for cpu, (t, line) in sorted(cpu_first.items()):
        if overrun:
            cpus[cpu] = CpuHistory(cpu, t, line, counts.get(cpu, 0))
            gaps.append(Gap(cpu, -INF, t, "buffer", line=line))
        else:
            cpus[cpu] = CpuHistory(cpu, -INF, None, counts.get(cpu, 0))
    for cpu, line, count, after, before in losses:
        gaps.append(Gap(cpu, after, before, "lost", line=line, count=count))
    until = INF if kernel_until is None else kernel_until
    if until < INF:
        gaps.append(Gap(None, until, INF, "kernel-ended", events=KERNEL_HISTORY))
    idle = tuple(c for c in range(header_cpus or 0) if c not in cpus)
    return History(cpus, tuple(gaps), overrun, until, idle)


@dataclass(frozen=True)
class Claim:
    """One step of a verdict's argument and whose history it leans on.

    A seen claim rests on events in the trace (`lines`, on `cpus`); an absence
    claim says something did not happen between `start` and `end` and needs
    the history of `cpus` (every CPU when `every_cpu`) over that span: `gaps`
    lists what the trace lacks there, and the claim holds only without any.
    """

    text: str
    cpus: tuple[int, ...]
    start: float
    end: float
    absence: bool = False
    every_cpu: bool = False
    events: str = EVENTS
    lines: tuple[int, ...] = ()
    gaps: tuple[Gap, ...] = ()

    @property
    def holds(self) -> bool:
        return not self.gaps

    def leans_on(self) -> str:
        """Whose history, in words: 'CPU 0 (line 13)' or 'every CPU (0, 2) from … to …'."""
        if not self.absence:
            where = ", ".join(f"CPU {c}" for c in self.cpus)
            return f"seen on {where}" + (
                f" (line{'s' if len(self.lines) > 1 else ''} {', '.join(map(str, self.lines))})" if self.lines else ""
            )
        who = (
            f"every CPU ({', '.join(map(str, self.cpus))})"
            if self.every_cpu
            else ", ".join(f"CPU {c}" for c in self.cpus)
        )
        what = {MARKERS: "markers", KERNEL_HISTORY: "kernel events"}.get(self.events, "events")
        return f"{who}: no {what} missing from {self.start:.6f} to {self.end:.6f}"


def seen(text: str, cpus: Iterable[int], times: Iterable[float], lines: Iterable[int]) -> Claim:
    """A claim resting on events in the trace."""
    ts = list(times)
    cs = tuple(dict.fromkeys(cpus))
    return Claim(text, cs, min(ts), max(ts), lines=tuple(lines))


def absent(
    history: History, text: str, start: float, end: float, events: str, cpus: Optional[Iterable[int]] = None
) -> Claim:
    """A claim that nothing of `events` kind happened between start and end on `cpus` (None: every CPU)."""
    if cpus is None:
        cs = tuple(sorted(history.cpus))
        return Claim(
            text, cs, start, end, absence=True, every_cpu=True, events=events, gaps=history.missing(start, end, events)
        )
    cs = tuple(dict.fromkeys(cpus))
    return Claim(text, cs, start, end, absence=True, events=events, gaps=history.missing(start, end, events, cs))


def failed(claims: Iterable[Claim]) -> tuple[Gap, ...]:
    """Every gap of the claims that do not hold, once each."""
    return tuple(dict.fromkeys(g for c in claims for g in c.gaps))
