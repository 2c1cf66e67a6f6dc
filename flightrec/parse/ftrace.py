"""ftrace text → rows: the `trace` file of tracefs (top level or an instance) and
`trace-cmd report` output.

Only line shapes are known here: task, pid, CPU, flags, timestamp, event name
and the event's body. What an event means is the model's business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

# task-pid [cpu] flags ts: event: body. Task names may hold spaces and dashes, so
# the pid is the last "-digits" before the CPU column. trace-cmd omits flags;
# the `record-tgid` option adds a "(tgid)" column.
_LINE = re.compile(
    r"\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[\w.]{4,6})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>[^\s:]+):\s?(?P<body>.*)"
)
_HEADER_ENTRIES = re.compile(r"#\s*entries-in-buffer/entries-written:\s*(\d+)/(\d+)\s+#P:(\d+)")
_CPU_STARTED = re.compile(r"#####\s*CPU\s+(\d+)\s+buffer started\s*####")
_LOST = re.compile(r"CPU:(\d+)\s+\[(?:LOST\s+(\d+)\s+EVENTS|LOST EVENTS|(\d+)\s+EVENTS DROPPED|EVENTS DROPPED)\]")
_TRACECMD_CPUS = re.compile(r"cpus=(\d+)\s*$")
# `trace-cmd report` puts "name: " before each event of an instance's buffer,
# then the task as usual (right-aligned): the regex above takes it for the task.
_INSTANCE = re.compile(r"([^\s:]+): +(?=\S)")

# Longer lines are not ftrace output (an event line is bounded by the kernel's
# print buffer); skipping them keeps a garbage file from costing regex time.
MAX_LINE = 1 << 16


@dataclass(frozen=True)
class Loss:
    """Events a CPU lost at this point of its stream (count None when unknown)."""

    line: int
    cpu: int
    count: Optional[int]


@dataclass
class ParsedTrace:
    """Columns of every event line, plus what the text says about completeness."""

    line: Sequence[int] = field(default_factory=list)
    task: Sequence[str] = field(default_factory=list)
    pid: Sequence[int] = field(default_factory=list)
    cpu: Sequence[int] = field(default_factory=list)
    flags: Sequence[str] = field(default_factory=list)
    ts: Sequence[float] = field(default_factory=list)
    event: Sequence[str] = field(default_factory=list)
    body: Sequence[str] = field(default_factory=list)
    format: str = "ftrace"
    lines: int = 0
    unparsed: int = 0
    first_unparsed: Optional[tuple[int, str]] = None
    entries: Optional[tuple[int, int]] = None  # (in buffer, written) from the header
    header_cpus: Optional[int] = None
    cpu_started: dict[int, int] = field(default_factory=dict)  # cpu -> line of "buffer started"
    losses: list[Loss] = field(default_factory=list)
    cut_last_line: bool = False
    instances: tuple[str, ...] = ()  # trace-cmd: the instances whose prefix was taken off the task names
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # see array()

    def array(self, name: str) -> np.ndarray:
        """A numeric column (line, pid, cpu, ts) as a numpy array, made once;
        the C scanner's path has them already."""
        a = self.arrays.get(name)
        if a is None:
            a = self.arrays[name] = np.asarray(getattr(self, name))
        return a

    @property
    def overrun(self) -> bool:
        """True when the text says some CPU's oldest events were overwritten."""
        if self.entries is not None and self.entries[0] < self.entries[1]:
            return True
        return bool(self.cpu_started)


def parse_lines(lines: Iterable[str]) -> ParsedTrace:
    """Parse ftrace text lines (1-based numbering follows the input)."""
    out = ParsedTrace()
    match = _LINE.match
    a_line, a_task, a_pid, a_cpu = out.line.append, out.task.append, out.pid.append, out.cpu.append
    a_flags, a_ts, a_event, a_body = out.flags.append, out.ts.append, out.event.append, out.body.append
    n = 0
    for n, text in enumerate(lines, 1):
        if len(text) > MAX_LINE:
            out.unparsed += 1
            if out.first_unparsed is None:
                out.first_unparsed = (n, text[:80])
            continue
        m = match(text)
        if m is not None:
            task, pid, cpu, flags, ts, event, body = m.groups()
            a_line(n)
            a_task(task)
            a_pid(int(pid))
            a_cpu(int(cpu))
            a_flags(flags or "")
            a_ts(float(ts))
            a_event(event)
            a_body(body.rstrip("\n"))
            continue
        _meta_line(out, n, text)
    out.lines = n
    if out.format == "trace-cmd":
        out.task, out.instances = _without_instances(out.task)
    return out


def _without_instances(tasks: Sequence[str]) -> tuple[Sequence[str], tuple[str, ...]]:
    """Task names without trace-cmd's instance prefix, and the instances seen.
    Tasks repeat: each distinct one is looked at once."""
    from flightrec.parse.scan import OffsetStrings, string_ids

    ids, distinct = string_ids(tasks, np.arange(len(tasks)))
    cut = [_INSTANCE.match(t) for t in distinct]
    if not any(cut):
        return tasks, ()
    instances = tuple(sorted({m.group(1) for m in cut if m}))
    if isinstance(tasks, OffsetStrings):
        # offsets are bytes: the prefix's length in bytes, per distinct task
        skip = np.array([len(m.group(0).encode()) if m else 0 for m in cut], dtype=np.int64)[ids]
        return OffsetStrings(tasks._data, tasks._off + skip, tasks._len - skip), instances
    stripped = [t[m.end() :] if m else t for t, m in zip(distinct, cut)]
    return [stripped[i] for i in ids.tolist()], instances


def parse_bytes(data: bytes) -> ParsedTrace:
    """Parse a whole trace held in bytes, in pure Python.

    Lines end at "\n" only; a last line without one was cut short (a file
    cut mid-write) and is left out, so no truncated address reaches a check.
    """
    lines = data.decode("utf-8", "replace").split("\n")
    tail = lines.pop()
    out = parse_lines(lines)
    out.cut_last_line = tail != ""
    return out


def parsed_from_scan(sc) -> ParsedTrace:
    """The ParsedTrace of a C scan (flightrec.parse.scan), strings left undecoded."""
    from flightrec.parse.scan import NumberColumn, OffsetStrings

    c = sc.cols
    out = ParsedTrace(
        line=NumberColumn(c["line"]),
        pid=NumberColumn(c["pid"]),
        cpu=NumberColumn(c["cpu"]),
        ts=NumberColumn(c["ts"]),
        task=OffsetStrings(sc.data, c["task_off"], c["task_len"]),
        flags=OffsetStrings(sc.data, c["flags_off"], c["flags_len"]),
        event=OffsetStrings(sc.data, c["event_off"], c["event_len"]),
        body=OffsetStrings(sc.data, c["body_off"], c["body_len"]),
    )
    out.arrays.update((name, c[name]) for name in ("line", "pid", "cpu", "ts"))
    out.lines = sc.lines
    out.cut_last_line = sc.cut
    out.unparsed = sc.long_lines
    if sc.long_lines:
        out.first_unparsed = (0, f"{sc.long_lines} line(s) longer than {MAX_LINE} bytes")
    for n, text in sc.meta:
        _meta_line(out, n, text)
    if out.format == "trace-cmd":
        out.task, out.instances = _without_instances(out.task)
    return out


def _meta_line(out: ParsedTrace, n: int, text: str) -> None:
    stripped = text.strip()
    if not stripped:
        return
    if stripped.startswith("#"):
        if m := _CPU_STARTED.match(stripped):
            out.cpu_started[int(m.group(1))] = n
        elif m := _HEADER_ENTRIES.match(stripped):
            out.entries = (int(m.group(1)), int(m.group(2)))
            out.header_cpus = int(m.group(3))
        return
    if m := _LOST.match(stripped):
        count = m.group(2) or m.group(3)
        out.losses.append(Loss(n, int(m.group(1)), int(count) if count else None))
        return
    if m := _TRACECMD_CPUS.match(stripped):
        out.format = "trace-cmd"
        out.header_cpus = int(m.group(1))
        return
    if stripped.startswith("version =") or (stripped.startswith("CPU ") and stripped.endswith(" is empty")):
        out.format = "trace-cmd"
        return
    out.unparsed += 1
    if out.first_unparsed is None:
        out.first_unparsed = (n, stripped[:80])
