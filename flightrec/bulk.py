"""Bulk text work for a million rows: interning strings, printing rows from a
template (text, or protobuf: varints and length-delimited fields), a string's
name=value words as JSON members.

All run in C (flightrec/_bulk.c, loaded with ctypes, built by `make`) and, when
that is not built or FLIGHTREC_PURE_PYTHON is set, in the Python below, which
is their reference: tests/unit/test_bulk.py holds the two to the same output.
Nothing here knows what the strings or rows mean.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _q  # the C-accelerated string quoter
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from flightrec import native

# how a segment prints its column: decimal, value/1000 as a decimal, pieces[value], 0x and unsigned hex,
# a protobuf varint; OPEN and CLOSE (no column) bracket a length-delimited field's body, its length put in front;
# SPAN: base[value:value + lengths[row]]; WORDS: that span's words as protobuf (proto_members; plain text only);
# FIELD: OPEN, VARINT, CLOSE as one segment (one pass of the loop, not three): the literal's first byte is the
# field's tag, its rest and the value as a varint the body (field_varint)
INT, MICROS, PIECE, HEX, VARINT, OPEN, CLOSE, SPAN, WORDS, FIELD = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
FIELD_LITERAL_MAX = 100  # a FIELD body (literal rest and a 10-byte varint at most) stays under 128: one length byte
MAX_DEPTH = 16  # OPEN inside OPEN, as deep as _bulk.c allows
CHUNK_BYTES = 4 << 20
_BUFFERS: list[np.ndarray] = []  # render's output buffer, kept for the next call

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Known(ctypes.Structure):
    _fields_ = [("words", _P), ("off", _P), ("iid", _P), ("n", _I64)]


class _Seg(ctypes.Structure):
    _fields_ = [
        ("lit", _P),
        ("lit_len", _I64),
        ("how", ctypes.c_int32),
        ("values", _P),
        ("pieces", _P),
        ("piece_off", _P),
        ("word_names", ctypes.POINTER(_Known)),
        ("word_values", ctypes.POINTER(_Known)),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    lib.fr_intern.restype = _I64
    lib.fr_intern.argtypes = [_P, _P, _P, _I64, _P, _P]
    lib.fr_plain.restype = None
    lib.fr_plain.argtypes = [_P, _P, _P, _I64, _P]
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
        _I64,
        ctypes.POINTER(_I64),
    ]
    for fn in (lib.fr_json_words, lib.fr_proto_words):
        fn.restype = _I64
        fn.argtypes = [_P, _P, _P, _I64, _I64, _P, _I64, _P]


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
    values: Optional[np.ndarray] = None  # one integer per row; for PIECE an index into pieces; None for OPEN, CLOSE
    pieces: Sequence[bytes] = ()
    # instead of pieces, for many: piece k is joined[offsets[k]:offsets[k + 1]]
    joined: bytes = b""
    offsets: Optional[np.ndarray] = None
    # SPAN, WORDS: the buffer the values point into, and each row's length
    base: Optional[native.Buffer] = None
    lengths: Optional[np.ndarray] = None
    # WORDS: interned names and values (such as the probe sites), each to its iid (proto_members)
    word_names: Mapping[str, int] = field(default_factory=dict)
    word_values: Mapping[str, int] = field(default_factory=dict)

    def piece_table(self) -> tuple[bytes, np.ndarray]:
        """The pieces as one blob and len + 1 offsets into it."""
        if self.offsets is not None:
            return self.joined, np.asarray(self.offsets, dtype=np.int64)
        offsets = np.zeros(len(self.pieces) + 1, np.int64)
        np.cumsum([len(p) for p in self.pieces], out=offsets[1:])
        return b"".join(self.pieces), offsets


def _check(segs: Sequence[Seg], rows: int) -> None:
    depth = 0
    for s in segs:
        if s.how in (OPEN, CLOSE):
            depth += 1 if s.how == OPEN else -1
            if depth < 0 or depth > MAX_DEPTH:
                raise ValueError("OPEN and CLOSE segments do not balance")
            continue
        if s.values is None or len(s.values) < rows:
            raise ValueError("a column is shorter than the rows to print")
        if s.how == FIELD and not 1 <= len(s.literal) <= FIELD_LITERAL_MAX:
            raise ValueError(f"a field segment's literal is its tag and up to {FIELD_LITERAL_MAX - 1} bytes")
        if s.how in (SPAN, WORDS):
            if s.base is None or s.lengths is None or len(s.lengths) < rows:
                raise ValueError("a span segment needs its buffer and a length per row")
            ends = s.values[:rows] + s.lengths[:rows]
            if np.min(s.values[:rows]) < 0 or np.min(s.lengths[:rows]) < 0 or np.max(ends) > len(s.base):
                raise ValueError("a span is outside its buffer")
        if s.how == PIECE:
            count = len(s.offsets) - 1 if s.offsets is not None else len(s.pieces)
            if np.min(s.values[:rows]) < 0 or np.max(s.values[:rows]) >= count:
                raise ValueError("a piece index is out of range")
    if depth:
        raise ValueError("OPEN and CLOSE segments do not balance")


def render(segs: Sequence[Seg], suffix: bytes, sep: bytes, rows: int, write: Callable[[bytes], object]) -> None:
    """Print rows 0..rows-1 (each its segments, then `suffix`; `sep` between
    rows) through `write`, a few MiB at a time. A chunk holds whole rows and
    no leading `sep`; the bytes passed are only valid during the call."""
    if rows <= 0:
        return
    _check(segs, rows)
    if not available():
        return _render_py(segs, suffix, sep, rows, write)
    keep = []  # what the C structs point into
    arr = (_Seg * len(segs))()
    bound = len(suffix) + len(sep)
    for i, s in enumerate(segs):
        values = np.ascontiguousarray(s.values if s.values is not None else np.zeros(1), dtype=np.int64)
        blob, offsets = b"", np.zeros(1, np.int64)
        base = ctypes.cast(ctypes.c_char_p(blob), _P)
        if s.how == PIECE:
            blob, offsets = s.piece_table()
            base = ctypes.cast(ctypes.c_char_p(blob), _P)
            picked = values[:rows]  # the longest piece these rows print, not of the whole table
            bound += int((offsets[picked + 1] - offsets[picked]).max(initial=0))
        elif s.how in (SPAN, WORDS):
            offsets = np.ascontiguousarray(s.lengths, dtype=np.int64)
            base = native.address(s.base)
            bound += int(offsets[:rows].max(initial=0)) * (13 if s.how == WORDS else 1) + 32
        else:
            bound += 25
        bound += len(s.literal)
        tables = [_known(s.word_names, keep), _known(s.word_values, keep)] if s.how == WORDS else [None, None]
        keep += [values, blob, offsets, s.literal]
        arr[i] = _Seg(
            ctypes.cast(ctypes.c_char_p(s.literal), _P),
            len(s.literal),
            s.how,
            values.ctypes.data if s.values is not None else None,
            base,
            offsets.ctypes.data,
            *tables,
        )
    cap = max(CHUNK_BYTES, 2 * bound)
    # a buffer from the last call: a fresh one would be faulted in again each time
    buf = _BUFFERS.pop() if _BUFFERS and len(_BUFFERS[-1]) >= cap else np.empty(cap, np.uint8)
    view = memoryview(buf)
    used = _I64()
    row = 0
    try:
        while row < rows:
            nxt = _lib().fr_render(
                arr,
                len(segs),
                suffix,
                len(suffix),
                sep,
                len(sep),
                row,
                rows,
                buf.ctypes.data,
                cap,
                bound,
                ctypes.byref(used),
            )
            if nxt == row:
                raise RuntimeError("a row does not fit the render buffer")
            write(view[: used.value])
            row = nxt
    finally:
        _BUFFERS[:] = [buf]


def _known(words: Mapping[str, int], keep: list) -> Optional[ctypes._Pointer]:
    """`words` as the C table of interned words (kept alive in `keep`), or None."""
    if not words:
        return None
    encoded = [w.encode() for w in words]
    blob = b"".join(encoded)
    off = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(w) for w in encoded], out=off[1:])
    iid = np.array(list(words.values()), np.int64)
    table = _Known(ctypes.cast(ctypes.c_char_p(blob), _P), off.ctypes.data, iid.ctypes.data, len(encoded))
    keep += [blob, off, iid, table]
    return ctypes.pointer(table)


def _render_py(
    segs: Sequence[Seg], suffix: bytes, sep: bytes, rows: int, write: Callable[[bytes], object], chunk_rows: int = 50000
) -> None:
    cols = []
    for s in segs:
        values = np.asarray(s.values)[:rows].tolist() if s.values is not None else None
        pieces: Sequence[bytes] = s.pieces
        if s.how == PIECE and s.offsets is not None:
            blob, offsets = s.piece_table()
            ends = offsets.tolist()
            pieces = [blob[a:b] for a, b in zip(ends, ends[1:])]
        if s.how in (SPAN, WORDS):  # each row's own piece
            spans = [bytes(s.base[o : o + n]) for o, n in zip(values, np.asarray(s.lengths)[:rows].tolist())]
            pieces = spans if s.how == SPAN else [proto_members(t.decode(), s.word_names, s.word_values) for t in spans]
            values = list(range(rows))
        cols.append((s.literal, s.how, values, pieces))
    for lo in range(0, rows, chunk_rows):
        out = []
        for r in range(lo, min(rows, lo + chunk_rows)):
            parts: list[bytes] = []
            opened: list[int] = []
            for literal, how, values, pieces in cols:
                if how == FIELD:
                    parts.append(field_varint(literal, values[r]))
                    continue
                parts.append(literal)
                if how == OPEN:
                    opened.append(len(parts))
                elif how == CLOSE:
                    at = opened.pop()
                    body = b"".join(parts[at:])
                    parts[at:] = [varint(len(body)), body]
                else:
                    parts.append(_print(how, values[r], pieces))
            parts.append(suffix)
            out.append(b"".join(parts))
        write(sep.join(out))


def varint(v: int) -> bytes:
    """`v` (taken as unsigned 64-bit) as a protobuf varint."""
    v &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def len_field(tag: bytes, body: bytes) -> bytes:
    """A protobuf length-delimited field: `tag`, the body's length as a varint, the body."""
    return tag + varint(len(body)) + body


def field_varint(literal: bytes, v: int) -> bytes:
    """What a FIELD segment prints: a field whose tag is `literal`'s first byte
    and whose body is the literal's rest and `v` as a varint."""
    return len_field(literal[:1], literal[1:] + varint(v))


def _print(how: int, v: int, pieces: Sequence[bytes]) -> bytes:
    if how in (PIECE, SPAN, WORDS):
        return pieces[v]
    if how == VARINT:
        return varint(v)
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


def _words(text: str) -> list[tuple[str, str]]:
    """`text`'s words as (name, value): a first word starting with "(" as
    ("site", word), then each name=value word with a name (split at its first "=")."""
    words = text.split()
    out = []
    if words and words[0].startswith("("):
        out.append(("site", words[0]))
    for w in words:
        name, eq, value = w.partition("=")
        if eq and name:
            out.append((name, value))
    return out


def json_members(text: str) -> str:
    """`text`'s words (`_words`) as JSON object members, comma-separated."""
    return ",".join(f"{_q(name)}:{_q(value)}" for name, value in _words(text))


_KERNEL_HEX = re.compile(r"0x(0|[1-9a-f][0-9a-f]{0,15})")  # %lx after 0x: it prints back the same


def proto_members(
    text: str, names: Optional[Mapping[str, int]] = None, values: Optional[Mapping[str, int]] = None
) -> bytes:
    """`text`'s words (`_words`) as protobuf: each a TrackEvent debug annotation
    (field 4). Its name is the name_iid (1) `names` gives it, else the name
    (10); its value the string_value_iid (17) `values` gives it, else a
    pointer_value (7) when it is kernel hex, else a string_value (6)."""
    names, values = names or {}, values or {}
    out = []
    for name, value in _words(text):
        n = names.get(name)
        body = b"\x08" + varint(n) if n else len_field(b"\x52", name.encode())
        v = values.get(value)
        if v:
            body += b"\x88\x01" + varint(v)
        elif _KERNEL_HEX.fullmatch(value):
            body += b"\x38" + varint(int(value, 16))
        else:
            body += len_field(b"\x32", value.encode())
        out.append(len_field(b"\x22", body))
    return b"".join(out)


_PLAIN = re.compile(rb"[\x20-\x7e]*")  # printable ASCII and spaces: split and quoted alike in C and Python


def plain(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Whether each string data[off[i]:off[i] + length[i]] is printable ASCII and
    spaces only: what WORDS may print."""
    n = len(off)
    if not available():
        return np.array(
            [
                bool(_PLAIN.fullmatch(bytes(data[o : o + k])))
                for o, k in zip(np.asarray(off).tolist(), np.asarray(length).tolist())
            ],
            dtype=bool,
        )
    off = np.ascontiguousarray(off, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int64)
    mask = np.empty(n, np.uint8)
    _lib().fr_plain(native.address(data), off.ctypes.data, length.ctypes.data, n, mask.ctypes.data)
    return mask.astype(bool)


def json_words(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    """json_members of each string data[off[i]:off[i] + length[i]] of printable
    ASCII, UTF-8 encoded and concatenated, and the length of each; -1 (nothing
    written) for any other string, left to json_members on its decoded text."""
    return _words_bulk("fr_json_words", lambda t: json_members(t).encode(), data, off, length)


def proto_words(data: native.Buffer, off: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    """json_words, the words written by proto_members."""
    return _words_bulk("fr_proto_words", proto_members, data, off, length)


def _words_bulk(
    fn: str, members: Callable[[str], bytes], data: native.Buffer, off: np.ndarray, length: np.ndarray
) -> tuple[bytes, np.ndarray]:
    if not available():
        return _words_py(members, data, off, length)
    n = len(off)
    off = np.ascontiguousarray(off, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int32)
    out_len = np.empty(n, np.int64)
    cap = max(CHUNK_BYTES, 25 * int(length.max(initial=0)) + 64)
    buf = ctypes.create_string_buffer(cap)
    chunks, i = [], 0
    while i < n:
        start = i
        i = getattr(_lib(), fn)(
            native.address(data), off.ctypes.data, length.ctypes.data, i, n, buf, cap, out_len.ctypes.data
        )
        chunks.append(buf.raw[: int(out_len[start:i].clip(0).sum())])
    return b"".join(chunks), out_len


def _words_py(
    members: Callable[[str], bytes], data: native.Buffer, off: np.ndarray, length: np.ndarray
) -> tuple[bytes, np.ndarray]:
    out, lens = [], []
    for o, n in zip(np.asarray(off).tolist(), np.asarray(length).tolist()):
        s = bytes(data[o : o + n])
        m = members(s.decode()) if _PLAIN.fullmatch(s) else None
        out.append(m or b"")
        lens.append(-1 if m is None else len(m))
    return b"".join(out), np.array(lens, dtype=np.int64)
