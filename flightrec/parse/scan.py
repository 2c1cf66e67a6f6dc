"""The C scanner (flightrec/_scan.c) through ctypes: whole buffer in, columns out.

It produces exactly what `parse_lines` and `type_rows` produce in Python
(tests/unit/test_scan.py compares them), about ten times faster. When
`_scan.so` is not built (`make`), or FLIGHTREC_PURE_PYTHON is set, callers
use the Python path (flightrec.parse.events.parse_trace chooses).
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from flightrec import bulk, native
from flightrec.parse.format import CONTRACT, Format

MAX_SOCKS = 4096
NAMES_BYTES = 1 << 20  # _scan.c's: the sockets' names, copied out of the text
MAX_FIELDS = 16  # _scan.c's
MIN_LINE = 24  # bytes: an ftrace event line is longer
RELEASE_BYTES = 8 << 20  # a mapped trace's scanned pages are given back this often

_P = ctypes.c_void_p
_COLS = [
    ("line", np.int32),
    ("cpu", np.int32),
    ("pid", np.int32),
    ("ts", np.float64),
    ("kind", np.int8),
    ("fmask", np.uint32),
    ("queue", np.int32),
    ("frm", np.int8),
    ("to", np.int8),
    ("sock", np.int32),
    ("task_off", np.int64),
    ("event_off", np.int64),
    ("body_off", np.int64),
    ("detail_off", np.int64),
    ("flags_off", np.int64),
    ("task_len", np.int32),
    ("event_len", np.int32),
    ("body_len", np.int32),
    ("detail_len", np.int32),
    ("flags_len", np.int32),
]
_FIELDS_AT = 6  # fval[] follows fmask in struct fr_cols


class _Cols(ctypes.Structure):
    _fields_ = (
        [(name, _P) for name, _ in _COLS[:_FIELDS_AT]]
        + [("fval", _P * MAX_FIELDS)]
        + [(name, _P) for name, _ in _COLS[_FIELDS_AT:]]
    )


class _KernelName(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_char_p),
        ("base_len", ctypes.c_int32),
        ("kind", ctypes.c_int8),
        ("need", ctypes.c_uint32),
    ]


class _Field(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("len", ctypes.c_int32)]


class _Result(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_int64),
        ("meta", ctypes.c_int64),
        ("lines", ctypes.c_int64),
        ("long_lines", ctypes.c_int64),
        ("cut", ctypes.c_int32),
        ("nsocks", ctypes.c_int32),
        ("names_used", ctypes.c_int32),
        ("sock_name", ctypes.c_int32 * MAX_SOCKS),
        ("sock_len", (ctypes.c_int32 * 2) * MAX_SOCKS),
        ("sock_slot", ctypes.c_int16 * (2 * MAX_SOCKS)),  # _scan.c's hash of the names
        ("names", ctypes.c_uint8 * NAMES_BYTES),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    lib.fr_scan.restype = ctypes.c_int64
    lib.fr_scan.argtypes = [
        _P,
        ctypes.c_int64,
        ctypes.POINTER(_Cols),
        ctypes.c_int64,
        ctypes.POINTER(_KernelName),
        ctypes.c_int32,
        ctypes.POINTER(_Field),
        ctypes.c_int32,
        ctypes.POINTER(_Result),
        ctypes.c_int64,
    ]


def _lib() -> Optional[ctypes.CDLL]:
    return native.load("_scan", _declare)


def available() -> bool:
    """True when the C scanner is built and not switched off."""
    return _lib() is not None


class OffsetStrings(Sequence):
    """Strings of a byte buffer, decoded only when asked for."""

    def __init__(self, data: native.Buffer, off: np.ndarray, length: np.ndarray):
        # numpy, not lists: a million Python ints per column would cost more than the text
        self._data, self._off, self._len = data, off, length

    def __len__(self) -> int:
        return len(self._off)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        o = int(self._off[i])
        return self._data[o : o + int(self._len[i])].decode("utf-8", "replace")

    def __iter__(self):
        data = self._data
        for o, n in zip(self._off.tolist(), self._len.tolist()):
            yield data[o : o + n].decode("utf-8", "replace")


class NumberColumn(Sequence):
    """A numeric column kept as numpy, read as Python numbers (line, pid, cpu, ts):
    a million Python ints or floats in a list would cost more memory than the
    text's columns (a float list: 32 MB a million rows)."""

    def __init__(self, values: np.ndarray):
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self._values[i].tolist()
        return self._values[i].item()

    def __iter__(self):
        return iter(self._values.tolist())

    def __array__(self, dtype=None, copy=None):
        return self._values if dtype is None else self._values.astype(dtype, copy=False)

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, NumberColumn)) else NotImplemented


class FieldColumn(Sequence):
    """A kernel field's column (addr, xs, slot, ...) kept as numpy values and
    presence, read as Python ints, None where absent.

    The checks read most fields a few rows at a time (a claim's rows), and a
    list of a million ints costs ~36 MB: read row by row, the column stays
    numpy. A loop that reads many rows (MANY_READS) gets the list, made once.
    """

    MANY_READS = 1 << 16

    def __init__(self, values: np.ndarray, present: np.ndarray):
        self._values, self._present = values, present
        self._list: Optional[list] = None
        self._reads = 0

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i):  # type: ignore[override]
        if self._list is not None:
            return self._list[i]
        self._reads += 1
        if isinstance(i, slice) or self._reads > self.MANY_READS:
            return self.as_list()[i]
        return self._values[i].item() if self._present[i] else None

    def as_list(self) -> list:
        if self._list is None:
            self._list = optional_list(self._values, self._present)
        return self._list

    def __iter__(self):
        return iter(self.as_list())

    def __eq__(self, other) -> bool:
        return self.as_list() == list(other) if isinstance(other, (list, FieldColumn)) else NotImplemented


def optional_list(values: np.ndarray, present: np.ndarray) -> list:
    """values as Python ints, None where not present; the cost follows the rarer side."""
    n = len(values)
    absent = np.flatnonzero(~present)
    if len(absent) * 8 < n:
        out = values.tolist()
        for i in absent.tolist():
            out[i] = None
        return out
    idx = np.flatnonzero(present)
    if len(idx) * 8 < n:
        out = [None] * n
        for i, v in zip(idx.tolist(), values[idx].tolist()):
            out[i] = v
        return out
    obj = values.astype(object)
    obj[absent] = None
    return obj.tolist()


@dataclass
class Scan:
    """The scanner's columns, event rows only, plus the meta lines it left to Python."""

    data: native.Buffer
    cols: dict[str, np.ndarray]
    fields: dict[str, tuple[np.ndarray, np.ndarray]]  # column -> (values, present), per format.KernelField
    socks: list[str]
    meta: list[tuple[int, str]]  # (line number, text) of non-event lines
    lines: int
    long_lines: int
    cut: bool


def scan(data: native.Buffer, fmt: Format = CONTRACT) -> Scan:
    """Run the C scanner with the format's kernel events and fields."""
    if not available():
        raise RuntimeError("the C scanner is not built")
    if len(fmt.fields) > MAX_FIELDS:
        raise RuntimeError(f"the C scanner reads at most {MAX_FIELDS} kernel fields")
    # Rows for one line in MIN_LINE bytes: columns the scanner does not reach
    # are never touched, so cost no memory; a trace of shorter lines, or of
    # batched lines (a row per descriptor), is scanned again with as many
    # rows as it can need.
    cap = len(data) // MIN_LINE + 64
    while True:
        got = _scan(data, fmt, cap)
        if got is not None:
            return got
        cap = max_rows(data)


def max_rows(data: native.Buffer) -> int:
    """Rows a trace can need: one per line, and one per `0x` of a batched line."""
    step, n = 16 << 20, 1  # a mapping has no count(): counted a copied chunk at a time
    for at in range(0, len(data), step):
        chunk = data[at : at + step + 1]  # a byte more: an `0x` across the cut counts where it starts
        n += chunk.count(b"\n", 0, step) + chunk.count(b"0x") + chunk.count(b"0X")
    return n


def _scan(data: native.Buffer, fmt: Format, cap: int) -> Optional[Scan]:
    arrays = {name: np.empty(cap, dtype=dt) for name, dt in _COLS}
    values = [np.empty(cap, dtype=np.uint64) for _ in fmt.fields]
    fval = (_P * MAX_FIELDS)(*[v.ctypes.data for v in values])
    cols = _Cols(
        *[a.ctypes.data for name, a in list(arrays.items())[:_FIELDS_AT]],
        fval,
        *[a.ctypes.data for a in list(arrays.values())[_FIELDS_AT:]],
    )
    table = fmt.scanner_table()
    names = (_KernelName * max(1, len(table)))()
    keep = []
    for i, (base, kind, need) in enumerate(table):
        b = base.encode()
        keep.append(b)
        names[i] = _KernelName(b, len(b), kind, need)
    fields = (_Field * len(fmt.fields))()
    for j, f in enumerate(fmt.fields):
        b = f.name.encode()
        keep.append(b)
        fields[j] = _Field(b, len(b))
    res = _Result()
    rows = _lib().fr_scan(
        native.address(data),
        len(data),
        ctypes.byref(cols),
        cap,
        names,
        len(table),
        fields,
        len(fmt.fields),
        ctypes.byref(res),
        RELEASE_BYTES if isinstance(data, mmap.mmap) else 0,
    )
    if rows < 0:
        if cap >= max_rows(data):
            raise RuntimeError("scanner overflow")
        return None
    # meta rows sit at the end, last line first
    meta = [
        (line, data[off : off + ln].decode("utf-8", "replace"))
        for line, off, ln in zip(
            arrays["line"][cap - res.meta :][::-1].tolist(),
            arrays["body_off"][cap - res.meta :][::-1].tolist(),
            arrays["body_len"][cap - res.meta :][::-1].tolist(),
        )
    ]
    arrays = {k: v[:rows] for k, v in arrays.items()}
    mask = arrays.pop("fmask")
    kv = {f.column: (v[:rows], (mask & (1 << j)) != 0) for j, (f, v) in enumerate(zip(fmt.fields, values))}
    names = memoryview(res.names)
    socks = [
        bytes(names[o : o + n0 + 1 + n1]).decode("utf-8", "replace")
        for o, (n0, n1) in zip(res.sock_name[: res.nsocks], res.sock_len[: res.nsocks])
    ]
    return Scan(data, arrays, kv, socks, meta, res.lines, res.long_lines, bool(res.cut))


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
