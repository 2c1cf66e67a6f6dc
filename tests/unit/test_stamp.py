"""c/stamp over loopback: the payload format, held to an independent Python
writer and reader, and the receiver's detection line for each kind of damage."""

import json
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from flightrec.parse.fields import PayloadFinding, parse_receiver_line
from flightrec.record.traffic import stamp_path

MAGIC = 0x50524C46


def stamp(pkt: int, length: int) -> bytes:
    """c/stamp/stamp.h's layout, written from its comment."""
    words = [MAGIC, pkt, length] + [((pkt << 12) | (i & 0xFFF)) & 0xFFFFFFFF for i in range(3, length // 4 + 1)]
    return struct.pack(f"<{len(words)}I", *words)[:length]


def intact(data: bytes) -> bool:
    return len(data) >= 16 and data == stamp(struct.unpack_from("<I", data, 4)[0], len(data))


@pytest.fixture
def stamp_bin() -> Path:
    path = stamp_path()
    if not path.exists():
        pytest.skip(f"{path} not built (make build)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_receiver(stamp_bin: Path, tmp_path: Path, datagrams: list[bytes], keep_going: bool = True):
    """Send datagrams to a `stamp recv` on loopback; its stats, its trace_marker text and its exit code.
    The trace dir is a plain folder: the receiver only opens its two files for writing."""
    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "trace_marker").write_text("")
    (trace / "tracing_on").write_text("1")
    port = free_port()
    stats = tmp_path / "recv.json"
    argv = [
        str(stamp_bin),
        "recv",
        "--bind",
        f"127.0.0.1:{port}",
        "--trace-dir",
        str(trace),
        "--duration",
        "3",
        "--stats",
        str(stats),
    ] + (["--keep-going"] if keep_going else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and '"ready"' in proc.stdout.readline()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            time.sleep(0.001)  # loopback drops a burst into a busy receiver
    proc.wait(timeout=10)
    marker, tracing_on = (trace / "trace_marker").read_text(), (trace / "tracing_on").read_text()
    return json.loads(stats.read_text()), marker, tracing_on, proc.returncode


def finding(marker: str) -> PayloadFinding:
    parsed = parse_receiver_line(marker)
    assert parsed is not None, marker
    return parsed[1].payload


def test_clean_stamps_pass(stamp_bin, tmp_path):
    stats, marker, on, code = run_receiver(stamp_bin, tmp_path, [stamp(n, 16 + n * 13) for n in range(100)])
    assert (stats["received"], stats["corrupt"], code, marker, on) == (100, 0, 0, "", "1")


def test_flipped_byte_is_caught_at_its_offset(stamp_bin, tmp_path):
    bad = bytearray(stamp(500, 900))
    bad[333] ^= 0x01
    stats, marker, on, code = run_receiver(stamp_bin, tmp_path, [stamp(499, 900), bytes(bad)], keep_going=False)
    assert code == 3 and on == "0"  # stopped tracing after the line
    assert finding(marker) == PayloadFinding(500, None, 333, 900, 900)
    assert stats["corrupt_pkts"] == [500]


def test_stale_body_names_the_packet_it_came_from(stamp_bin, tmp_path):
    old = bytearray(stamp(1000, 600))
    old[4:8] = struct.pack("<I", 1004)  # packet 1004's header over packet 1000's body
    stats, marker, _, code = run_receiver(stamp_bin, tmp_path, [bytes(old)])
    assert code == 3 and finding(marker) == PayloadFinding(1004, 1000, 13, 600, 600)


def test_short_and_unreadable_payloads(stamp_bin, tmp_path):
    short = stamp(7, 400)[:380]  # stamped 400, 380 arrive
    garbage = bytes(64)
    stats, marker, _, code = run_receiver(stamp_bin, tmp_path, [short, garbage])
    assert code == 3 and stats["corrupt"] == 2
    assert finding(marker) == PayloadFinding(7, 7, 380, 380, 400)
    assert stats["corrupt_pkts"] == [7, 2**32 - 1]  # the second one's number is unknown


def test_sender_payloads_are_the_documented_format(stamp_bin):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        port = s.getsockname()[1]
        out = subprocess.run(
            [
                str(stamp_bin),
                "send",
                "--to",
                f"127.0.0.1:{port}",
                "--rate",
                "2000",
                "--duration",
                "0.3",
                "--flows",
                "3",
                "--len",
                "16-1472",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert out.returncode == 0, out.stderr
        got = []
        s.settimeout(0.5)
        try:
            while True:
                got.append(s.recv(2048))
        except socket.timeout:
            pass
    assert len(got) > 100 and all(intact(d) for d in got)
    numbers = {struct.unpack_from("<I", d, 4)[0] for d in got}
    assert len(numbers) == len(got) and {n % 3 for n in numbers} == {0, 1, 2}  # unique over 3 flows
    assert min(len(d) for d in got) < 200 and max(len(d) for d in got) > 1300


def test_bad_options_say_one_line(stamp_bin):
    for argv in (["send"], ["recv", "--bind", "1.2.3.4"], ["send", "--to", "127.0.0.1:9", "--len", "8"], ["bogus"]):
        out = subprocess.run([str(stamp_bin), *argv], capture_output=True, text=True, timeout=10)
        assert out.returncode == 2, argv
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("stamp"), argv
