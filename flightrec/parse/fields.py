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
    head, colon, detail = body.partition(": ")
    if not colon and body.endswith(":"):
        head = body[:-1]
    words = head.split()
    n = len(words)
    if n == 6 and words[4] == "->" and words[1].startswith("q:") and words[2].startswith("0x"):
        frm, to = words[3], words[5]
        if frm not in STATES or to not in STATES:
            return None
        try:
            queue = int(words[1][2:])
            addr = int(words[2], 16)
        except ValueError:
            return None
        return Marker(f"{words[0]} {words[1]}", queue, addr, frm, to, detail.strip() if colon else None)
    if n >= 2 and not colon and words[0].startswith("0x"):
        try:
            addr = int(words[0], 16)
        except ValueError:
            return None
        return Marker(None, None, addr, None, None, " ".join(words[1:]))
    return None


@dataclass(frozen=True)
class Detection:
    """What a detection line's detail says the application found."""

    kind: str  # "fill_order", "length", "invalid", "other"
    expected: Optional[int] = None
    remaining: tuple[int, ...] = ()
    remaining_cut: bool = False
    length: Optional[int] = None
    xdp_length: Optional[int] = None
    was: Optional[str] = None


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
    if words and words[0] == "invalid" and len(words) >= 3 and words[1] == "was":
        return Detection("invalid", was=words[2])
    return Detection("other")
