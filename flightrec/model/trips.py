"""A descriptor's trips: from its insertion into FILL to the next one, with the flushes that published it.

The model's view of each descriptor's way through the rings: the Perfetto
export draws the trips as flows, the HTML report lists them. flow_points runs
in C (flightrec/_trips.c, one pass) when it is built; the numpy walk here is
its reference, held equal by tests/unit/test_trips_native.py.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

import numpy as np

from flightrec import native
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds
from flightrec.parse.format import POISON


@dataclass(frozen=True)
class Columns:
    """The timeline columns the trips (and the Perfetto export) read whole, converted once."""

    kind: np.ndarray
    cpu: np.ndarray
    pid: np.ndarray
    ts: np.ndarray
    codes: Optional[np.ndarray] = None  # the scanner's kind codes into `names`, when there
    names: tuple[str, ...] = ()

    def is_(self, *wanted: str) -> np.ndarray:
        """Rows whose kind is one of `wanted` (on the codes: comparing a million
        strings one by one costs ~25 ms a kind)."""
        if self.codes is not None:
            return np.isin(self.codes, [self.names.index(k) for k in wanted if k in self.names])
        return np.isin(self.kind, list(wanted))


def columns(tl: Timeline) -> Columns:
    p = tl.parsed
    return Columns(
        tl.kind_array(),
        np.asarray(p.cpu, dtype=np.int64),
        np.asarray(p.pid, dtype=np.int64),
        np.asarray(p.ts, dtype=np.float64),
        tl.arrays.get("kind"),
        tl.arrays.get("kinds", ()),
    )


def flow_points(tl: Timeline, arr: Optional[Columns] = None):
    """Each descriptor's trips, as flow points: (flow id, row, phase) arrays
    in row (time) order; phase 0 starts a flow, 1 steps it, 2 ends it.

    A trip runs from the descriptor's insertion into FILL to its next one; the
    next insertion closes the trip (so COMP -> FILL is on it) and opens the
    following one. A flush joins the trip of every descriptor whose reserve of
    that `xs` it is the first flush after (unless the descriptor went back
    into FILL in between). Rows before the descriptor's first insertion in the
    trace form its first trip. The poison is no descriptor. A million-line
    trace has a million points.
    """
    n = len(tl)
    empty = np.zeros(0, np.int64)
    if not n:
        return empty, empty, empty
    arr = arr or columns(tl)
    lib = _lib()
    if lib is None:
        return _flow_points_np(tl, arr)
    addr, present = tl.field_array("addr")
    desc = present & (addr != np.uint64(POISON))
    if not desc.any():
        return empty, empty, empty
    reserve = arr.is_(kinds.RESERVE)
    xs = np.ascontiguousarray(tl.field_array("xs")[0], dtype=np.uint64)
    cols = [np.ascontiguousarray(a, dtype=np.uint8) for a in (desc, _inserts(tl), reserve, arr.is_(kinds.FLUSH))]
    addr = np.ascontiguousarray(addr, dtype=np.uint64)
    # each descriptor event one point (an insertion two), each reserve at most one flush
    cap = 2 * int(desc.sum()) + int((desc & reserve).sum()) + 1
    fid, row, phase = (np.empty(cap, np.int64) for _ in range(3))
    got = lib.fr_flow_points(
        n,
        addr.ctypes.data,
        *(c.ctypes.data for c in cols),
        xs.ctypes.data,
        fid.ctypes.data,
        row.ctypes.data,
        phase.ctypes.data,
    )
    if got < 0:
        raise MemoryError("flow points")
    return fid[:got], row[:got], phase[:got]


def available() -> bool:
    """True when the C walk is built and not switched off."""
    return _lib() is not None


def _lib() -> Optional[ctypes.CDLL]:
    def declare(lib: ctypes.CDLL) -> None:
        p = ctypes.c_void_p
        lib.fr_flow_points.restype = ctypes.c_int64
        lib.fr_flow_points.argtypes = [ctypes.c_int64, p, p, p, p, p, p, p, p, p]

    return native.load("_trips", declare)


def _inserts(tl: Timeline) -> np.ndarray:
    """Rows that put a descriptor into FILL."""
    if "to" in tl.arrays:
        return tl.arrays["to"] == kinds.STATES.index("FILL")
    return np.asarray(tl.to, dtype=object) == "FILL"


def _flow_points_np(tl: Timeline, arr: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """flow_points' reference: the same walk vectorized over the whole timeline."""
    n = len(tl)
    empty = np.zeros(0, np.int64)
    addr, present = tl.field_array("addr")
    d_rows = np.flatnonzero(present & (addr != np.uint64(POISON)))
    if not len(d_rows):
        return empty, empty, empty
    d_addr = addr[d_rows]
    d_ins = _inserts(tl)[d_rows]

    # group by descriptor, rows in time order (a stable sort keeps them so),
    # then dense descriptor ids and a single sortable key per (descriptor, row)
    order = np.argsort(d_addr, kind="stable")
    d_addr, d_rows, d_ins = d_addr[order], d_rows[order], d_ins[order]
    first = np.ones(len(d_rows), bool)
    first[1:] = d_addr[1:] != d_addr[:-1]
    aid = np.cumsum(first) - 1
    key = aid * (n + 1) + d_rows
    trip = np.cumsum(first | d_ins) - 1  # an insertion opens a trip

    # flushes: the first flush of the reserve's xs after it
    links_trip, links_row = [], []
    reserve = arr.is_(kinds.RESERVE)[d_rows]
    flush_rows = np.flatnonzero(arr.is_(kinds.FLUSH))
    if reserve.any() and len(flush_rows):
        xs_obj = tl.field_array("xs")[0]
        f_xs = xs_obj[flush_rows]
        r_idx = np.flatnonzero(reserve)
        r_xs = xs_obj[d_rows[r_idx]]
        for x in set(f_xs.tolist()):
            fr = flush_rows[f_xs == x]
            mine = r_idx[r_xs == x]
            pos = np.searchsorted(fr, d_rows[mine], side="right")
            ok = pos < len(fr)
            mine, f_row = mine[ok], fr[pos[ok]]
            # the trip the descriptor is on when the flush comes
            at = np.searchsorted(key, aid[mine] * (n + 1) + f_row, side="right") - 1
            same = trip[at] == trip[mine]
            links_trip.append(trip[mine][same])
            links_row.append(f_row[same])

    # points: every descriptor event on its trip, an insertion also closing the trip before it
    closing = d_ins & ~first
    p_trip = np.concatenate([trip, trip[closing] - 1, *links_trip])
    p_row = np.concatenate([d_rows, d_rows[closing], *links_row])
    # stable: a merge of the few sorted runs concatenated above, ~30x faster than a quicksort here
    pts = np.sort(p_trip.astype(np.int64) * (n + 1) + p_row, kind="stable")
    if len(pts) > 1:
        pts = pts[np.concatenate(([True], pts[1:] != pts[:-1]))]  # a flush met twice is one point
    p_trip, p_row = pts // (n + 1), pts % (n + 1)
    head = np.ones(len(pts), bool)
    head[1:] = p_trip[1:] != p_trip[:-1]
    tail = np.ones(len(pts), bool)
    tail[:-1] = head[1:]
    keep = ~(head & tail)  # a trip of one event draws no arrow
    p_trip, p_row, head, tail = p_trip[keep], p_row[keep], head[keep], tail[keep]
    # flow ids: the trip numbers, unique by construction (gaps are the one-event trips)
    phase = np.where(head, 0, np.where(tail, 2, 1))
    # in row order: the writer then reads its per-row columns front to back
    order = np.argsort(p_row, kind="stable")
    return p_trip[order] + 1, p_row[order], phase[order]


def descriptor_trips(tl: Timeline, addrs: Optional[set[int]] = None) -> list[list[int]]:
    """Each descriptor's trips (of the descriptors in `addrs` only, when
    given) as lists of timeline rows in time order, in the order the trips
    start (see flow_points)."""
    fid, row, phase = flow_points(tl)
    if addrs is not None and len(fid):
        # a trip starts at an event of its descriptor (phase 0), never at a flush
        heads = np.flatnonzero(phase == 0)
        addr = tl.addr
        wanted = [f for f, r in zip(fid[heads].tolist(), row[heads].tolist()) if addr[r] in addrs]
        keep = np.isin(fid, wanted)
        fid, row = fid[keep], row[keep]
    if not len(fid):
        return []
    order = np.argsort(fid, kind="stable")
    fid, row = fid[order], row[order]
    cuts = np.flatnonzero(np.diff(fid)) + 1
    return sorted(part.tolist() for part in np.split(row, cuts))
