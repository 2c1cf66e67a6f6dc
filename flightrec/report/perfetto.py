"""The timeline as a Chrome/Perfetto trace-event JSON file, with descriptor flows.

Opens in ui.perfetto.dev and chrome://tracing alike. Rendering only: every
event, anomaly and verdict shown was decided by the parser and the checks.

Layout:
  pid 1 "CPUs", one thread per CPU (tid = CPU number, named "CPU N"): every
  event of the timeline as an `X` slice on the CPU that logged it, its fields
  in `args` (`line` is its line in the trace file);
  pid 2 "application threads", one thread per task that wrote markers (tid =
  its pid): a slice "on CPU N" for each run of its markers on one CPU, so a
  thread hopping between CPUs shows where it ran;
  flows linking each descriptor's events in order, one flow per trip;
  global instant events (`i`, scope `g`) for the anomalies, verdict in args,
  and per-CPU instants where the trace says events were lost.
Timestamps are µs from the trace's first event (integers where whole).

Flows are v1 `s`/`t`/`f` events at the start of their slice (bp "e": each binds
to the slice enclosing it). v2 `bind_id` puts one id on a slice, but a FILL
insertion both ends one trip of a descriptor and starts the next, and a flush
publishes several descriptors: those slices need several flow ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring as _q  # the C-accelerated string quoter
from typing import BinaryIO, Optional, Sequence

import numpy as np

from flightrec import bulk
from flightrec.analysis import Result, anomaly_json
from flightrec.bulk import HEX, INT, MICROS, PIECE, Seg, micros, render
from flightrec.model.timeline import Timeline
from flightrec.model.trips import Columns, columns, flow_points
from flightrec.parse import format as kinds
from flightrec.parse.format import POISON
from flightrec.parse.scan import OffsetStrings, string_ids
from flightrec.runfolder import write_atomically

CPU_PID = 1
THREAD_PID = 2
SLICE_NS = 1000  # a slice's width when the next event on its track is further away
MIN_GAP_NS = 4  # events of one track that share a timestamp are spread this far apart
FLOW_CAT, FLOW_NAME = "flow", "descriptor"

KERNEL_NAME = {
    kinds.RESERVE: "reserve",
    kinds.FLUSH: "xsk_flush",
    kinds.TX: "tx_get_data",
    kinds.XMIT: "tx_xmit",
    kinds.DESTRUCT: "skb_destruct",
    kinds.CQ_RESERVE: "cq_reserve",
    kinds.CQ_SUBMIT: "cq_submit",
}


@dataclass(frozen=True)
class ExportStats:
    """What one export wrote."""

    events: int
    flows: int
    anomalies: int
    cpus: int
    threads: int


def distinct_small(values: np.ndarray) -> np.ndarray:
    """The distinct values of a column of small integers (CPUs, pids), ascending:
    by counting, not by sorting a million rows."""
    low = min(0, int(values.min())) if len(values) else 0
    return np.flatnonzero(np.bincount(values - low)) + low


def layout(tl: Timeline, arr: Columns) -> tuple[np.ndarray, np.ndarray]:
    """Start and width of every row's slice, in ns from the trace's first event.

    Slices on one track must not overlap, or a flow would bind to the wrong
    one: events that share a timestamp on one CPU are spread MIN_GAP_NS apart,
    and a slice ends before the next one on its CPU starts.
    """
    n = len(tl)
    start = np.empty(n, np.int64)
    dur = np.empty(n, np.int64)
    if not n:
        return start, dur
    raw = np.rint((arr.ts - arr.ts[0]) * 1e9).astype(np.int64)
    cpu = arr.cpu
    for c in distinct_small(cpu):
        idx = np.flatnonzero(cpu == c)
        step = np.arange(len(idx), dtype=np.int64) * MIN_GAP_NS
        # s[i] = max(raw[i], s[i-1] + gap), as a running maximum
        s = np.maximum.accumulate(raw[idx] - step) + step
        gap = np.diff(s, append=s[-1] + SLICE_NS)
        start[idx] = s
        # 1 ns short of the next slice: no reader can take a flow point at its start for this one's end
        dur[idx] = np.minimum(gap - 1, SLICE_NS)
    return start, dur


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _members(col: Sequence[str], rows: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Dense ids of the column's strings at `rows` (string_ids) and each id's
    `name=value` words and `(symbol+off/size)` site as JSON members: in C on
    the trace's bytes where they are printable ASCII, otherwise on the text."""
    if not isinstance(col, OffsetStrings):
        ids, texts = string_ids(col, rows)
        return ids, [bulk.json_members(t).encode() for t in texts]
    ids, first = bulk.intern(col._data, col._off[rows], col._len[rows])
    at = rows[first]
    blob, lens = bulk.json_words(col._data, col._off[at], col._len[at])
    ends = np.cumsum(lens.clip(0))
    members = [blob[b:e] for b, e in zip((ends - lens.clip(0)).tolist(), ends.tolist())]
    for j in np.flatnonzero(lens < 0).tolist():
        members[j] = bulk.json_members(col[int(at[j])]).encode()
    return ids, members


def _tails(tl: Timeline, arr: Columns) -> tuple[np.ndarray, list[bytes]]:
    """Each row's tail (its own fields, name and category, closing the event)
    as an id, and the tail of each id.

    Tails repeat: a marker's for every trip of its descriptor, a probe hit's
    for every identical hit. Each distinct one is built once: markers and
    notes are keyed by their typed fields, kernel and other events by their
    event name and body (interned on the trace's bytes when the C scanner read
    it), which decide everything else about them.
    """
    p = tl.parsed
    MARKER, NOTE = kinds.MARKER, kinds.NOTE
    fast = _app_ids(tl, arr)
    if fast is not None:
        ids, tails = fast
    else:
        keys: dict[tuple, int] = {}
        get = keys.get

        def new(key: tuple) -> int:
            keys[key] = len(keys) + 1  # from 1: `get(key) or` must not take an id for absent
            return len(keys)

        # every row, in one pass; kernel rows get their own ids below (their tails here stay empty)
        ids = np.array(
            [get(key) or new(key) for key in zip(tl.kind, tl.addr, tl.sock, tl.queue, tl.frm, tl.to, tl.detail)],
            dtype=np.int64,
        )
        tails = [b""] * (len(keys) + 1)
        for key, i in keys.items():
            if key[0] in (MARKER, NOTE):
                tails[i] = _app_tail(*key)

    kernel = np.flatnonzero(~arr.is_(MARKER, NOTE))
    if len(kernel):
        e_ids, events = string_ids(p.event, kernel)
        b_ids, members = _members(p.body, kernel)
        _, first, inverse = np.unique(e_ids * len(members) + b_ids, return_index=True, return_inverse=True)
        ids[kernel] = len(tails) + inverse.reshape(-1)
        # each distinct tail's row, its columns as lists: a numpy scalar or a column's
        # row read per tail cost more than the tail (hundreds of thousands of probe hits)
        rows = kernel[first]
        addr, has_addr = tl.field_array("addr")
        quoted = [_q(e).encode() for e in events]
        for r, k, a, has_a, e, b in zip(
            rows.tolist(),
            arr.kind[rows].tolist(),
            addr[rows].tolist(),
            has_addr[rows].tolist(),
            e_ids[first].tolist(),
            b_ids[first].tolist(),
        ):
            if k == kinds.OTHER:
                tails.append(f'"body":{_q(p.body[r])}}},"name":{_q(events[e])},"cat":"other"}}'.encode())
            else:
                m = members[b]
                name = KERNEL_NAME[k] + (f" {a:#x}" if has_a else "")
                tails.append(
                    b'"event":%s%s%s},"name":"%s","cat":"kernel"}' % (quoted[e], b"," if m else b"", m, name.encode())
                )
    return ids, tails


def _app_tail(
    k: str, a: int, sock: Optional[str], queue: Optional[int], frm: Optional[str], to: Optional[str], d: Optional[str]
) -> bytes:
    """A marker's or note's tail: the reference `_app_ids`' templates print alike
    (tests/unit/test_perfetto.py holds the two paths to the same bytes)."""
    if k == kinds.MARKER:
        ah = f"{a:#x}"
        name = f"{frm}->{to} {ah}" if a != POISON else f"{frm}->{to} POISON"
        extra = f',"detail":{_q(d)}' if d else ""
        return (
            f'"sock":{_q(sock)},"queue":{queue},"addr":"{ah}","from":"{frm}","to":"{to}"{extra}}},'
            f'"name":"{name}","cat":"marker"}}'
        ).encode()
    return f'"addr":"{a:#x}","text":{_q(d or "")}}},"name":"note {a:#x}","cat":"note"}}'.encode()


def _app_ids(tl: Timeline, arr: Columns) -> Optional[tuple[np.ndarray, list[bytes]]]:
    """`_tails`' ids of the markers and notes (0 elsewhere) and their tails, from
    the scanner's arrays: one integer key per row (note?, FROM, TO, socket,
    detail, address) packed into 62 bits, so the distinct ones are found by a
    sort instead of a million tuples. None on the Python path, or past 2**21 rows."""
    A = tl.arrays
    n = len(tl)
    if "sock" not in A or n >= 1 << 21:
        return None
    ids = np.zeros(n, np.int64)
    app = np.flatnonzero(arr.is_(kinds.MARKER, kinds.NOTE))
    if not len(app):
        return ids, [b""]
    data, d_off, d_len = A["detail"]
    has = d_len[app] >= 0
    d_ids = np.zeros(len(app), np.int64)
    texts: list[str] = []  # each distinct detail, d_ids - 1
    if has.any():
        i_ids, i_first = bulk.intern(data, d_off[app][has], d_len[app][has])
        d_ids[has] = i_ids + 1
        at = app[has][i_first]
        texts = [data[o : o + n].decode("utf-8", "replace") for o, n in zip(d_off[at].tolist(), d_len[at].tolist())]
    _, a_ids = np.unique(A["addr"][0][app], return_inverse=True)
    key = (
        arr.is_(kinds.NOTE)[app].astype(np.int64)
        | ((A["frm"][app].astype(np.int64) + 1) << 1)
        | ((A["to"][app].astype(np.int64) + 1) << 4)
        | ((A["sock"][app].astype(np.int64) + 1) << 7)
        | (d_ids << 20)
        | (a_ids.reshape(-1).astype(np.int64) << 41)
    )
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    ids[app] = 1 + inverse.reshape(-1)

    # the distinct tails printed from templates, in C; odd rows (the poison, no socket or state) in Python
    rows = app[first]
    d_sel = d_ids[first]
    addr_u = A["addr"][0][rows]
    addr = addr_u.view(np.int64)
    sock, frm, to = A["sock"][rows].astype(np.int64), A["frm"][rows].astype(np.int64), A["to"][rows].astype(np.int64)
    note = arr.is_(kinds.NOTE)[rows]
    odd = ~note & ((addr_u == POISON) | (sock < 0) | (frm < 0) | (to < 0))
    out = np.empty(len(rows), object)
    states = [s.encode() for s in kinds.STATES]
    m = np.flatnonzero(~note & ~odd)
    out[m] = _pieces(
        [
            Seg(b'"sock":', PIECE, sock[m], [_q(s).encode() for s in A["socks"]]),
            Seg(b',"queue":', INT, A["queue"][rows[m]].astype(np.int64)),
            Seg(b',"addr":"', HEX, addr[m]),
            Seg(b'","from":"', PIECE, frm[m], states),
            Seg(b'","to":"', PIECE, to[m], states),
            Seg(b'"', PIECE, d_sel[m], [b""] + [f',"detail":{_q(t)}'.encode() if t else b"" for t in texts]),
            Seg(b'},"name":"', PIECE, frm[m], states),
            Seg(b"->", PIECE, to[m], states),
            Seg(b" ", HEX, addr[m]),
        ],
        b'","cat":"marker"}',
    )
    nt = np.flatnonzero(note)
    out[nt] = _pieces(
        [
            Seg(b'"addr":"', HEX, addr[nt]),
            Seg(b'","text":', PIECE, d_sel[nt], [b'""'] + [_q(t).encode() for t in texts]),
            Seg(b'},"name":"note ', HEX, addr[nt]),
        ],
        b'","cat":"note"}',
    )
    for i in np.flatnonzero(odd).tolist():
        d = int(d_sel[i])
        out[i] = _app_tail(
            kinds.MARKER,
            int(addr_u[i]),
            A["socks"][sock[i]],
            int(A["queue"][rows[i]]),
            kinds.STATES[frm[i]],
            kinds.STATES[to[i]],
            texts[d - 1] if d else None,
        )
    return ids, [b""] + out.tolist()


def _pieces(segs: list[Seg], suffix: bytes) -> list[bytes]:
    """Each row printed from a template (flightrec.bulk) as its own bytes."""
    rows = len(segs[0].values)
    if not rows:
        return []
    pieces: list[bytes] = []
    # rows apart at a NUL, which no tail holds: JSON escapes it in a string
    bulk.render(segs, suffix, b"\0", rows, lambda chunk: pieces.extend(bytes(chunk).split(b"\0")))
    if len(pieces) != rows:
        raise ValueError("a printed row holds a NUL")
    return pieces


class _Writer:
    """Comma-separated trace events, written a chunk at a time."""

    def __init__(self, out: BinaryIO):
        self.out, self.first, self.count = out, True, 0

    def _write(self, chunk) -> None:
        if not self.first:
            self.out.write(b",\n")
        self.out.write(chunk)
        self.first = False

    def emit(self, events: list[str]) -> None:
        if events:
            self._write(",\n".join(events).encode())
            self.count += len(events)

    def render(self, segs: list[Seg], suffix: bytes, rows: int) -> None:
        """`rows` events printed from a template (flightrec.bulk)."""
        render(segs, suffix, b",\n", rows, self._write)
        self.count += rows


def _cpu_metadata(cpus: list[int]) -> list[str]:
    meta = [
        f'{{"ph":"M","pid":{CPU_PID},"tid":0,"name":"process_name","args":{{"name":"CPUs"}}}}',
        f'{{"ph":"M","pid":{CPU_PID},"tid":0,"name":"process_sort_index","args":{{"sort_index":0}}}}',
    ]
    for c in cpus:
        meta.append(f'{{"ph":"M","pid":{CPU_PID},"tid":{c},"name":"thread_name","args":{{"name":"CPU {c}"}}}}')
        meta.append(f'{{"ph":"M","pid":{CPU_PID},"tid":{c},"name":"thread_sort_index","args":{{"sort_index":{c}}}}}')
    return meta


@dataclass(frozen=True)
class ThreadRun:
    """A run of one application thread's markers on one CPU."""

    cpu: int
    start_ns: int  # the run's first slice's start (the CPU tracks' layout)
    dur_ns: int
    first_line: int
    last_line: int
    events: int


def thread_runs(tl: Timeline, arr: Columns, start: np.ndarray) -> list[tuple[int, str, list[ThreadRun]]]:
    """Each application thread (a task that wrote markers) as (tid, "task-tid",
    its runs on one CPU): where the application ran, and when it moved."""
    p = tl.parsed
    app = np.flatnonzero(arr.is_(kinds.MARKER, kinds.NOTE))
    if not len(app):
        return []
    pid, cpu, ts = arr.pid[app], arr.cpu[app], arr.ts[app]
    t0 = tl.ts[0]
    threads = []
    for tid in distinct_small(pid).tolist():
        sel = np.flatnonzero(pid == tid)
        c = cpu[sel]
        begins = np.concatenate(([0], np.flatnonzero(np.diff(c)) + 1))
        ends = np.concatenate((begins[1:] - 1, [len(sel) - 1]))
        runs = []
        for b, e in zip(begins.tolist(), ends.tolist()):
            rb, re_ = int(app[sel[b]]), int(app[sel[e]])
            dur = max(SLICE_NS, round((ts[sel[e]] - ts[sel[b]]) * 1e9))
            nxt = round((ts[sel[e + 1]] - t0) * 1e9) if e + 1 < len(sel) else None
            begin_ns = round((ts[sel[b]] - t0) * 1e9)
            if nxt is not None:
                dur = min(dur, max(1, nxt - begin_ns - 1))
            runs.append(ThreadRun(int(c[b]), int(start[rb]), dur, tl.line[rb], tl.line[re_], e - b + 1))
        threads.append((tid, f"{p.task[int(app[sel[0]])]}-{tid}", runs))
    return threads


def _thread_tracks(tl: Timeline, arr: Columns, start: np.ndarray) -> tuple[list[str], int]:
    """One track per application thread, holding a slice "on CPU N" for each of
    its runs (thread_runs), beside the CPU tracks."""
    threads = thread_runs(tl, arr, start)
    if not threads:
        return [], 0
    out = [
        f'{{"ph":"M","pid":{THREAD_PID},"tid":0,"name":"process_name","args":{{"name":"application threads"}}}}',
        f'{{"ph":"M","pid":{THREAD_PID},"tid":0,"name":"process_sort_index","args":{{"sort_index":1}}}}',
    ]
    for tid, name, runs in threads:
        out.append(f'{{"ph":"M","pid":{THREAD_PID},"tid":{tid},"name":"thread_name","args":{{"name":{_q(name)}}}}}')
        for r in runs:
            out.append(
                f'{{"ph":"X","pid":{THREAD_PID},"tid":{tid},"ts":{micros(r.start_ns)},'
                f'"dur":{micros(r.dur_ns)},"name":"on CPU {r.cpu}","cat":"thread","args":{{"cpu":{r.cpu},'
                f'"first_line":{r.first_line},"last_line":{r.last_line},"events":{r.events}}}}}'
            )
    return out, len(threads)


def write_trace(result: Result, out: BinaryIO, threads: bool = True) -> ExportStats:
    """Write `result` as one trace-event JSON object (UTF-8) to `out`.

    `threads` adds the per-application-thread tracks.
    """
    tl = result.timeline
    p = tl.parsed
    arr = columns(tl)
    start, dur = layout(tl, arr)
    t0 = tl.ts[0] if len(tl) else 0.0

    out.write(b'{"traceEvents":[\n')
    w = _Writer(out)
    cpus = sorted(set(p.cpu))
    w.emit(_cpu_metadata(cpus))
    n_threads = 0
    if threads and len(tl):
        meta, n_threads = _thread_tracks(tl, arr, start)
        w.emit(meta)

    # Slices, one per row: a head (track, time, line, task) printed from the
    # columns, then the row's tail. ftrace resolves a pid's task name when it
    # prints the trace, so one pid has one name.
    pids, first, label = np.unique(arr.pid, return_index=True, return_inverse=True)
    labels = [_q(f"{p.task[i]}-{pid}").encode() for pid, i in zip(pids.tolist(), first.tolist())]
    tail, tails = _tails(tl, arr)
    w.render(
        [
            Seg(b'{"ph":"X","pid":%d,"tid":' % CPU_PID, INT, arr.cpu),
            Seg(b',"ts":', MICROS, start),
            Seg(b',"dur":', MICROS, dur),
            Seg(b',"args":{"line":', INT, np.asarray(p.line, dtype=np.int64)),
            Seg(b',"task":', PIECE, label.reshape(-1), labels),
            Seg(b",", PIECE, tail, tails),
        ],
        b"",
        len(tl),
    )

    # Flows: each point at its slice's start, as Chrome itself writes them. An
    # importer binds it to the slice enclosing that instant on its track (bp
    # "e"); slices never overlap, and the file gives every slice before any
    # flow event, for importers that order equal timestamps by file position.
    fid, row, phase = flow_points(tl, arr)
    heads = [b'{"ph":"%s","pid":%d,"tid":' % (ph, CPU_PID) for ph in (b"s", b"t", b"f")]
    w.render(
        [
            Seg(b"", PIECE, phase, heads),
            Seg(b"", INT, arr.cpu[row]),
            Seg(b',"ts":', MICROS, start[row]),
            Seg(f',"cat":"{FLOW_CAT}","name":"{FLOW_NAME}","bp":"e","id":'.encode(), INT, fid),
        ],
        b"}",
        len(fid),
    )
    n_flows = int((phase == 0).sum())

    chunk = []
    for a in result.anomalies:
        args = json.dumps(anomaly_json(a), separators=(",", ":"))
        chunk.append(
            f'{{"ph":"i","s":"g","pid":{CPU_PID},"tid":0,"ts":{micros(_ns(a.ts - t0))},'
            f'"name":{_q(f"{a.verdict.upper()}: {a.kind} at line {a.line}")},"cat":"anomaly","args":{args}}}'
        )
    for loss in tl.losses:
        # the loss happened somewhere after the CPU's last surviving event
        when = loss.after if loss.after != float("-inf") else t0
        what = f"{loss.count} events" if loss.count is not None else "events"
        chunk.append(
            f'{{"ph":"i","s":"t","pid":{CPU_PID},"tid":{loss.cpu},"ts":{micros(_ns(when - t0))},'
            f'"name":{_q(f"CPU {loss.cpu} lost {what}")},"cat":"loss","args":{{"line":{loss.line}}}}}'
        )
    w.emit(chunk)

    other = {
        "source": result.source,
        "verdict": result.verdict,
        "first_timestamp": f"{t0:.6f}",
        "note": "ts are µs since first_timestamp; args.line is the line in the trace file",
    }
    out.write(f'\n],"otherData":{json.dumps(other, ensure_ascii=False)}}}\n'.encode())
    return ExportStats(
        events=w.count, flows=n_flows, anomalies=len(result.anomalies), cpus=len(cpus), threads=n_threads
    )


def write_trace_file(result: Result, path: str, threads: bool = True) -> ExportStats:
    """Write the trace to `path` ("-": standard output) whole or not at all."""
    if path == "-":
        import sys

        sys.stdout.flush()
        return write_trace(result, sys.stdout.buffer, threads)
    return write_atomically(path, lambda f: write_trace(result, f, threads))
