"""The timeline in Perfetto's own protobuf trace format, with descriptor flows.

The same content as the trace-event JSON (flightrec.report.perfetto) at about
a third of its size (124 MB against 345 MB for a million-line trace), and
faster to write: ui.perfetto.dev reads it natively (chrome://tracing does
not: write JSON for that). Rendering only.

Layout (perfetto.proto's Trace: one TracePacket after another):
  track descriptors: a "CPUs" group with one track per CPU ("CPU N"), an
  "application threads" group with one track per task that wrote markers
  ("task-tid"), and a "flightrec" track for the verdict and the anomalies;
  one packet of interned data: categories, annotation names and the strings
  the rows repeat (task labels, sockets, states, probe event names);
  every event of the timeline as a slice (SLICE_BEGIN, SLICE_END) on its
  CPU's track, its fields as debug annotations (`line` is its line in the
  trace file; a probe's words by interned name, its site interned, kernel
  hex as a pointer value, which the UI shows as the same 0x... text),
  each descriptor trip a v2 flow: `flow_ids` on its events,
  `terminating_flow_ids` on its last (a slice may carry several);
  the application threads' "on CPU N" runs; instants for the verdict, each
  anomaly and each loss. Timestamps are ns from the trace's first event.

The rows are printed from templates in C (flightrec.bulk: varints and
length-delimited fields); the few odd ones (the poison, a marker without a
socket or state) and the handful of track and instant packets in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, Sequence

import numpy as np

from flightrec import bulk
from flightrec.analysis import Result, anomaly_json
from flightrec.bulk import CLOSE, FIELD, HEX, OPEN, PIECE, SPAN, VARINT, WORDS, Seg, len_field, render, varint
from flightrec.model.timeline import Timeline
from flightrec.model.trips import Columns, columns, flow_points
from flightrec.parse import format as kinds
from flightrec.parse.format import KERNEL_FIELDS, POISON
from flightrec.parse.scan import OffsetStrings, string_ids
from flightrec.report.perfetto import KERNEL_NAME, ExportStats, distinct_small, layout, thread_runs
from flightrec.runfolder import write_atomically

CPUS_TRACK, THREADS_TRACK, FLIGHTREC_TRACK = 1, 2, 3
CPU_TRACK0 = 16  # CPU c's track is CPU_TRACK0 + c
THREAD_TRACK0 = 1 << 24  # thread tid's track is THREAD_TRACK0 + tid
CATEGORIES = ("marker", "note", "kernel", "other", "thread", "anomaly", "loss", "flightrec")
NAMES = ("line", "task", "sock", "queue", "addr", "from", "to", "detail", "text", "event", "body")
# the kernel events' words also get an iid when they are the probe site or a field of the format
WORD_NAMES = ("site", *(f.name for f in KERNEL_FIELDS))
NAMES += tuple(w for w in WORD_NAMES if w not in NAMES)
BEGIN, END, INSTANT = 1, 2, 3  # TrackEvent.Type

# field tags (field number << 3 | wire type): 0 varint, 1 fixed64, 2 length-delimited
PACKET = b"\x0a"  # Trace.packet
TIMESTAMP = b"\x40"  # TracePacket.timestamp
SEQ = b"\x50\x01"  # trusted_packet_sequence_id 1: its interned data serves every packet
SEQ_NEEDS_STATE = SEQ + b"\x68\x02"  # and sequence_flags SEQ_NEEDS_INCREMENTAL_STATE
TRACK_EVENT = b"\x5a"
TYPE = b"\x48"
TRACK_UUID = b"\x58"
CATEGORY_IID = b"\x18"
NAME = b"\xba\x01"  # TrackEvent.name (23)
ANNOTATION = b"\x22"
A_NAME_IID, A_NAME = b"\x08", b"\x52"
A_INT, A_STRING, A_STRING_IID, A_POINTER = b"\x20", b"\x32", b"\x88\x01", b"\x38"
A_BOOL, A_DOUBLE, A_DICT, A_ARRAY = b"\x10", b"\x29", b"\x5a", b"\x62"
CHUNK_ROWS = 1 << 16  # rows printed per render call
FLOW, FLOW_END = b"\xf9\x02", b"\x81\x03"  # TrackEvent.flow_ids (47), terminating_flow_ids (48): fixed64


def _str_field(tag: bytes, text: str) -> bytes:
    return len_field(tag, text.encode())


def _packet(body: bytes) -> bytes:
    return len_field(PACKET, body)


def _track(uuid: int, name: str, parent: Optional[int] = None, rank: Optional[int] = None, explicit=False) -> bytes:
    """A TrackDescriptor packet: uuid (1), name (2), parent_uuid (5), child_ordering (11), sibling_order_rank (12)."""
    body = b"\x08" + varint(uuid) + _str_field(b"\x12", name)
    if parent is not None:
        body += b"\x28" + varint(parent)
    if explicit:
        body += b"\x58\x03"  # ChildTracksOrdering.EXPLICIT: by sibling_order_rank
    if rank is not None:
        body += b"\x60" + varint(rank)
    return _packet(len_field(b"\xe2\x03", body))  # TracePacket.track_descriptor (60)


def _annotation(name: str, value) -> bytes:
    """A DebugAnnotation body with an inline name (10) and any JSON value: dicts
    and lists nest (dict_entries 11, array_values 12)."""
    return _str_field(A_NAME, name) + _value(value)


def _value(value) -> bytes:
    if isinstance(value, bool):
        return A_BOOL + varint(int(value))
    if isinstance(value, int):
        return A_INT + varint(value)
    if isinstance(value, float):
        return A_DOUBLE + np.float64(value).tobytes()
    if isinstance(value, dict):
        return b"".join(len_field(A_DICT, _annotation(str(k), v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return b"".join(len_field(A_ARRAY, _value(v)) for v in value) if value else _str_field(A_STRING, "[]")
    return _str_field(A_STRING, "null" if value is None else str(value))


def _event(ts: int, track: int, kind: int, name: str, category: int, annotations: dict) -> bytes:
    """A TrackEvent packet built in Python (tracks, instants, odd rows)."""
    body = TYPE + varint(kind) + TRACK_UUID + varint(track) + CATEGORY_IID + varint(category)
    body += _str_field(NAME, name)
    body += b"".join(len_field(ANNOTATION, _annotation(k, v)) for k, v in annotations.items())
    return _packet(TIMESTAMP + varint(ts) + SEQ_NEEDS_STATE + len_field(TRACK_EVENT, body))


def _end(ts: int, track: int) -> bytes:
    """A SLICE_END packet, as the rows' template prints it (no interned data: no sequence flags)."""
    return _packet(
        TIMESTAMP + varint(ts) + SEQ + len_field(TRACK_EVENT, TYPE + varint(END) + TRACK_UUID + varint(track))
    )


@dataclass(frozen=True)
class _Strings:
    """The interned strings (debug_annotation_string_values), iid = index + 1."""

    states: int  # STATES take iids 1..len(STATES)
    socks: int  # the first socket's iid
    tasks: int
    events: int
    texts: list[bytes]


@dataclass(frozen=True)
class _Texts:
    """Strings as spans of one buffer: the trace's own bytes on the C path."""

    base: bytes
    off: np.ndarray
    length: np.ndarray  # -1: none
    plain: np.ndarray  # printable ASCII (bulk.plain): printed in C, the others in Python

    @staticmethod
    def of(base, off: np.ndarray, length: np.ndarray) -> "_Texts":
        has = length >= 0
        plain = np.zeros(len(off), bool)
        plain[has] = bulk.plain(base, off[has], length[has])
        return _Texts(base, off, length, plain)

    @staticmethod
    def joined(texts: Sequence[Optional[str]]) -> "_Texts":
        data = [t.encode() if t is not None else b"" for t in texts]
        length = np.array([len(d) for d in data], dtype=np.int64)
        off = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64) if len(data) else length
        length[[i for i, t in enumerate(texts) if t is None]] = -1
        return _Texts.of(b"".join(data), off, length)

    def text(self, i: int) -> Optional[str]:
        if self.length[i] < 0:
            return None
        return bytes(self.base[self.off[i] : self.off[i] + self.length[i]]).decode("utf-8", "replace")


@dataclass(frozen=True)
class _App:
    """Markers' and notes' columns, as codes (-1: none), from the scanner's
    arrays or, on the Python path, from the timeline's lists."""

    rows: np.ndarray
    note: np.ndarray
    addr: np.ndarray  # uint64
    sock: np.ndarray
    socks: list[str]
    queue: np.ndarray
    frm: np.ndarray
    to: np.ndarray
    detail: _Texts


def _app_columns(tl: Timeline, arr: Columns) -> _App:
    rows = np.flatnonzero(arr.is_(kinds.MARKER, kinds.NOTE))
    note = arr.is_(kinds.NOTE)[rows]
    A = tl.arrays
    if "sock" in A:
        data, d_off, d_len = A["detail"]
        return _App(
            rows,
            note,
            A["addr"][0][rows].astype(np.uint64),
            A["sock"][rows].astype(np.int64),
            list(A["socks"]),
            A["queue"][rows].astype(np.int64),
            A["frm"][rows].astype(np.int64),
            A["to"][rows].astype(np.int64),
            _Texts.of(data, d_off[rows].astype(np.int64), d_len[rows].astype(np.int64)),
        )
    socks: dict[str, int] = {}
    state = {s: i for i, s in enumerate(kinds.STATES)}
    r = rows.tolist()
    return _App(
        rows,
        note,
        np.array([tl.addr[i] or 0 for i in r], dtype=np.uint64),
        np.array([-1 if tl.sock[i] is None else socks.setdefault(tl.sock[i], len(socks)) for i in r], dtype=np.int64),
        list(socks),
        np.array([-1 if tl.queue[i] is None else tl.queue[i] for i in r], dtype=np.int64),
        np.array([state.get(tl.frm[i], -1) for i in r], dtype=np.int64),
        np.array([state.get(tl.to[i], -1) for i in r], dtype=np.int64),
        _Texts.joined([tl.detail[i] for i in r]),
    )


def _bodies(col: Sequence[str], rows: np.ndarray) -> _Texts:
    """The kernel rows' bodies: spans of the trace (C path) or joined."""
    if isinstance(col, OffsetStrings):
        return _Texts.of(col._data, col._off[rows].astype(np.int64), col._len[rows].astype(np.int64))
    return _Texts.joined([col[int(r)] for r in rows])


def _sites(body: _Texts, e_ids: np.ndarray, n_events: int) -> list[str]:
    """The probe sites to intern: each kernel event's first word in parentheses
    (``(__xsk_rcv_zc+0x9b/0x250)``) as its first row has it. A probe's site is the
    same on all its rows; a row with another is written out whole."""
    # ids are numbered in order of first appearance (string_ids): each new one raises the running maximum
    first = np.flatnonzero(np.diff(np.maximum.accumulate(e_ids), prepend=-1) > 0) if n_events else e_ids
    sites: list[str] = []
    for i in first.tolist():
        words = (body.text(i) or "").split(maxsplit=1)
        if words and words[0].startswith("(") and words[0] not in sites:
            sites.append(words[0])
    return sites


def _kinds(arr: Columns, wanted: list[str]) -> np.ndarray:
    """Each row's index into `wanted` (-1: none), in one pass over the scanner's codes where there."""
    if arr.codes is not None:
        table = np.full(len(arr.names) + 1, -1, np.int64)
        for i, k in enumerate(wanted):
            if k in arr.names:
                table[arr.names.index(k)] = i
        return table[arr.codes]
    out = np.full(len(arr.kind), -1, np.int64)
    for i, k in enumerate(wanted):
        out[arr.kind == k] = i
    return out


def _flow_table(tl: Timeline, arr: Columns) -> tuple[bytes, np.ndarray, int]:
    """Each row's flow fields (a PIECE table indexed by row) and the number of flows."""
    fid, row, phase = flow_points(tl, arr)
    n = len(tl)
    # one 10-byte record a point: the field's tag (a flow id, or the id of a flow ending here), the id
    rec = np.empty(len(fid), np.dtype([("tag", "<u2"), ("id", "<u8")], align=False))
    rec["tag"] = np.where(phase == 2, *(np.frombuffer(t, "<u2")[0] for t in (FLOW_END, FLOW)))
    rec["id"] = fid
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n) * 10, out=offsets[1:])
    return rec.tobytes(), offsets, int((phase == 0).sum())  # flow_points gives them in row order


def _interned(strings: _Strings) -> bytes:
    """The sequence's first packet: it clears the incremental state and interns
    categories (1), annotation names (3) and string values (29)."""
    body = b"".join(
        len_field(b"\x0a", b"\x08" + varint(i + 1) + _str_field(b"\x12", c)) for i, c in enumerate(CATEGORIES)
    )
    body += b"".join(len_field(b"\x1a", b"\x08" + varint(i + 1) + _str_field(b"\x12", n)) for i, n in enumerate(NAMES))
    body += b"".join(
        len_field(b"\xea\x01", b"\x08" + varint(i + 1) + len_field(b"\x12", t)) for i, t in enumerate(strings.texts)
    )
    return _packet(SEQ + b"\x68\x01" + len_field(b"\x62", body))  # SEQ_INCREMENTAL_STATE_CLEARED


def _cat(name: str) -> int:
    return CATEGORIES.index(name) + 1


def _iid(name: str) -> bytes:
    return varint(NAMES.index(name) + 1)


def write_trace(result: Result, out: BinaryIO, threads: bool = True) -> ExportStats:
    """Write `result` as one Perfetto protobuf trace to `out`.

    `threads` adds the per-application-thread tracks.
    """
    tl = result.timeline
    p = tl.parsed
    n = len(tl)
    arr = columns(tl)
    start, dur = layout(tl, arr)
    cpus = sorted(set(p.cpu))

    out.write(_track(CPUS_TRACK, "CPUs", explicit=True, rank=0))
    for c in cpus:
        out.write(_track(CPU_TRACK0 + c, f"CPU {c}", parent=CPUS_TRACK, rank=c))
    out.write(_track(FLIGHTREC_TRACK, "flightrec", rank=2))

    app = _app_columns(tl, arr)
    # each row's pid as an id, by table (pids are small; no hashing or sorting of a million rows)
    pids = distinct_small(arr.pid)
    low = int(pids[0]) if len(pids) else 0
    ids = np.zeros(int(pids[-1]) - low + 1 if len(pids) else 1, np.int64)
    ids[pids - low] = np.arange(len(pids))
    task = ids[arr.pid - low]
    first = np.empty(len(pids), np.int64)
    first[task] = np.arange(n)  # a row of each pid (ftrace prints one name for one pid)
    labels = [f"{p.task[i]}-{p.pid[i]}" for i in first.tolist()]
    kernel = np.flatnonzero(~arr.is_(kinds.MARKER, kinds.NOTE))
    e_ids, events = string_ids(p.event, kernel) if len(kernel) else (np.zeros(0, np.int64), [])
    body = _bodies(p.body, kernel)
    sites = _sites(body, e_ids, len(events))
    texts = [s.encode() for s in kinds.STATES]
    strings = _Strings(
        states=1,
        socks=len(texts) + 1,
        tasks=len(texts) + len(app.socks) + 1,
        events=len(texts) + len(app.socks) + len(labels) + 1,
        texts=texts
        + [s.encode() for s in app.socks]
        + [s.encode() for s in labels]
        + [e.encode() for e in events]
        + [s.encode() for s in sites],
    )
    site_iids = {s: len(strings.texts) - len(sites) + 1 + i for i, s in enumerate(sites)}
    word_names = {w: NAMES.index(w) + 1 for w in WORD_NAMES}
    out.write(_interned(strings))

    flows, flow_off, n_flows = _flow_table(tl, arr)
    line = np.asarray(p.line, dtype=np.int64)
    # whole columns once: each part then gathers a row's value once, not per use
    track, end = CPU_TRACK0 + arr.cpu, start + dur

    def slices(rows: np.ndarray, middle: Callable[[slice], list[Seg]]) -> None:
        """The slices of `rows`: each a SLICE_BEGIN packet (the common head, the
        segments `middle` gives for a part of the rows, the flows), then its
        SLICE_END packet (no interned data: no sequence flags). A part at a
        time: its columns are small enough for the allocator to reuse, not
        fault in anew."""
        for lo in range(0, len(rows), CHUNK_ROWS):
            part = slice(lo, lo + CHUNK_ROWS)
            r = rows[part]
            on = track[r]
            segs = [
                Seg(PACKET, OPEN),
                Seg(TIMESTAMP, VARINT, start[r]),
                Seg(SEQ_NEEDS_STATE + TRACK_EVENT, OPEN),
                Seg(TYPE + varint(BEGIN) + TRACK_UUID, VARINT, on),
                *int_annotation("line", A_INT, line[r]),
                *string_annotation("task", strings.tasks + task[r]),
                *middle(part),
                Seg(b"", PIECE, r, joined=flows, offsets=flow_off),
                Seg(b"", CLOSE),
                Seg(b"", CLOSE),
                Seg(PACKET, OPEN),
                Seg(TIMESTAMP, VARINT, end[r]),
                Seg(SEQ + TRACK_EVENT, OPEN),
                Seg(TYPE + varint(END) + TRACK_UUID, VARINT, on),
                Seg(b"", CLOSE),
                Seg(b"", CLOSE),
            ]
            render(segs, b"", b"", len(r), out.write)

    def string_annotation(name: str, iids: np.ndarray) -> list[Seg]:
        return [Seg(ANNOTATION + A_NAME_IID + _iid(name) + A_STRING_IID, FIELD, iids)]

    def int_annotation(name: str, tag: bytes, values: np.ndarray) -> list[Seg]:
        return [Seg(ANNOTATION + A_NAME_IID + _iid(name) + tag, FIELD, values)]

    def text_annotation(name: str, texts: _Texts, ix: np.ndarray) -> list[Seg]:
        return [
            Seg(ANNOTATION, OPEN),
            Seg(A_NAME_IID + _iid(name) + A_STRING, OPEN),
            Seg(b"", SPAN, texts.off[ix], base=texts.base, lengths=texts.length[ix]),
            Seg(b"", CLOSE),
            Seg(b"", CLOSE),
        ]

    def app_slices(ix: np.ndarray, middle: Callable[[np.ndarray], list[Seg]], name: str, none: bytes) -> None:
        """Markers or notes (`middle`: their segments): a detail becomes annotation `name`, none `none`."""
        has = app.detail.length[ix] >= 0
        bare, told = ix[~has], ix[has]
        slices(app.rows[bare], lambda c: [*middle(bare[c]), Seg(none, PIECE, np.zeros(len(bare[c]), np.int64), [b""])])
        slices(app.rows[told], lambda c: [*middle(told[c]), *text_annotation(name, app.detail, told[c])])

    # markers and notes: odd ones (the poison, no socket, state or queue, a detail that is not plain ASCII) in Python
    addr = app.addr.view(np.int64)
    states = [s.encode() for s in kinds.STATES]
    odd = (app.detail.length >= 0) & ~app.detail.plain
    odd |= ~app.note & ((app.addr == POISON) | (app.sock < 0) | (app.frm < 0) | (app.to < 0) | (app.queue < 0))

    def marker(m: np.ndarray) -> list[Seg]:
        frm, to, a = app.frm[m], app.to[m], addr[m]
        return [
            Seg(CATEGORY_IID + varint(_cat("marker")) + NAME, OPEN),
            Seg(b"", PIECE, frm, states),
            Seg(b"->", PIECE, to, states),
            Seg(b" ", HEX, a),
            Seg(b"", CLOSE),
            *string_annotation("sock", strings.socks + app.sock[m]),
            *int_annotation("queue", A_INT, app.queue[m]),
            *int_annotation("addr", A_POINTER, a),
            *string_annotation("from", strings.states + frm),
            *string_annotation("to", strings.states + to),
        ]

    app_slices(np.flatnonzero(~app.note & ~odd), marker, "detail", b"")

    def note(nt: np.ndarray) -> list[Seg]:
        a = addr[nt]
        return [
            Seg(CATEGORY_IID + varint(_cat("note")) + NAME, OPEN),
            Seg(b"note ", HEX, a),
            Seg(b"", CLOSE),
            *int_annotation("addr", A_POINTER, a),
        ]

    app_slices(np.flatnonzero(app.note & ~odd), note, "text", len_field(ANNOTATION, _annotation("text", "")))
    for i in np.flatnonzero(odd).tolist():
        r = int(app.rows[i])
        a = int(app.addr[i])
        if app.note[i]:
            fields = {
                "line": tl.line[r],
                "task": labels[int(task[r])],
                "addr": f"{a:#x}",
                "text": app.detail.text(i) or "",
            }
            name, cat = f"note {a:#x}", "note"
        else:
            frm = kinds.STATES[app.frm[i]] if app.frm[i] >= 0 else None
            to = kinds.STATES[app.to[i]] if app.to[i] >= 0 else None
            fields = {
                "line": tl.line[r],
                "task": labels[int(task[r])],
                "sock": app.socks[app.sock[i]] if app.sock[i] >= 0 else None,
                "queue": int(app.queue[i]) if app.queue[i] >= 0 else None,
                "addr": f"{a:#x}",
                "from": frm,
                "to": to,
            }
            if app.detail.length[i] >= 0:
                fields["detail"] = app.detail.text(i)
            name, cat = f"{frm}->{to} " + ("POISON" if a == POISON else f"{a:#x}"), "marker"
        packet = _event(int(start[r]), CPU_TRACK0 + int(arr.cpu[r]), BEGIN, name, _cat(cat), fields)
        f = flows[flow_off[r] : flow_off[r + 1]]
        if f:  # the flows go inside the track event, the packet's last field: rebuild its two lengths
            packet = _packet(_reopen(packet, f))
        out.write(packet)
        out.write(_end(int(start[r] + dur[r]), CPU_TRACK0 + int(arr.cpu[r])))

    # kernel events: the probes' by kind, others by event name, each with its body's words
    if len(kernel):
        has_addr_col = tl.field_array("addr")
        k_addr = has_addr_col[0][kernel].view(np.int64)
        has_addr = has_addr_col[1][kernel]
        names = list(KERNEL_NAME)
        kind = _kinds(arr, [*names, kinds.OTHER])[kernel]  # -1: neither
        other = kind == len(names)
        code = kind.clip(0, len(names) - 1)
        labels_k = [KERNEL_NAME[k].encode() for k in names]
        # a body that is not plain ASCII: its words split and encoded in Python, one piece per row
        odd_body = np.flatnonzero(~body.plain)
        odd_words = np.zeros(len(kernel), np.int64)
        odd_words[odd_body] = np.arange(1, len(odd_body) + 1)
        odd_pieces = [b""] + [
            bulk.proto_members(body.text(int(i)) or "", word_names, site_iids) for i in odd_body.tolist()
        ]

        def probe_hits(ix: np.ndarray, with_addr: bool, plain: bool) -> Callable[[slice], list[Seg]]:
            def build(c: slice) -> list[Seg]:
                k = ix[c]
                name = [Seg(b"", PIECE, code[k], labels_k)] + ([Seg(b" ", HEX, k_addr[k])] if with_addr else [])
                if plain:
                    words = Seg(
                        b"",
                        WORDS,
                        body.off[k],
                        base=body.base,
                        lengths=body.length[k],
                        word_names=word_names,
                        word_values=site_iids,
                    )
                else:
                    words = Seg(b"", PIECE, odd_words[k], odd_pieces)
                return [
                    Seg(CATEGORY_IID + varint(_cat("kernel")) + NAME, OPEN),
                    *name,
                    Seg(b"", CLOSE),
                    *string_annotation("event", strings.events + e_ids[k]),
                    words,
                ]

            return build

        def others(ix: np.ndarray, plain: bool) -> Callable[[slice], list[Seg]]:
            def build(c: slice) -> list[Seg]:
                k = ix[c]
                if plain:
                    text = text_annotation("body", body, k)
                else:
                    pieces = [len_field(ANNOTATION, _annotation("body", body.text(int(i)) or "")) for i in k.tolist()]
                    text = [Seg(b"", PIECE, np.arange(len(k)), pieces)]
                return [
                    Seg(CATEGORY_IID + varint(_cat("other")) + NAME, OPEN),
                    Seg(b"", PIECE, e_ids[k], event_names),
                    Seg(b"", CLOSE),
                    *text,
                ]

            return build

        event_names = [e.encode() for e in events]
        for plain in (True, False):
            for sel, with_addr in ((~other & has_addr, True), (~other & ~has_addr, False)):
                ix = np.flatnonzero(sel & (body.plain == plain))
                slices(kernel[ix], probe_hits(ix, with_addr, plain))
            ix = np.flatnonzero(other & (body.plain == plain))
            slices(kernel[ix], others(ix, plain))
    count = n

    n_threads = 0
    if threads and n:
        runs = thread_runs(tl, arr, start)
        n_threads = len(runs)
        if runs:
            out.write(_track(THREADS_TRACK, "application threads", explicit=True, rank=1))
        for rank, (tid, name, thread) in enumerate(runs):
            out.write(_track(THREAD_TRACK0 + tid, name, parent=THREADS_TRACK, rank=rank))
            for r in thread:
                fields = {"cpu": r.cpu, "first_line": r.first_line, "last_line": r.last_line, "events": r.events}
                track = THREAD_TRACK0 + tid
                out.write(_event(r.start_ns, track, BEGIN, f"on CPU {r.cpu}", _cat("thread"), fields))
                out.write(_end(r.start_ns + r.dur_ns, track))
                count += 1

    verdict = {"source": result.source, "verdict": result.verdict, "first_timestamp": f"{tl.ts[0] if n else 0.0:.6f}"}
    out.write(_event(0, FLIGHTREC_TRACK, INSTANT, f"verdict: {result.verdict}", _cat("flightrec"), verdict))
    for a in result.anomalies:
        when = _ns(a.ts - tl.ts[0]) if n else 0
        name = f"{a.verdict.upper()}: {a.kind} at line {a.line}"
        out.write(_event(when, FLIGHTREC_TRACK, INSTANT, name, _cat("anomaly"), anomaly_json(a)))
    for loss in tl.losses:
        # the loss happened somewhere after the CPU's last surviving event
        when = _ns(loss.after - tl.ts[0]) if loss.after != float("-inf") and n else 0
        what = f"{loss.count} events" if loss.count is not None else "events"
        track = CPU_TRACK0 + loss.cpu
        out.write(_event(when, track, INSTANT, f"CPU {loss.cpu} lost {what}", _cat("loss"), {"line": loss.line}))
    count += 1 + len(result.anomalies) + len(tl.losses)
    return ExportStats(events=count, flows=n_flows, anomalies=len(result.anomalies), cpus=len(cpus), threads=n_threads)


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _reopen(packet: bytes, extra: bytes) -> bytes:
    """The body of a packet that `_event` built, with `extra` appended to its track event."""
    body = _skip_len(packet, 1)  # past the packet's tag and length
    head_end = body.index(TRACK_EVENT, 0)
    # the track event is the body's last field; its length follows the tag
    event = _skip_len(body, head_end + 1)
    return body[:head_end] + len_field(TRACK_EVENT, event + extra)


def _skip_len(data: bytes, at: int) -> bytes:
    """data[at:] is a varint length then that many bytes: the bytes."""
    n = shift = 0
    while True:
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return data[at : at + n]


def write_trace_file(result: Result, path: str, threads: bool = True) -> ExportStats:
    """Write the trace to `path` ("-": standard output) whole or not at all."""
    if path == "-":
        import sys

        sys.stdout.flush()
        return write_trace(result, sys.stdout.buffer, threads)
    return write_atomically(path, lambda f: write_trace(result, f, threads))
