"""Event bodies: kprobe `name=value` fields and the marker grammar (docs/markers.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

STATES = frozenset(("FREE", "FILL", "RX", "TX", "COMP"))


@dataclass(frozen=True)
class Marker:
    """One trace_marker line of the grammar in docs/markers.md."""

    sock: Optional[str]  # "ingress q:1"; None for note lines
    queue: Optional[int]
    addr: int
    frm: Optional[str]  # None for note lines
    to: Optional[str]
    detail: Optional[str]  # text after "FROM -> TO: ", or a note's words


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


def parse_kprobe_fields(body: str) -> dict[str, str]:
    """`(sym+0x9b/0x250) addr=0x16ce900 len=0x4e` → {"addr": "0x16ce900", "len": "0x4e"}.

    The `(symbol+off/size)` or `(ffffffff81234567)` prefix is dropped: it differs
    between kernels and between ftrace and trace-cmd.
    """
    out = {}
    for word in body.split():
        name, eq, value = word.partition("=")
        if eq:
            out[name] = value
    return out


def parse_marker(body: str) -> Optional[Marker]:
    """Parse one marker body; None when it is not of the grammar.

    >>> parse_marker("ingress q:1 0x16ce900 FILL -> RX").to
    'RX'
    """
    t = marker_tuple(body)
    return None if t is None else Marker(*t)


def marker_tuple(body: str) -> Optional[tuple]:
    """`parse_marker` as a plain tuple (sock, queue, addr, frm, to, detail):
    the timeline calls it once per line, where a dataclass would cost."""
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


@dataclass(frozen=True)
class PayloadFinding:
    """A stamped payload that is not what its stamp says (bpf/stamp.h): at byte
    `offset` of a `length`-byte UDP payload whose header claims packet
    `expected`, the data of packet `found` (None: unknown, `?` in the line)."""

    expected: Optional[int]
    found: Optional[int]
    offset: int
    length: int
    stamped: Optional[int]  # the length the payload was stamped with


@dataclass(frozen=True)
class Detection:
    """What a detection line's detail says the application found."""

    kind: str  # "fill_order", "poison", "length", "invalid", "payload", "other"
    expected: Optional[int] = None
    remaining: tuple[int, ...] = ()
    remaining_cut: bool = False
    length: Optional[int] = None
    xdp_length: Optional[int] = None
    was: Optional[str] = None
    payload: Optional[PayloadFinding] = None


def parse_detection(detail: str) -> Detection:
    """Read the detail of a detection line (see docs/markers.md)."""
    words = detail.replace(",", " ").replace("[", " ").replace("]", " ").split()
    if words and words[0] == "expected" and len(words) >= 2:
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
    if words and words[0] == "len" and len(words) >= 4 and words[2] == "xdp_len":
        try:
            return Detection("length", length=int(words[1]), xdp_length=int(words[3]))
        except ValueError:
            return Detection("other")
    if words == ["poison"]:
        return Detection("poison")
    if words and words[0] == "payload":
        return _payload(words)
    if words and words[0] == "invalid" and len(words) >= 3 and words[1] == "was":
        return Detection("invalid", was=words[2])
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
