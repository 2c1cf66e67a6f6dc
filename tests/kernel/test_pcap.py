"""`flightrec record --inject short-len`: the XDP length check catches the
shortened descriptor and DIR/flagged.pcap holds that packet, which tshark
reads back with the comment and Wireshark's own verdict on its IPv4 header.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from recordkit import run, skip_unless_can_record, snapshot

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def tshark_v(path: Path) -> str:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (apt-get install -y tshark): cannot read flagged.pcap back")
    proc = subprocess.run(
        [tshark, "-r", str(path), "-V"], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"}
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_short_len_is_caught_and_flagged_pcap_reads_back(tmp_path: Path) -> None:
    skip_unless_can_record()
    before = snapshot()
    out = tmp_path / "short"
    proc = run("record", "-o", str(out), "--duration", "10", "--inject", "short-len", "--plain", timeout=120)
    assert snapshot() == before
    assert proc.returncode == 1, proc.stdout + proc.stderr

    meta = json.loads((out / "meta.json").read_text())
    (anomaly,) = meta["forwarder"]["anomalies"]
    assert anomaly["kind"] == "len_mismatch" and anomaly["tracing_stopped"] is True
    length, xdp_len = anomaly["len"], anomaly["xdp_len"]
    assert 0 < xdp_len - length <= 16, anomaly
    # The trace ends with the forwarder's own detection line (docs/markers.md).
    last = [ln for ln in (out / "trace.txt").read_text().splitlines() if "tracing_mark_write:" in ln][-1]
    detection = f"{anomaly['sock']} {anomaly['addr']} FILL -> RX: len {length} xdp_len {xdp_len}"
    assert last.endswith("tracing_mark_write: " + detection), last
    assert meta["forwarder"]["flagged"]["packets"] == 1
    assert "flagged packets: 1 in" in proc.stdout
    # With kernel reserve events (len = xdp_len) the analyzer blames the application.
    if meta["kernel_events"]["backend"] in ("bpf", "kprobes"):
        assert "verdict: application (length_mismatch" in proc.stdout, proc.stdout

    text = tshark_v(out / "flagged.pcap")
    frames = re.split(r"(?m)^(?=Frame \d+: )", text)[1:]
    assert len(frames) == 1, text[:2000]
    assert frames[0].startswith(f"Frame 1: {length} bytes on wire")
    assert "Packet comments" in text
    assert f"descriptor {anomaly['addr']} on {anomaly['sock']}: len_mismatch" in text
    assert f"len {length} xdp_len {xdp_len}" in text
    assert "Internet Protocol Version 4" in frames[0]
    assert "IPv4 total length exceeds packet length" in frames[0]

    # export pcap converts the same recording again, from its folder.
    again = tmp_path / "again.pcapng"
    conv = run("export", "pcap", str(out), "-o", str(again))
    assert conv.returncode == 0, conv.stderr
    assert again.read_bytes() == (out / "flagged.pcap").read_bytes()
    assert "1 flagged packet (len_mismatch)" in conv.stderr


def test_forwarder_unwritable_flagged_path_is_one_line_exit_2(tmp_path: Path) -> None:
    from flightrec.record.forwarder import forwarder_missing, forwarder_path

    why = forwarder_missing()
    if why:
        pytest.skip(why)
    proc = subprocess.run(
        [
            str(forwarder_path()),
            "--outer",
            "-:a",
            "--inner",
            "-:b",
            "--flagged",
            str(tmp_path / "missing" / "flagged.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("forwarder: cannot create --flagged ") and len(proc.stderr.splitlines()) == 1
