"""Event rows → typed columns: what each event means by flightrec.parse.format.

`parse_trace` is the parse layer's one entry: the C scanner when it is built,
else the Python reference (`parse_bytes` and `type_rows`); both give a
ParsedTrace (line shapes) and a Typed (meanings), held equal by
tests/unit/test_scan.py. Nothing after this module reads event text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from flightrec import native
from flightrec.parse import scan
from flightrec.parse.fields import kernel_fields, parse_detection, parse_markers
from flightrec.parse.format import BPF_EVENT, BPF_PREFIX, CONTRACT, MARKER, MARKER_EVENTS, NOTE, OTHER, STATES, Format
from flightrec.parse.ftrace import ParsedTrace, parse_bytes, parsed_from_scan

_FIRST_WORD = re.compile(r"[^ \t\v\f\r]*")

# the columns every Typed has besides the kernel fields' (format.KernelField.column)
BASE_COLUMNS = ("kind", "sock", "queue", "frm", "to", "detail", "detection")


@dataclass(frozen=True)
class Typed:
    """What each event means, one column per name (index-aligned with the
    ParsedTrace rows): `kind`, the marker's `sock queue frm to detail`, the
    detection line's `detection` (a format.Detection, None elsewhere), and
    one column per kernel field (`addr`, `xs`, `length`, ...), None where absent.

    A column is a sequence read by row: a list, except on the C path, which
    makes each on first use (`columns` holds a function until then), as most
    analyses never look at most of them, and keeps the kernel fields numpy
    (scan.FieldColumn).
    """

    rows: int
    columns: dict[str, Union[Sequence, Callable[[], list]]]
    # the C path's numpy form of the columns, for exports that read them whole:
    # kind, sock, frm, to -> codes into kinds, socks, STATES (-1: none); queue
    # (-1: none); detail -> (data, offsets, lengths, -1: none); a kernel field ->
    # (values, present)
    arrays: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, name: str) -> Sequence:
        cols = self.__dict__.get("columns")
        if cols is None or name not in cols:
            raise AttributeError(name)
        col = cols[name]
        if callable(col):
            col = cols[name] = col()
        return col

    def column_names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def kind_array(self) -> np.ndarray:
        """The kind column as an object array."""
        codes = self.arrays.get("kind")
        if codes is not None:
            return np.array(self.arrays["kinds"], dtype=object)[codes]
        return np.asarray(self.kind, dtype=object)

    def kind_counts(self) -> dict[str, int]:
        """Rows per kind (kinds with none left out), on the scanner's codes where there."""
        codes = self.arrays.get("kind")
        if codes is not None:
            counts = np.bincount(codes, minlength=len(self.arrays["kinds"])).tolist()
            return {k: n for k, n in zip(self.arrays["kinds"], counts) if n}
        return dict(Counter(self.kind))

    def rows_of(self, *wanted: str) -> list[int]:
        """The rows whose kind is one of `wanted`, in order (on the scanner's codes where there)."""
        codes = self.arrays.get("kind")
        if codes is not None:
            names = self.arrays["kinds"]
            return np.flatnonzero(np.isin(codes, [names.index(k) for k in wanted if k in names])).tolist()
        return [i for i, k in enumerate(self.kind) if k in wanted]

    def field_array(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A kernel field's column as (uint64 values, 0 where absent; present)."""
        got = self.arrays.get(name)
        if got is not None:
            return got
        col = getattr(self, name)
        present = np.fromiter((v is not None for v in col), bool, len(col))
        return np.fromiter((v or 0 for v in col), np.uint64, len(col)), present

    def permuted(self, order: list[int]) -> dict[str, list]:
        """The columns in another row order."""
        return {name: [col[i] for i in order] for name, col in ((n, getattr(self, n)) for n in self.columns)}


def parse_trace(data: native.Buffer, fmt: Format = CONTRACT, pure: bool = False) -> tuple[ParsedTrace, Typed]:
    """Parse a whole trace (bytes, or a file mapped read-only): the C scanner
    unless it is not built or `pure`."""
    if scan.available() and not pure:
        sc = scan.scan(data, fmt)
        return parsed_from_scan(sc), typed_from_scan(sc, fmt)
    parsed = parse_bytes(bytes(data))
    return parsed, type_rows(parsed, fmt)


def type_rows(parsed: ParsedTrace, fmt: Format = CONTRACT) -> Typed:
    """What each event means, in Python (the C scanner's twin: tests/unit/test_scan.py)."""
    n = len(parsed.line)
    kind: list[str] = [OTHER] * n
    sock: list[Optional[str]] = [None] * n
    queue: list[Optional[int]] = [None] * n
    frm: list[Optional[str]] = [None] * n
    to: list[Optional[str]] = [None] * n
    detail: list[Optional[str]] = [None] * n
    fields = [[None] * n for _ in fmt.fields]
    addr = fields[0]
    names = {f.name: j for j, f in enumerate(fmt.fields)}

    batches: dict[int, list[tuple]] = {}  # row -> its batched line's descriptors
    kernel_cache: dict[str, Any] = {}
    events, bodies = parsed.event, parsed.body
    for i in range(n):
        ev = events[i]
        body = bodies[i]
        if ev in MARKER_EVENTS:
            if ev == "print":
                # trace-cmd shows the ftrace print event as "ip: text".
                _, sep, rest = body.partition(": ")
                if not sep:
                    continue
                body = rest
            ms = parse_markers(body)
            if ms is None:
                continue
            if len(ms) > 1:
                batches[i] = ms
            m = ms[0]
            addr[i] = m[2]
            detail[i] = m[5]
            if m[0] is None:
                kind[i] = NOTE
            else:
                kind[i] = MARKER
                sock[i], queue[i], frm[i], to[i] = m[0], m[1], m[3], m[4]
            continue
        if ev == BPF_EVENT:
            # the BPF backend's kernel events: "flightrec NAME fields"
            if not body.startswith(BPF_PREFIX):
                continue
            body = body[len(BPF_PREFIX) :]
            ev = _FIRST_WORD.match(body).group()
            body = body[len(ev) :]
        k = kernel_cache.get(ev, "")
        if k == "":
            k = kernel_cache[ev] = _kind_and_need(fmt, ev, names)
        if k is None:
            continue
        got = kernel_fields(body, names)
        if got is None or got[1] & k[1] != k[1]:
            continue
        kind[i] = k[0]
        for j, v in enumerate(got[0]):
            if v is not None:
                fields[j][i] = v

    columns: dict[str, Any] = {"kind": kind, "sock": sock, "queue": queue, "frm": frm, "to": to, "detail": detail}
    columns.update((f.column, col) for f, col in zip(fmt.fields, fields))
    if batches:
        n = _expand(parsed, columns, batches, fmt)
    columns = {**columns, "detection": _detections(columns["kind"], columns["detail"])}
    return Typed(n, {name: columns[name] for name in BASE_COLUMNS + tuple(f.column for f in fmt.fields)})


def _expand(parsed: ParsedTrace, columns: dict[str, list], batches: dict[int, list[tuple]], fmt: Format) -> int:
    """One row per descriptor of every batched line, after the line's first:
    the same line, CPU and timestamp, in the line's order. Expands `parsed` in
    place (as the C scanner's rows already are); returns the row count."""
    src: list[int] = []
    items: list[Optional[tuple]] = []
    for i in range(len(parsed.line)):
        ms = batches.get(i)
        if ms is None:
            src.append(i)
            items.append(None)
        else:
            src.extend([i] * len(ms))
            items.extend(ms)
    for name in ("line", "task", "pid", "cpu", "flags", "ts", "event", "body"):
        col = getattr(parsed, name)
        setattr(parsed, name, [col[i] for i in src])
    parsed.arrays.clear()
    for name, col in list(columns.items()):
        columns[name] = [col[i] for i in src]
    kind, addr = columns["kind"], columns[fmt.fields[0].column]
    for r, m in enumerate(items):
        if m is not None:
            kind[r] = NOTE if m[0] is None else MARKER
            addr[r] = m[2]
            columns["sock"][r], columns["queue"][r], columns["frm"][r], columns["to"][r] = m[0], m[1], m[3], m[4]
            columns["detail"][r] = m[5]
    return len(src)


def _kind_and_need(fmt: Format, event: str, names: dict[str, int]) -> Optional[tuple[str, int]]:
    k = fmt.kernel_kind(event)
    return None if k is None else (k[0], sum(1 << names[f] for f in k[1]))


def _detections(kind: list[str], detail: list[Optional[str]]) -> list:
    """A marker's detail is a detection line's report, read once here."""
    out: list = [None] * len(kind)
    for i, d in enumerate(detail):
        if d is not None and kind[i] == MARKER:
            out[i] = parse_detection(d)
    return out


def typed_from_scan(sc: scan.Scan, fmt: Format = CONTRACT) -> Typed:
    """The C scanner's typed columns, each a Python list (None where absent) on first use."""
    c = sc.cols
    n = len(c["kind"])
    marker_code = fmt.kinds.index(MARKER)

    def kinds() -> list:
        return np.array(fmt.kinds, dtype=object)[c["kind"]].tolist()

    def states(name: str) -> Callable[[], list]:
        # code -1 (none) takes the last entry
        return lambda: np.array(STATES + (None,), dtype=object)[c[name]].tolist()

    def socks() -> list:
        return np.array(sc.socks + [None], dtype=object)[c["sock"]].tolist()

    def strings(present: np.ndarray, read: Callable[[str], Any] = str) -> list:
        out: list = [None] * n
        data = sc.data
        idx = np.flatnonzero(present)
        for i, off, ln in zip(idx.tolist(), c["detail_off"][idx].tolist(), c["detail_len"][idx].tolist()):
            out[i] = read(data[off : off + ln].decode("utf-8", "replace"))
        return out

    def details() -> list:
        return strings(c["detail_len"] >= 0)

    def detections() -> list:
        # a marker's detail is a detection line's report, read once here
        return strings((c["detail_len"] >= 0) & (c["kind"] == marker_code), parse_detection)

    columns: dict[str, Any] = {
        "kind": kinds,
        "sock": socks,
        "queue": lambda: scan.optional_list(c["queue"], c["queue"] >= 0),
        "frm": states("frm"),
        "to": states("to"),
        "detail": details,
        "detection": detections,
    }
    arrays: dict[str, Any] = {
        "kind": c["kind"],
        "kinds": fmt.kinds,
        "sock": c["sock"],
        "socks": sc.socks,
        "queue": c["queue"],
        "frm": c["frm"],
        "to": c["to"],
        "detail": (sc.data, c["detail_off"], c["detail_len"]),
    }
    for f in fmt.fields:
        values, present = sc.fields[f.column]
        columns[f.column] = scan.FieldColumn(values, present)
        arrays[f.column] = (values, present)
    return Typed(n, columns, arrays)
