"""The C scanner (flightrec/_scan.c) through ctypes: whole buffer in, columns out.

It produces exactly what `parse_lines` plus the timeline's typing produce in
Python (tests/unit/test_scan.py compares them), about ten times faster. When
`_scan.so` is not built (`make`), or FLIGHTREC_PURE_PYTHON is set, callers
use the Python path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from flightrec import bulk, native

K_META, K_OTHER, K_MARKER, K_NOTE, K_RESERVE, K_FLUSH, K_TX = -1, 0, 1, 2, 3, 4, 5
STATE_NAMES = ("FREE", "FILL", "RX", "TX", "COMP")
NEED_ADDR, NEED_XS = 1, 2
MAX_SOCKS = 4096

_P = ctypes.c_void_p
_COLS = [
    ("line", np.int32), ("cpu", np.int32), ("pid", np.int32), ("ts", np.float64), ("kind", np.int8),
    ("addr", np.uint64), ("has_addr", np.int8), ("xs", np.uint64), ("len", np.int64),
    ("slot", np.int64), ("prod", np.int64), ("queue", np.int32),
    ("frm", np.int8), ("to", np.int8), ("sock", np.int32),
    ("task_off", np.int64), ("event_off", np.int64), ("body_off", np.int64), ("detail_off", np.int64),
    ("flags_off", np.int64),
    ("task_len", np.int32), ("event_len", np.int32), ("body_len", np.int32), ("detail_len", np.int32),
    ("flags_len", np.int32),
]


class _Cols(ctypes.Structure):
    _fields_ = [(name, _P) for name, _ in _COLS]


class _KernelName(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("base_len", ctypes.c_int32), ("kind", ctypes.c_int8), ("need", ctypes.c_int8)]


class _Result(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_int64), ("lines", ctypes.c_int64), ("long_lines", ctypes.c_int64),
        ("cut", ctypes.c_int32), ("nsocks", ctypes.c_int32),
        ("sock_off", (ctypes.c_int64 * 2) * MAX_SOCKS), ("sock_len", (ctypes.c_int32 * 2) * MAX_SOCKS),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    lib.fr_scan.restype = ctypes.c_int64
    lib.fr_scan.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(_Cols), ctypes.c_int64,
                            ctypes.POINTER(_KernelName), ctypes.c_int32, ctypes.POINTER(_Result)]


def _lib() -> Optional[ctypes.CDLL]:
    return native.load("_scan", _declare)


def available() -> bool:
    """True when the C scanner is built and not switched off."""
    return _lib() is not None


class OffsetStrings(Sequence):
    """Strings of a byte buffer, decoded only when asked for."""

    def __init__(self, data: bytes, off: np.ndarray, length: np.ndarray):
        # numpy, not lists: a million Python ints per column would cost more than the text
        self._data, self._off, self._len = data, off, length

    def __len__(self) -> int:
        return len(self._off)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        o = int(self._off[i])
        return self._data[o:o + int(self._len[i])].decode("utf-8", "replace")

    def __iter__(self):
        data = self._data
        for o, n in zip(self._off.tolist(), self._len.tolist()):
            yield data[o:o + n].decode("utf-8", "replace")


@dataclass
class Scan:
    """The scanner's columns, event rows only, plus the meta lines it left to Python."""

    data: bytes
    cols: dict[str, np.ndarray]
    socks: list[str]
    meta: list[tuple[int, str]]  # (line number, text) of non-event lines
    lines: int
    long_lines: int
    cut: bool


def scan(data: bytes, kernel_names: Sequence[tuple[str, int, int]]) -> Scan:
    """Run the C scanner; `kernel_names` are (event name base, kind code, needed fields)."""
    if not available():
        raise RuntimeError("the C scanner is not built")
    cap = data.count(b"\n") + 1
    arrays = {name: np.empty(cap, dtype=dt) for name, dt in _COLS}
    cols = _Cols(*[a.ctypes.data for a in arrays.values()])
    names = (_KernelName * max(1, len(kernel_names)))()
    keep = []
    for i, (base, kind, need) in enumerate(kernel_names):
        b = base.encode()
        keep.append(b)
        names[i] = _KernelName(b, len(b), kind, need)
    res = _Result()
    rows = _lib().fr_scan(data, len(data), ctypes.byref(cols), cap, names, len(kernel_names), ctypes.byref(res))
    if rows < 0:
        raise RuntimeError("scanner overflow")
    arrays = {k: v[:rows] for k, v in arrays.items()}
    meta_mask = arrays["kind"] == K_META
    meta = []
    if meta_mask.any():
        for line, off, ln in zip(arrays["line"][meta_mask].tolist(), arrays["body_off"][meta_mask].tolist(),
                                 arrays["body_len"][meta_mask].tolist()):
            meta.append((line, data[off:off + ln].decode("utf-8", "replace")))
        arrays = {k: v[~meta_mask] for k, v in arrays.items()}
    socks = [
        " ".join(data[res.sock_off[i][w]:res.sock_off[i][w] + res.sock_len[i][w]].decode("utf-8", "replace") for w in (0, 1))
        for i in range(res.nsocks)
    ]
    return Scan(data, arrays, socks, meta, res.lines, res.long_lines, bool(res.cut))


def take_strings(cols: Sequence[Sequence[str]], rows: np.ndarray) -> list[list[str]]:
    """The strings of each column at `rows` (an index array), in bulk.

    OffsetStrings decode one row per Python call; here the rows' byte slices
    are joined with newlines (no field holds one) and decoded in one go.
    Plain lists (the pure-Python parser's) are indexed.
    """
    out = []
    for col in cols:
        if not isinstance(col, OffsetStrings):
            out.append([col[i] for i in rows.tolist()])
            continue
        if len(rows) == 0:
            out.append([])
            continue
        start = col._off[rows]
        end = start + col._len[rows]
        joined = b"\n".join(map(col._data.__getitem__, map(slice, start.tolist(), end.tolist())))
        out.append(joined.decode("utf-8", "replace").split("\n"))
    return out


def string_ids(col: Sequence[str], rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Dense ids of the column's strings at `rows` (an index array), numbered
    in order of first appearance, and the string of each id. An OffsetStrings
    column is interned on its bytes, decoding each distinct string once."""
    if isinstance(col, OffsetStrings):
        ids, first = bulk.intern(col._data, col._off[rows], col._len[rows])
        return ids, take_strings([col], rows[first])[0]
    seen: dict[str, int] = {}
    ids = [seen.setdefault(s, len(seen)) for s in map(col.__getitem__, rows.tolist())]
    return np.array(ids, dtype=np.int64), list(seen)
