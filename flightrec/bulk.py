"""Bulk text work for a million rows: interning strings, printing rows from a
template, a string's name=value words as JSON members.

All run in C (flightrec/_bulk.c, loaded with ctypes, built by `make`) and, when
that is not built or FLIGHTREC_PURE_PYTHON is set, in the Python below, which
is their reference: tests/unit/test_bulk.py holds the two to the same output.
Nothing here knows what the strings or rows mean.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from json.encoder import encode_basestring as _q  # the C-accelerated string quoter
from typing import Callable, Optional, Sequence

import numpy as np

from flightrec import native

# how a segment prints its column: decimal, value/1000 as a decimal, pieces[value], 0x and unsigned hex
INT, MICROS, PIECE, HEX = 0, 1, 2, 3
CHUNK_BYTES = 4 << 20

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Seg(ctypes.Structure):
    _fields_ = [
        ("lit", _P),
        ("lit_len", _I64),
        ("how", ctypes.c_int32),
        ("values", _P),
        ("pieces", _P),
        ("piece_off", _P),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    lib.fr_intern.restype = _I64
    lib.fr_intern.argtypes = [_P, _P, _P, _I64, _P, _P]
    lib.fr_render.restype = _I64
    lib.fr_render.argtypes = [
        ctypes.POINTER(_Seg),
        ctypes.c_int32,
        ctypes.c_char_p,
        _I64,
        ctypes.c_char_p,
        _I64,
        _I64,
        _I64,
        ctypes.c_void_p,
        _I64,
        ctypes.POINTER(_I64),
    ]
    lib.fr_json_words.restype = _I64
    lib.fr_json_words.argtypes = [_P, _P, _P, _I64, _I64, _P, _I64, _P]


def _lib() -> Optional[ctypes.CDLL]:
    return native.load("_bulk", _declare)


def available() -> bool:
    """True when the C half is built and not switched off."""
    return _lib() is not None


def intern(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids of the strings data[off[i]:off[i] + length[i]], numbered in
    order of first appearance, and the first index holding each id."""
    if not available():
        return _intern_py(data, off, length)
    n = len(off)
    off = np.ascontiguousarray(off, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int32)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    distinct = _lib().fr_intern(
        native.address(data), off.ctypes.data, length.ctypes.data, n, ids.ctypes.data, first.ctypes.data
    )
    if distinct < 0:
        raise MemoryError("interning strings")
    return ids, first[:distinct].copy()


def _intern_py(data: bytes, off: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seen: dict[bytes, int] = {}
    first: list[int] = []
    ids = []
    for i, (o, n) in enumerate(zip(np.asarray(off).tolist(), np.asarray(length).tolist())):
        s = data[o : o + n]
        k = seen.get(s)
        if k is None:
            k = seen[s] = len(first)
            first.append(i)
        ids.append(k)
    return np.array(ids, dtype=np.int64), np.array(first, dtype=np.int64)


@dataclass(frozen=True)
class Seg:
    """A literal, then each row's value of one column, printed `how`."""

    literal: bytes
    how: int
    values: np.ndarray  # one integer per row; for PIECE an index into pieces
    pieces: Sequence[bytes] = ()


def render(segs: Sequence[Seg], suffix: bytes, sep: bytes, rows: int, write: Callable[[bytes], object]) -> None:
    """Print rows 0..rows-1 (each its segments, then `suffix`; `sep` between
    rows) through `write`, a few MiB at a time. A chunk holds whole rows and
    no leading `sep`; the bytes passed are only valid during the call."""
    if rows <= 0:
        return
    for s in segs:
        if len(s.values) < rows:
            raise ValueError("a column is shorter than the rows to print")
        if s.how == PIECE and (np.min(s.values[:rows]) < 0 or np.max(s.values[:rows]) >= len(s.pieces)):
            raise ValueError("a piece index is out of range")
    if not available():
        return _render_py(segs, suffix, sep, rows, write)
    keep = []  # what the C structs point into
    arr = (_Seg * len(segs))()
    bound = len(suffix) + len(sep)
    for i, s in enumerate(segs):
        values = np.ascontiguousarray(s.values, dtype=np.int64)
        blob, offsets = b"", np.zeros(1, np.int64)
        if s.how == PIECE:
            blob = b"".join(s.pieces)
            offsets = np.zeros(len(s.pieces) + 1, np.int64)
            np.cumsum([len(p) for p in s.pieces], out=offsets[1:])
            bound += int(np.diff(offsets).max(initial=0))
        else:
            bound += 25
        bound += len(s.literal)
        keep += [values, blob, offsets, s.literal]
        arr[i] = _Seg(
            ctypes.cast(ctypes.c_char_p(s.literal), _P),
            len(s.literal),
            s.how,
            values.ctypes.data,
            ctypes.cast(ctypes.c_char_p(blob), _P),
            offsets.ctypes.data,
        )
    cap = max(CHUNK_BYTES, 2 * bound)
    buf = ctypes.create_string_buffer(cap)
    view = memoryview(buf).cast("B")
    used = _I64()
    row = 0
    while row < rows:
        nxt = _lib().fr_render(
            arr, len(segs), suffix, len(suffix), sep, len(sep), row, rows, buf, cap, ctypes.byref(used)
        )
        if nxt == row:
            raise RuntimeError("a row does not fit the render buffer")
        write(view[: used.value])
        row = nxt


def _render_py(
    segs: Sequence[Seg], suffix: bytes, sep: bytes, rows: int, write: Callable[[bytes], object], chunk_rows: int = 50000
) -> None:
    cols = [(s.literal, s.how, np.asarray(s.values)[:rows].tolist(), s.pieces) for s in segs]
    for lo in range(0, rows, chunk_rows):
        out = []
        for r in range(lo, min(rows, lo + chunk_rows)):
            parts = []
            for literal, how, values, pieces in cols:
                v = values[r]
                parts.append(literal)
                parts.append(_print(how, v, pieces))
            parts.append(suffix)
            out.append(b"".join(parts))
        write(sep.join(out))


def _print(how: int, v: int, pieces: Sequence[bytes]) -> bytes:
    if how == PIECE:
        return pieces[v]
    if how == INT:
        return str(v).encode()
    if how == HEX:
        return f"{v & 0xFFFFFFFFFFFFFFFF:#x}".encode()
    return micros(v).encode()


def micros(ns: int) -> str:
    """ns / 1000 exactly, as a decimal: whole numbers bare, others with three decimals."""
    sign, a = ("-", -ns) if ns < 0 else ("", ns)
    whole, frac = divmod(a, 1000)
    return f"{sign}{whole}.{frac:03d}" if frac else f"{sign}{whole}"


def json_members(text: str) -> str:
    """`text`'s words as JSON object members, comma-separated: a first word
    starting with "(" as "site", then each name=value word with a name as
    "name":"value" (split at its first "=")."""
    words = text.split()
    parts = []
    if words and words[0].startswith("("):
        parts.append(f'"site":{_q(words[0])}')
    for w in words:
        name, eq, value = w.partition("=")
        if eq and name:
            parts.append(f"{_q(name)}:{_q(value)}")
    return ",".join(parts)


_PLAIN = re.compile(rb"[\x20-\x7e]*")  # printable ASCII and spaces: split and quoted alike in C and Python


def json_words(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    """json_members of each string data[off[i]:off[i] + length[i]] of printable
    ASCII, UTF-8 encoded and concatenated, and the length of each; -1 (nothing
    written) for any other string, left to json_members on its decoded text."""
    if not available():
        return _json_words_py(data, off, length)
    n = len(off)
    off = np.ascontiguousarray(off, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int32)
    out_len = np.empty(n, np.int64)
    cap = max(CHUNK_BYTES, 20 * int(length.max(initial=0)))
    buf = ctypes.create_string_buffer(cap)
    chunks, i = [], 0
    while i < n:
        start = i
        i = _lib().fr_json_words(
            native.address(data), off.ctypes.data, length.ctypes.data, i, n, buf, cap, out_len.ctypes.data
        )
        chunks.append(buf.raw[: int(out_len[start:i].clip(0).sum())])
    return b"".join(chunks), out_len


def _json_words_py(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    out, lens = [], []
    for o, n in zip(np.asarray(off).tolist(), np.asarray(length).tolist()):
        s = bytes(data[o : o + n])
        m = json_members(s.decode()).encode() if _PLAIN.fullmatch(s) else None
        out.append(m or b"")
        lens.append(-1 if m is None else len(m))
    return b"".join(out), np.array(lens, dtype=np.int64)
