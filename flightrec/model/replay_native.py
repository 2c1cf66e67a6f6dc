"""The replay's walk in C (flightrec/_replay.c) through ctypes: typed columns in,
the rows out of the ordinary out.

flightrec.model.replay keeps the meaning and the Python reference of the walk,
and makes its RxRead and BadTransition objects from what this returns;
tests/unit/test_replay_native.py holds the two walks equal. When `_replay.so`
is not built, or FLIGHTREC_PURE_PYTHON is set, `available()` is False and the
replay walks in Python.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from flightrec import native

REM = 8  # _replay.c's: deque entries kept with a FILL-order mismatch

# struct fr_read and struct fr_bad, laid out as C lays them out (align=True)
READ = np.dtype(
    [
        ("row", np.int64),
        ("state_before", np.int8),
        ("mismatch", np.uint8),
        ("slot_mismatch", np.uint8),
        ("has_expected", np.uint8),
        ("matched_link", np.uint8),
        ("state_row", np.int64),
        ("expected", np.uint64),
        ("expected_row", np.int64),
        ("xs", np.int64),
        ("slot_row", np.int64),
        ("link_read", np.int64),
        ("link_slot", np.int64),
        ("prev_read", np.int64),
        ("skipped", np.int64),
        ("alignment_row", np.int64),
        ("nrem", np.int32),
        ("rem", np.uint64, (REM,)),
    ],
    align=True,
)
BAD = np.dtype(
    [("row", np.int64), ("state_row", np.int64), ("state_before", np.int8), ("claimed", np.int8)], align=True
)

_P = ctypes.c_void_p
# int align(sock, row, slot_row, link_read, link_slot, link_matched, prev_read): 1 holds, 0 not, -1 failed
ALIGN = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int32,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int32,
    ctypes.c_int64,
)


class _Codes(ctypes.Structure):
    _fields_ = [
        ("marker", ctypes.c_int8),
        ("reserve", ctypes.c_int8),
        ("fill", ctypes.c_int8),
        ("rx", ctypes.c_int8),
        ("nstates", ctypes.c_int32),
        ("valid", _P),
        ("poison", ctypes.c_uint64),
    ]


class _Rows(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int64),
        ("kind", _P),
        ("addr", _P),
        ("xs", _P),
        ("sock", _P),
        ("frm", _P),
        ("to", _P),
        ("det", _P),
        ("ts", _P),
        ("nsocks", ctypes.c_int32),
        ("unordered", _P),
        ("states_from", ctypes.c_double),
        ("nloss", ctypes.c_int64),
        ("loss_after", _P),
        ("loss_before", _P),
    ]


class _Out(ctypes.Structure):
    _fields_ = [
        ("reads", _P),
        ("reads_cap", ctypes.c_int64),
        ("nreads", ctypes.c_int64),
        ("bad", _P),
        ("bad_cap", ctypes.c_int64),
        ("nbad", ctypes.c_int64),
        ("tie_read", _P),
        ("tie_reserve", _P),
        ("sock_xs", _P),
        ("xs_values", ctypes.POINTER(ctypes.c_uint64)),
        ("xs_cap", ctypes.c_int64),
        ("nxs", ctypes.c_int64),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    lib.fr_replay.restype = ctypes.c_int
    lib.fr_replay.argtypes = [ctypes.POINTER(_Rows), ctypes.POINTER(_Codes), ALIGN, ctypes.POINTER(_Out)]
    lib.fr_replay_free.restype = None
    lib.fr_replay_free.argtypes = [ctypes.POINTER(_Out)]


def available() -> bool:
    """True when the C walk is built and not switched off."""
    return native.load("_replay", _declare) is not None


@dataclass(frozen=True)
class Columns:
    """What the walk reads, one numpy array per column, index-aligned with the timeline."""

    kind: np.ndarray  # int8 codes
    addr: np.ndarray  # uint64
    xs: np.ndarray  # uint64
    sock: np.ndarray  # int32, 0 .. nsocks - 1 on every marker row
    frm: np.ndarray  # int8 state codes, -1: none
    to: np.ndarray  # int8 state codes
    det: np.ndarray  # uint8: the row has a detection
    ts: np.ndarray  # float64
    nsocks: int
    unordered: np.ndarray  # uint8 per socket


@dataclass(frozen=True)
class Codes:
    marker: int
    reserve: int
    fill: int
    rx: int
    valid: np.ndarray  # uint8 [state, 1 + state before (0: none)]
    poison: int


@dataclass(frozen=True)
class Walked:
    reads: np.ndarray  # READ records, in row order
    bad: np.ndarray  # BAD records, in row order
    tie_read: np.ndarray  # per socket: the read that tied it to its xs, -1: none
    tie_reserve: np.ndarray  # per socket: the reserve that read matched
    sock_xs: np.ndarray  # per socket: index into xs_values, -1: none
    xs_values: list[int]


def walk(
    cols: Columns,
    codes: Codes,
    states_from: float,
    losses: list[tuple[float, float]],
    align: Callable[[int, int, int, int, int, bool, int], bool],
) -> Walked:
    """Run the C walk. `align(sock, row, slot_row, link_read, link_slot, link_matched,
    prev_read)` answers whether a read out of slot order came from the next reserved
    slot (-1: no such row); an exception it raises is raised here."""
    lib = native.load("_replay", _declare)
    if lib is None:
        raise RuntimeError("the C replay is not built")
    failed: list[BaseException] = []

    def answer(sock: int, row: int, slot_row: int, link_read: int, link_slot: int, matched: int, prev: int) -> int:
        try:
            return int(bool(align(sock, row, slot_row, link_read, link_slot, bool(matched), prev)))
        except BaseException as e:  # noqa: BLE001 - raised again below, once C has returned
            failed.append(e)
            return -1

    callback = ALIGN(answer)
    after = np.ascontiguousarray([a for a, _ in losses], dtype=np.float64)
    before = np.ascontiguousarray([b for _, b in losses], dtype=np.float64)
    valid = np.ascontiguousarray(codes.valid, dtype=np.uint8)
    c = _Codes(codes.marker, codes.reserve, codes.fill, codes.rx, valid.shape[0], valid.ctypes.data, codes.poison)
    rows = _Rows(
        len(cols.kind),
        *(a.ctypes.data for a in (cols.kind, cols.addr, cols.xs, cols.sock, cols.frm, cols.to, cols.det, cols.ts)),
        cols.nsocks,
        cols.unordered.ctypes.data,
        states_from,
        len(losses),
        after.ctypes.data,
        before.ctypes.data,
    )
    per_sock = [np.empty(max(1, cols.nsocks), dtype=np.int64) for _ in range(3)]
    # reads, bad and xs_values grow in C: one walk (and one align() per question) however many there are
    out = _Out(None, 0, 0, None, 0, 0, *(a.ctypes.data for a in per_sock))
    try:
        ret = lib.fr_replay(ctypes.byref(rows), ctypes.byref(c), callback, ctypes.byref(out))
        reads = _records(out.reads, out.nreads, READ)
        bad = _records(out.bad, out.nbad, BAD)
        xs_values = [int(out.xs_values[i]) for i in range(out.nxs)]
    finally:
        lib.fr_replay_free(ctypes.byref(out))
    if failed:
        raise failed[0]
    if ret == -1:
        raise MemoryError("the C replay ran out of memory")
    if ret != 0:
        raise RuntimeError(f"the C replay failed ({ret})")
    return Walked(reads, bad, *per_sock, xs_values)


def _records(ptr: Optional[int], n: int, dtype: np.dtype) -> np.ndarray:
    """A copy of C's `n` records at `ptr` (freed right after)."""
    if not n:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(ctypes.string_at(ptr, n * dtype.itemsize), dtype=dtype).copy()
