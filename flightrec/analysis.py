"""The analysis pipeline: trace text → parse (format) → model (timeline, replay) → checks → result.

A library first: the CLI and `record` call `analyze_path` / `analyze_text`.
`analyze_path` also reads DIR/meta.json beside DIR/trace.txt, for the moment
the kernel-event source stopped and the sockets bound zero-copy
(flightrec.parse.meta).
"""

from __future__ import annotations

import mmap
import os
import sys
from dataclasses import asdict, dataclass
from typing import BinaryIO, Optional

from flightrec import native
from flightrec.checks import run_checks
from flightrec.checks.anomaly import Anomaly
from flightrec.checks.coverage import not_run
from flightrec.errors import FlightrecError
from flightrec.hexaddr import hex_or
from flightrec.model.history import History
from flightrec.model.replay import Replay, replay
from flightrec.model.timeline import Timeline, build_timeline
from flightrec.parse.events import parse_trace
from flightrec.parse.meta import kernel_events_ended_at, meta_path, read_meta, zerocopy_sockets


@dataclass(frozen=True)
class Result:
    """What one trace says."""

    source: str
    anomalies: tuple[Anomaly, ...]
    timeline: Timeline
    replay: Replay
    cut_last_line: bool = False
    meta: Optional[dict] = None  # meta.json beside the trace, when there is one

    @property
    def verdict(self) -> str:
        """The first anomaly's verdict (the first thing that went wrong), or "clean"."""
        return self.anomalies[0].verdict if self.anomalies else "clean"

    def stats(self) -> dict:
        tl = self.timeline
        p = tl.parsed
        counts = tl.kind_counts()
        return {
            "lines": p.lines,
            "format": p.format,
            "instances": list(p.instances),
            "events": {
                "total": len(tl),
                **{k: counts.get(k, 0) for k in ("reserve", "flush", "tx", "marker", "note", "other")},
                # TX and COMPLETION kernel events, where the trace has them
                **{k: counts[k] for k in ("xmit", "destruct", "cq_reserve", "cq_submit") if counts.get(k)},
            },
            "cpus": sorted(tl.window.cpu_first),
            "unparsed_lines": p.unparsed,
            "overrun": tl.window.overrun,
            "entries": {"in_buffer": p.entries[0], "written": p.entries[1]} if p.entries else None,
            "losses": [{"cpu": s.cpu, "line": s.line, "count": s.count} for s in tl.losses],
            "sockets": {s: f"{x:#x}" for s, x in sorted(self.replay.sock_xs.items())},
            # zero-copy sockets: RX order is not FILL order there (docs/markers.md)
            "fill_order_unchecked": sorted(self.replay.unordered),
            # Checks that had nothing to read (no markers: record --app with an unmodified program;
            # kernel events without the fields a check needs).
            "checks_not_run": [asdict(n) for n in not_run(counts.get("marker", 0), tl)],
            "cut_last_line": self.cut_last_line,
        }

    def to_json(self) -> dict:
        """The `--json` object (addresses as "0x…" strings, CPUs as integers)."""
        w = self.timeline.window
        return {
            "source": self.source,
            "verdict": self.verdict,
            "anomalies": [anomaly_json(a) for a in self.anomalies],
            "stats": self.stats(),
            "window": {"start": w.start, "end": w.end, "complete_from": w.complete_from},
            "history": history_json(self.timeline.history),
        }


def _time(t: float) -> Optional[float]:
    """A moment for JSON: ±inf (the whole trace, no end) is null."""
    return t if abs(t) != float("inf") else None


def history_json(h: History) -> dict:
    """Per CPU, where its history begins (null: the whole trace), and the gaps."""
    return {
        "overrun": h.overrun,
        "cpus": [{"cpu": c.cpu, "from": _time(c.since), "line": c.line, "events": c.events} for c in h.cpus.values()],
        "idle_cpus": list(h.idle),
        "kernel_events_ended_at": _time(h.kernel_until),
        "gaps": [gap_json(g) for g in h.gaps],
    }


def gap_json(g) -> dict:
    return {
        "cpu": g.cpu,
        "why": g.why,
        "events": g.events,
        "after": _time(g.after),
        "before": _time(g.before),
        "line": g.line,
        "count": g.count,
        "text": g.describe(),
    }


def claim_json(c) -> dict:
    return {
        "claim": c.text,
        "holds": c.holds,
        "absence": c.absence,
        "events": c.events,
        "cpus": list(c.cpus),
        "every_cpu": c.every_cpu,
        "from": _time(c.start),
        "to": _time(c.end),
        "lines": list(c.lines),
        "leans_on": c.leans_on(),
        "missing": [g.describe() for g in c.gaps],
    }


def anomaly_json(a: Anomaly) -> dict:
    return {
        "kind": a.kind,
        "verdict": a.verdict,
        "addr": hex_or(a.addr),
        "expected": hex_or(a.expected),
        "read_addr": hex_or(a.read_addr),
        "xs": hex_or(a.xs),
        "sock": a.sock,
        "queue": a.queue,
        "reserve_cpu": a.reserve_cpu,
        "flush_cpu": a.flush_cpu,
        "read_cpu": a.read_cpu,
        "line": a.line,
        "ts": a.ts,
        "evidence": [{"line": e.line, "text": e.text, "why": e.why} for e in a.evidence],
        "missing": list(a.missing),
        "explanation": a.explanation,
        "claims": [claim_json(c) for c in a.claims],
    }


def analyze_bytes(
    data: native.Buffer, source: str, kernel_until: Optional[float] = None, meta: Optional[dict] = None
) -> Result:
    """Analyze ftrace text given as bytes (or a file mapped read-only); raises
    FlightrecError when it is not a trace.

    `kernel_until`: when the kernel-event source stopped mid-run, on the trace's
    clock (None: it ran to the end); `meta`: meta.json, kept on the result."""
    parsed, typed = parse_trace(data)
    if not data:
        raise FlightrecError(f"{source}: empty trace")
    if not parsed.line:
        if parsed.first_unparsed is not None:
            n, text = parsed.first_unparsed
            where = f"line {n}: {text!r}" if n else text
            raise FlightrecError(
                f"{source}: not ftrace text ({where}); give the text of "
                "/sys/kernel/tracing/trace or of `trace-cmd report`"
            )
        raise FlightrecError(f"{source}: no events in the trace (only a header)")
    tl = build_timeline(parsed, typed, source, kernel_until)
    rp = replay(tl, zerocopy_sockets(meta))
    return Result(source, tuple(run_checks(tl, rp)), tl, rp, parsed.cut_last_line, meta)


def analyze_text(text: str, source: str = "-", kernel_until: Optional[float] = None) -> Result:
    """Analyze ftrace text held in a string."""
    return analyze_bytes(text.encode("utf-8", "surrogateescape"), source, kernel_until)


HEAD_BYTES = 1 << 16


def _read_text(f: BinaryIO, source: str, mapped: bool = False) -> native.Buffer:
    """The whole stream, unless its start is binary: ftrace text never holds a
    NUL byte, and /dev/zero or a binary pipe would otherwise be read forever.

    `mapped`: a file is mapped read-only where it can be (a regular, non-empty
    file), not read: its pages stay the page cache's, the scan gives back
    those it has passed, and a million-line trace is never resident whole
    beside its columns (bench/analyze: peak RSS)."""
    head = f.peek(HEAD_BYTES)[:HEAD_BYTES] if hasattr(f, "peek") else b""
    nul = head.find(b"\0")
    if nul >= 0:
        raise FlightrecError(
            f"{source}: binary data (a NUL byte at offset {nul}), not ftrace text; give the "
            "text of /sys/kernel/tracing/trace or of `trace-cmd report`"
        )
    if mapped:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # empty, or no file to map (a FIFO, a device)
            pass
    return f.read()


def analyze_path(path: str) -> Result:
    """Analyze a trace file, or standard input for "-"."""
    if path == "-":
        return analyze_bytes(_read_text(sys.stdin.buffer, "<stdin>"), "<stdin>")
    if os.path.isdir(path):
        raise FlightrecError(f"{path}: is a directory, not a trace file")
    try:
        with open(path, "rb", buffering=HEAD_BYTES) as f:
            data = _read_text(f, path, mapped=True)
    except FileNotFoundError:
        raise FlightrecError(f"{path}: no such file") from None
    except PermissionError:
        raise FlightrecError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise FlightrecError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise FlightrecError(f"{path}: cannot read: {e.strerror}") from None
    meta = read_meta(path)
    return analyze_bytes(data, path, kernel_events_ended_at(meta, str(meta_path(path))), meta)
