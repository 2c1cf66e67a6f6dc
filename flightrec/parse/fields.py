"""Event bodies in Python: the marker grammar, kernel event fields and the
detection forms of flightrec.parse.format (docs/markers.md). The C scanner
(flightrec/_scan.c) reads markers and kernel fields the same way."""

from __future__ import annotations

from typing import Callable, Optional

from flightrec.parse.format import DETECTION_FORMS, NOTE_SEP, STATES, Detection, PayloadFinding

_HEX = frozenset("0123456789abcdefABCDEF")


def parse_hex(text: str, need_0x: bool = True) -> Optional[int]:
    """`0x` and 1 to 16 hex digits (the `0x` optional unless need_0x), else None.

    Stricter than int(): no sign, no underscores, at most 64 bits, as the C
    scanner reads them.
    """
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    elif need_0x:
        return None
    if not 0 < len(text) <= 16 or not _HEX.issuperset(text):
        return None
    return int(text, 16)


def parse_int(text: str) -> Optional[int]:
    """`0x1a`, `1a` (hex, as in `remaining:` lists) or `26` with a 0x-less decimal never mixed in."""
    try:
        return int(text, 16)
    except ValueError:
        return None


def parse_marker(body: str) -> Optional[tuple]:
    """One marker body as (sock, queue, addr, frm, to, detail), None when it is
    not of the grammar; a note line has sock, queue, frm and to None. A plain
    tuple: it is called once per line, where a dataclass would cost.

    >>> parse_marker("ingress q:1 0x16ce900 FILL -> RX")
    ('ingress q:1', 1, 23914752, 'FILL', 'RX', None)
    """
    head, colon, detail = body.partition(": ")
    if not colon and body.endswith(":"):
        head = body[:-1]
    words = head.split()
    n = len(words)
    if n == 6:
        q, a, frm, arrow, to = words[1], words[2], words[3], words[4], words[5]
        if arrow != "->" or q[:2] != "q:" or frm not in STATES or to not in STATES:
            return None
        digits = q[2:]
        if not 0 < len(digits) <= 9 or not digits.isascii() or not digits.isdigit():
            return None
        addr = parse_hex(a)
        if addr is None:
            return None
        return (words[0] + " " + q, int(digits), addr, frm, to, detail.strip() if colon else None)
    if n >= 2 and not colon:
        addr = parse_hex(words[0])
        if addr is None:
            return None
        return (None, None, addr, None, None, head.split(None, 1)[1].strip())
    return None


def parse_markers(body: str) -> Optional[list[tuple]]:
    """Every descriptor event of one marker body, in order: one tuple of
    parse_marker for a per-descriptor line, several for a batched one; None
    when the body is of neither grammar. A note line holding `; ` is read as
    batched notes when every piece is a note, else as one note, as before."""
    if NOTE_SEP in body:
        batch = parse_batch(body)
        if batch is not None:
            return batch
    m = parse_marker(body)
    if m is not None:
        return [m]
    return None if NOTE_SEP in body else parse_batch(body)


def parse_batch(body: str) -> Optional[list[tuple]]:
    """A batched line (docs/markers.md "Batched lines") as the per-descriptor
    tuples of parse_marker, in order; None when the body is not one.

    >>> parse_batch("ingress q:1 COMP -> FILL 0x1000 0x1800")
    [('ingress q:1', 1, 4096, 'COMP', 'FILL', None), ('ingress q:1', 1, 6144, 'COMP', 'FILL', None)]
    >>> parse_batch("0x1000 egress_tx_queue forward; 0x1800 egress_tx_queue forward pkt 7")[1]
    (None, None, 6144, None, None, 'egress_tx_queue forward pkt 7')
    """
    if ": " in body or body.endswith(":"):
        return None  # a detection line is never batched
    if NOTE_SEP in body:
        notes = [_note(piece) for piece in body.split(NOTE_SEP)]
        return notes if all(n is not None for n in notes) else None
    words = body.split()
    if len(words) < 6 or words[1][:2] != "q:" or words[2] not in STATES:
        return None
    digits = words[1][2:]
    if not 0 < len(digits) <= 9 or not digits.isascii() or not digits.isdigit():
        return None
    sock, queue = words[0] + " " + words[1], int(digits)
    out: list[tuple] = []
    i, n, frm, to, fresh = 2, len(words), None, None, False
    while i < n:
        if words[i] in STATES:
            # a group: FROM -> TO, then at least one ADDR
            if fresh or i + 2 >= n or words[i + 1] != "->" or words[i + 2] not in STATES:
                return None
            frm, to, fresh, i = words[i], words[i + 2], True, i + 3
            continue
        addr = parse_hex(words[i])
        if addr is None:
            return None
        out.append((sock, queue, addr, frm, to, None))
        fresh, i = False, i + 1
    return None if fresh else out


def _note(text: str) -> Optional[tuple]:
    """`ADDR WORD [WORD ...]` (a trailing `:` dropped) as parse_marker's note tuple."""
    head = text[:-1] if text.endswith(":") else text
    words = head.split(None, 1)
    addr = parse_hex(words[0]) if len(words) == 2 else None
    if addr is None or not words[1].strip():
        return None
    return (None, None, addr, None, None, words[1].strip())


def kernel_fields(body: str, names: dict[str, int]) -> Optional[tuple[list, int]]:
    """The `name=value` fields of a kernel event body whose name is in `names`
    (field name -> index): (values by index, bit mask of those present), or
    None when one of them is not hex (then the event is not one of ours).

    The `(symbol+off/size)` or `(ffffffff81234567)` prefix of a kprobe is no
    `name=value` word: it differs between kernels and between ftrace and
    trace-cmd. A field given twice keeps its last value, as in the C scanner.
    """
    values: list = [None] * len(names)
    mask = 0
    for word in body.split():
        name, eq, value = word.partition("=")
        if not eq:
            continue
        j = names.get(name)
        if j is None:
            continue
        v = parse_hex(value, False)
        if v is None:
            return None
        values[j] = v
        mask |= 1 << j
    return values, mask


# -- the detection forms (flightrec.parse.format.DETECTION_FORMS): one reader each,
# taking the detail's words (commas and brackets made spaces) and the raw text,
# returning the Detection or None when the detail is not of its form.


def _fill_order(words: list[str], detail: str) -> Optional[Detection]:
    if not (words and words[0] == "expected" and len(words) >= 2):
        return None
    exp_text = words[1]
    # The post's second excerpt lost the space: "expected 0x1000900remaining:".
    glued = exp_text.find("remaining")
    if glued > 0:
        exp_text = exp_text[:glued]
        words = words[:1] + [exp_text, "remaining:"] + words[2:]
    expected = parse_int(exp_text)
    remaining: list[int] = []
    cut = False
    for w in words[3:]:
        if w in ("…", "...", "…."):
            cut = True
            continue
        v = parse_int(w)
        if v is None:
            cut = True
            break
        remaining.append(v)
    return Detection("fill_order", expected, tuple(remaining), cut)


def _length(words: list[str], detail: str) -> Optional[Detection]:
    if not (words and words[0] == "len" and len(words) >= 4 and words[2] == "xdp_len"):
        return None
    try:
        return Detection("length", length=int(words[1]), xdp_length=int(words[3]))
    except ValueError:
        return Detection("other")


def _poison(words: list[str], detail: str) -> Optional[Detection]:
    return Detection("poison") if words == ["poison"] else None


def _payload_form(words: list[str], detail: str) -> Optional[Detection]:
    return _payload(words) if words and words[0] == "payload" else None


def _invalid(words: list[str], detail: str) -> Optional[Detection]:
    if words and words[0] == "invalid" and len(words) >= 3 and words[1] == "was":
        return Detection("invalid", was=words[2])
    return None


# one reader per key of format.DETECTION_FORMS (tests/unit/test_parse.py holds them equal)
DETECTION_READERS: dict[str, Callable[[list[str], str], Optional[Detection]]] = {
    "fill_order": _fill_order,
    "length": _length,
    "poison": _poison,
    "payload": _payload_form,
    "invalid": _invalid,
}


def parse_detection(detail: str) -> Detection:
    """Read the detail of a detection line (see docs/markers.md): the first
    form of DETECTION_FORMS that matches, else kind "other"."""
    words = detail.replace(",", " ").replace("[", " ").replace("]", " ").split()
    for kind in DETECTION_FORMS:
        det = DETECTION_READERS[kind](words, detail)
        if det is not None:
            return det
    return Detection("other")


def _payload(words: list[str]) -> Detection:
    """`payload expected PKT found PKT at OFF len LEN stamped LEN`, `?` for unknown."""
    if len(words) != 11 or words[1::2] != ["expected", "found", "at", "len", "stamped"]:
        return Detection("other")
    nums: list[Optional[int]] = []
    for w in words[2::2]:
        if w == "?":
            nums.append(None)
        elif w.isascii() and w.isdigit():
            nums.append(int(w))
        else:
            return Detection("other")
    expected, found, offset, length, stamped = nums
    if offset is None or length is None:
        return Detection("other")
    return Detection("payload", length=length, payload=PayloadFinding(expected, found, offset, length, stamped))


def parse_receiver_line(body: str) -> Optional[tuple[int, Detection]]:
    """A receiving application's detection line, `receiver udp:PORT: DETAIL`
    (docs/markers.md): (PORT, its detection), or None when the body is not one."""
    head, colon, detail = body.partition(": ")
    words = head.split()
    if not colon or len(words) != 2 or words[0] != "receiver" or words[1][:4] != "udp:":
        return None
    port = words[1][4:]
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return None
    det = parse_detection(detail.strip())
    return (int(port), det) if det.kind == "payload" else None
