"""The pcapng writer of flagged packets: block layout, comments, read back by tshark."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.report.pcap import FlaggedPacket, pcapng_bytes, read_flagged, write_pcapng


def ipv4_udp(total_len: int, payload: bytes) -> bytes:
    """Ethernet + IPv4 (total length as given, checksum left 0) + UDP + payload."""
    eth = bytes.fromhex("0200000000020200000000010800")
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total_len, 1, 0x4000, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0)
    return eth + ip + udp + payload


FULL = ipv4_udp(20 + 8 + 24, bytes(range(24)))  # 66 bytes, consistent
SHORT = FULL[:50]  # the descriptor's len cut by 16: IPv4 says 52, 36 left


def packets() -> list[FlaggedPacket]:
    return [
        FlaggedPacket(
            t_ns=1_700_000_000_123_456_789,
            sock="inner q:0",
            kind="len_mismatch",
            addr=0x2E8100,
            len=len(SHORT),
            xdp_len=len(FULL),
            data=SHORT,
            line="inner q:0 0x2e8100 FILL -> RX: len 50 xdp_len 66",
        ),
        FlaggedPacket(
            t_ns=1_700_000_000_223_456_789,
            sock="outer q:1",
            kind="fill_order",
            addr=0xB00100,
            len=len(FULL),
            xdp_len=0,
            data=FULL,
            line="outer q:1 0xb00100 FILL -> RX: expected 0xb01100 remaining: [b02100]",
        ),
        FlaggedPacket(
            t_ns=1_700_000_000_323_456_789,
            sock="outer q:0",
            kind="poison",
            addr=0xDEADBEEFDEADBEEF,
            len=60,
            xdp_len=0,
            data=b"",
            line="outer q:0 0xdeadbeefdeadbeef ...",
        ),
    ]


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every block; checks both length fields agree."""
    out, off = [], 0
    while off < len(data):
        kind, total = struct.unpack_from("<II", data, off)
        assert total % 4 == 0 and total >= 12
        assert struct.unpack_from("<I", data, off + total - 4)[0] == total
        out.append((kind, data[off + 8 : off + total - 4]))
        off += total
    assert off == len(data)
    return out


def options(body: bytes) -> dict[int, bytes]:
    found, off = {}, 0
    while off < len(body):
        code, length = struct.unpack_from("<HH", body, off)
        if code == 0:
            break
        found[code] = body[off + 4 : off + 4 + length]
        off += 4 + length + (-length % 4)
    return found


def test_layout_shb_idb_and_one_epb_per_packet() -> None:
    data = pcapng_bytes(packets())
    kinds = [k for k, _ in blocks(data)]
    assert kinds == [0x0A0D0D0A, 1, 6, 6, 6]
    shb, idb = blocks(data)[0][1], blocks(data)[1][1]
    assert struct.unpack_from("<IHH", shb) == (0x1A2B3C4D, 1, 0)
    linktype, _, snaplen = struct.unpack_from("<HHI", idb)
    assert linktype == 1 and snaplen == 2048
    assert options(idb[8:])[9] == bytes([9])  # if_tsresol: nanoseconds


def test_epb_holds_bytes_lengths_time_and_comment() -> None:
    epbs = [body for kind, body in blocks(pcapng_bytes(packets())) if kind == 6]
    iface, hi, lo, caplen, origlen = struct.unpack_from("<IIIII", epbs[0])
    assert iface == 0 and (hi << 32 | lo) == 1_700_000_000_123_456_789
    assert (caplen, origlen) == (50, 50)  # the packet as the descriptor's len says
    assert epbs[0][20 : 20 + caplen] == SHORT
    comment = options(epbs[0][20 + caplen + (-caplen % 4) :])[1].decode()
    assert "0x2e8100" in comment and "len_mismatch" in comment and "xdp_len 66" in comment
    # The poisoned read kept no bytes, and its comment says so.
    caplen, origlen = struct.unpack_from("<II", epbs[2], 12)
    assert (caplen, origlen) == (0, 60)
    assert "no bytes kept" in options(epbs[2][20:])[1].decode()


def test_read_flagged_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "flagged.jsonl"
    path.write_text(
        json.dumps(
            {
                "t_ns": 5,
                "mono_ns": 1,
                "sock": "inner q:0",
                "kind": "len_mismatch",
                "addr": "0x2e8100",
                "len": 50,
                "xdp_len": 66,
                "caplen": 50,
                "data": SHORT.hex(),
                "line": "inner q:0 0x2e8100 FILL -> RX: len 50 xdp_len 66",
            }
        )
        + "\n"
    )
    (p,) = read_flagged(path)
    assert p.addr == 0x2E8100 and p.data == SHORT and p.xdp_len == 66 and p.t_ns == 5


def test_read_flagged_bad_line_names_it(tmp_path: Path) -> None:
    path = tmp_path / "flagged.jsonl"
    path.write_text('{"t_ns": 1, "sock": "x"}\n')
    with pytest.raises(FlightrecError, match=r"flagged.jsonl:1: not a flagged-packet record"):
        read_flagged(path)


def test_export_pcap_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "flagged.jsonl"
    bad.write_text("not json\n")
    for source in (str(bad), str(tmp_path / "missing"), str(tmp_path)):
        proc = subprocess.run(
            [sys.executable, "-m", "flightrec", "export", "pcap", source, "-o", str(tmp_path / "o.pcapng")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("flightrec: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_tshark_reads_it_back(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (apt-get install -y tshark): cannot read the pcapng back")
    path = tmp_path / "flagged.pcapng"
    assert write_pcapng(packets(), path) == 3
    # TZ=UTC: tshark prints arrival times in local time
    proc = subprocess.run(
        [tshark, "-r", str(path), "-V"], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"}
    )
    assert proc.returncode == 0, proc.stderr
    # One piece per frame ("Frame N: ..." starts each dissection).
    frames = re.split(r"(?m)^(?=Frame \d+: )", proc.stdout)[1:]
    assert len(frames) == 3
    assert "Packet comments" in proc.stdout
    assert "descriptor 0x2e8100 on inner q:0: len_mismatch" in proc.stdout
    assert frames[0].startswith("Frame 1: 50 bytes on wire")
    assert "Arrival Time: Nov 14, 2023 22:13:20.123456789 UTC" in frames[0]
    # Wireshark's own check, on the shortened packet only.
    assert "IPv4 total length exceeds packet length (36 bytes)" in frames[0]
    assert "exceeds packet length" not in frames[1] and "Src: 10.0.0.1" in frames[1]
