"""Flagged packets as pcapng, for Wireshark: the post's first step ("log the
packet bytes ... create a PCAP file to analyze with Wireshark").

The forwarder (``--flagged PATH``) writes one JSON object a line for every
packet it flags::

    {"t_ns": 1764043200123456789, "mono_ns": 81234567890, "sock": "inner q:0",
     "kind": "len_mismatch", "addr": "0x1100", "len": 50, "xdp_len": 66,
     "caplen": 50, "data": "<hex>", "line": "<the detection line>"}

This module only renders: :func:`read_flagged` parses that file and
:func:`pcapng_bytes` writes a pcapng section (SHB, one Ethernet IDB with
nanosecond timestamps, one EPB per packet whose ``opt_comment`` names the
descriptor address and the reason). A packet's original length is the
descriptor's ``len``: the packet as the application saw it, so Wireshark's
own checks (an IPv4 total length past the end) point at the damage.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

from flightrec import __version__, runfolder
from flightrec.errors import FlightrecError

LINKTYPE_ETHERNET = 1
SNAPLEN = 2048  # the forwarder's FLAGGED_SNAP
FLAGGED_NAME = runfolder.FLAGGED  # the forwarder's file, in DIR/logs/
PCAP_NAME = runfolder.PCAP  # what record writes beside trace.txt

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL, _IF_NAME, _IF_TSRESOL = 4, 2, 9

REASONS = {
    "len_mismatch": "descriptor len differs from the length XDP saw",
    "fill_order": "RX returned a descriptor out of FILL order",
    "poison": "RX returned the poison: a slot the kernel never wrote",
    "invalid_transition": "invalid descriptor state transition",
}


@dataclass(frozen=True)
class FlaggedPacket:
    """One packet the forwarder flagged, as it kept it."""

    t_ns: int  # CLOCK_REALTIME when flagged
    sock: str
    kind: str
    addr: int
    len: int  # the descriptor's len (0: the ring had none)
    xdp_len: int  # the length XDP saw (0: unknown)
    data: bytes  # the first bytes at addr, up to SNAPLEN
    line: str  # the detection line in the trace

    def comment(self) -> str:
        """The packet comment: descriptor address first, then the reason."""
        reason = REASONS.get(self.kind, self.kind)
        sizes = f"len {self.len}" + (f" xdp_len {self.xdp_len}" if self.xdp_len else "")
        text = f"flightrec: descriptor {self.addr:#x} on {self.sock}: {self.kind} ({reason}); {sizes}"
        if not self.data:
            text += "; no bytes kept (address outside the UMEM or no len)"
        return f"{text}; detection line: {self.line}" if self.line else text


def read_flagged(path: Union[str, Path]) -> list[FlaggedPacket]:
    """Parse the forwarder's ``--flagged`` file.

    :raises FlightrecError: unreadable, or a line that is not a flagged record.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FlightrecError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    packets = []
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            packets.append(
                FlaggedPacket(
                    t_ns=int(rec["t_ns"]),
                    sock=str(rec["sock"]),
                    kind=str(rec["kind"]),
                    addr=int(str(rec["addr"]), 16),
                    len=int(rec["len"]),
                    xdp_len=int(rec.get("xdp_len", 0)),
                    data=bytes.fromhex(rec.get("data", "")),
                    line=str(rec.get("line", "")),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise FlightrecError(
                f"{path}:{no}: not a flagged-packet record ({err.__class__.__name__}: {err})"
            ) from None
    return packets


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    # Block total length counts the two length fields and the type.
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    out = b"".join(_option(code, value) for code, value in opts)
    return out + struct.pack("<HH", _OPT_END, 0) if out else b""


def pcapng_bytes(packets: Iterable[FlaggedPacket], interface: str = "flightrec flagged") -> bytes:
    """One pcapng section holding ``packets`` (little-endian, ns timestamps)."""
    shb = _block(
        _SHB,
        struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
        + _options([(_SHB_USERAPPL, f"flightrec {__version__}".encode())]),
    )
    idb = _block(
        _IDB,
        struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN)
        + _options([(_IF_NAME, interface.encode()), (_IF_TSRESOL, bytes([9]))]),
    )
    out = [shb, idb]
    for p in packets:
        data = p.data[:SNAPLEN]
        # original length: the descriptor's len, never less than what was kept
        orig = max(p.len, len(data))
        body = struct.pack("<IIIII", 0, (p.t_ns >> 32) & 0xFFFFFFFF, p.t_ns & 0xFFFFFFFF, len(data), orig)
        body += data + b"\0" * (-len(data) % 4)
        body += _options([(_OPT_COMMENT, p.comment().encode("utf-8"))])
        out.append(_block(_EPB, body))
    return b"".join(out)


def write_pcapng(packets: list[FlaggedPacket], path: Union[str, Path]) -> int:
    """Write ``packets`` to ``path`` as pcapng; return how many.

    :raises FlightrecError: the file cannot be written.
    """
    path = Path(path)
    try:
        path.write_bytes(pcapng_bytes(packets))
    except OSError as err:
        raise FlightrecError(f"cannot write {path}: {err.strerror}") from None
    return len(packets)


def flagged_source(source: Union[str, Path]) -> Path:
    """The flagged file for ``source``: a record folder (its logs/flagged.jsonl)
    or the forwarder's file itself.

    :raises FlightrecError: neither exists.
    """
    path = Path(source)
    if path.is_dir():
        for candidate in (path / "logs" / FLAGGED_NAME, path / FLAGGED_NAME):
            if candidate.is_file():
                return candidate
        raise FlightrecError(
            f"{path} holds no {FLAGGED_NAME} (in logs/); record it with a forwarder "
            "that has --flagged (flightrec record does)"
        )
    if not path.is_file():
        raise FlightrecError(f"{path}: no such file or folder")
    return path
