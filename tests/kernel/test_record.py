"""`flightrec record` end to end: real namespaces, veth, XDP, AF_XDP and tracefs.

Each test runs the real CLI as a subprocess and checks that the machine is
exactly as before afterwards (namespaces, links, tracefs instances, the
top-level tracing settings).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from flightrec.parse.fields import parse_markers

from recordkit import forwarder_pid, interrupt, run, start, wait_forwarding

pytestmark = [pytest.mark.kernel]


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


@pytest.mark.slow
def test_clean_run_forwards_real_traffic(machine, tmp_path):
    out = tmp_path / "clean"
    proc = run("record", "-o", str(out), "--duration", "20", "--plain", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = meta(out)
    assert m["outcome"] == "clean"
    assert m["forwarder"]["exit_code"] == 0
    assert m["forwarder"]["forwarding_seconds"] >= 19
    assert m["trace"]["clock"] in ("mono", "global")
    assert m["trace"]["fill_to_rx_markers"] >= 1000
    assert m["trace"]["per_cpu"], "per-CPU buffer stats missing"
    # The markers counted from the saved file, not from meta.json: one line per ring
    # operation (the default), every descriptor of it in the line.
    assert m["trace"]["markers"] == "batched"
    lines = [
        line.split("tracing_mark_write: ", 1)[1]
        for line in (out / "trace.txt").read_text().splitlines()
        if "tracing_mark_write: " in line
    ]
    moves = [(e[3], e[4]) for line in lines for e in (parse_markers(line) or ())]
    assert moves.count(("FILL", "RX")) >= 1000 and len(moves) > 4 * len(lines)
    assert {("RX", "TX"), ("TX", "COMP"), ("COMP", "FILL")} <= set(moves)
    # Real traffic went through the forwarder, both ways and on both queues.
    tcp = next(t for t in m["traffic"] if t["name"] == "tcp")
    assert tcp["exit_code"] == 0 and tcp["received_bps"] > 1e7, tcp
    rx = m["forwarder"]["last_stats"]["rx"]
    assert all(n > 0 for n in rx), f"an XSK saw no packets: {rx}"
    # The stamped flows went through, checked by the forwarder and the receiver, intact.
    stamp = next(t for t in m["traffic"] if t["name"] == "stamp")
    assert stamp["exit_code"] == 0 and stamp["corrupt"] == 0 and stamp["packets_received"] > 10000, stamp
    assert sum(p["payload_checked"] for p in m["forwarder"]["stats_file"]["ports"]) > 10000
    assert m["kernel_events"]["backend"] in ("kprobes", "bpf", "none")
    assert m["kernel_events"]["reason"]
    assert "verdict: clean" in proc.stdout
    # iperf3 keeps no per-second reports (with -J they pile up in its memory over an hours-long run)
    for log in sorted((out / "logs").glob("iperf3-*.json")):
        assert len(json.loads(log.read_text()).get("intervals", [])) <= 1, log.name


def record_fault(out: Path, fault: str, form: str) -> dict:
    """`flightrec record --inject FAULT --markers FORM`: its meta.json, after the run's own checks."""
    # On the default buffer: record shrinks the UMEM for injected runs, so the
    # duplicate comes back out of FILL while its first insertion is still in
    # the buffer, and the analyzer can prove who did it.
    proc = run(
        "record", "-o", str(out), "--duration", "10", "--inject", fault, "--markers", form, "--plain", timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = meta(out)
    assert m["trace"]["markers"] == form and m["options"]["markers"] == form
    return m


@pytest.mark.parametrize("form", ["batched", "per-descriptor"])
@pytest.mark.parametrize("fault", ["double-fill", "fill-and-tx", "reuse-in-flight"])
def test_inject_is_caught(machine, tmp_path, fault, form):
    out = tmp_path / fault
    m = record_fault(out, fault, form)
    assert m["outcome"] == "anomaly"
    assert m["forwarder"]["exit_code"] == 3
    assert m["forwarder"]["anomalies"], "no anomaly event from the forwarder"
    assert m["trace"]["tracing_on_at_stop"] is False, "tracing still on after the anomaly"
    lines = (out / "trace.txt").read_text().splitlines()
    # fill-and-tx: the kernel receives into the frame while it waits for TX; with
    # the stamped flows' varied lengths the second packet's XDP length often
    # differs from the first's descriptor, and the length check fires first.
    detection = [
        line for line in lines if "FILL -> RX: expected" in line or ": invalid, was" in line or " xdp_len " in line
    ]
    assert detection, "detection line missing from the saved trace"
    # Tracing stopped right at the detection line: at most a few markers of
    # the other CPU's thread, written in the same microseconds, come after it.
    markers = [line for line in lines if "tracing_mark_write:" in line]
    assert detection[-1] in markers[-10:]
    # record ran the analyzer on the saved trace: the application did it, to
    # the descriptor the forwarder named.
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["verdict"] == "application", analysis["anomalies"][:1]
    assert analysis["anomalies"][0]["addr"] == m["forwarder"]["anomalies"][0]["addr"]
    if fault == "reuse-in-flight":
        # the frame went back to FILL with no COMPLETION entry read: the markers prove it
        assert analysis["anomalies"][0]["kind"] == "reuse_before_completion", analysis["anomalies"][:1]


def test_flipped_payload_is_caught_by_the_receiver(machine, tmp_path):
    """--inject flip-payload: the forwarder corrupts a stamped packet after its own
    check; stamp recv catches it, writes its line, stops tracing, and the run ends
    as an anomaly tied to the frame."""
    out = tmp_path / "flip"
    proc = run("record", "-o", str(out), "--duration", "10", "--inject", "flip-payload", "--plain", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = meta(out)
    assert m["outcome"] == "anomaly" and m["trace"]["stopped_by"] == "receiver"
    assert m["trace"]["tracing_on_at_stop"] is False
    flipped = m["forwarder"]["stats_file"]["flipped"]
    stamp = next(t for t in m["traffic"] if t["name"] == "stamp")
    assert stamp["corrupt"] == 1 and len(flipped) == 1, stamp
    lines = [line for line in (out / "trace.txt").read_text().splitlines() if "tracing_mark_write:" in line]
    assert f"receiver udp:5203: payload expected {flipped[0]} " in lines[-1] or any(
        f"payload expected {flipped[0]} " in line for line in lines[-10:]
    )
    analysis = json.loads((out / "analysis.json").read_text())
    [a] = [x for x in analysis["anomalies"] if x["kind"] == "payload_corrupt"]
    assert a["addr"] is not None and a["sock"].startswith("inner q:"), a


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_and_cleans(machine, tmp_path, sig):
    out = tmp_path / "sig"
    proc = start("record", "-o", str(out), "--duration", "30", "--plain")
    wait_forwarding(proc)
    time.sleep(1)
    stdout, stderr = interrupt(proc, sig)
    assert proc.returncode == 128 + sig, stdout + stderr
    assert "interrupted" in stderr
    assert (out / "trace.txt").stat().st_size > 0
    assert meta(out)["outcome"] == "interrupted"


def test_forwarder_killed(machine, tmp_path):
    out = tmp_path / "kill9"
    proc = start("record", "-o", str(out), "--duration", "30", "--plain")
    reg = wait_forwarding(proc)
    time.sleep(1)
    os.kill(forwarder_pid(reg), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2, stdout + stderr
    assert "SIGKILL" in stderr
    m = meta(out)
    assert m["outcome"] == "forwarder-died"
    assert m["forwarder"]["exit_code"] == -signal.SIGKILL


def test_second_record_is_refused(machine, tmp_path):
    first = start("record", "-o", str(tmp_path / "a"), "--duration", "30", "--plain")
    reg = wait_forwarding(first)
    second = run("record", "-o", str(tmp_path / "b"), "--duration", "5", "--plain", timeout=30)
    interrupt(first)
    assert second.returncode == 2
    assert f"another flightrec (pid {reg['pid']}) is recording" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_doctor_says_record_can_run(machine):
    proc = run("doctor", timeout=60)
    assert proc.returncode == 0, proc.stdout
    names = [line.split()[0] for line in proc.stdout.splitlines()[:-1]]
    for name in (
        "root",
        "tracefs",
        "kprobes",
        "BTF",
        "AF_XDP",
        "veth",
        "netns",
        "bpffs",
        "perf",
        "clang",
        "libxdp",
        "forwarder",
        "iperf3",
    ):
        assert name in names
    # `make` built the C helpers: the tests' traces are read by them
    assert re.search(
        r"^C helpers +ok +analyzer scanner, replay walk, trips walk and export printer in use \(\S+/_scan[^,]*\.so, "
        r"\S+/_replay[^,]*\.so, \S+/_trips[^,]*\.so, \S+/_bulk[^)]*\.so\)$",
        proc.stdout,
        re.M,
    ), proc.stdout
    assert proc.stdout.strip().endswith("record can run")


@pytest.mark.parametrize(
    "args", [["--queues", "0"], ["--duration", "-1"], ["--inject", "bogus"], ["--kernel-events", "magic"], ["-b", "1"]]
)
def test_bad_options_exit_2_without_traceback(tmp_path, args):
    proc = run("record", "-o", str(tmp_path / "x"), *args, timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_kernel_events_backend_says_why(tmp_path):
    from flightrec import tracefs
    from flightrec.errors import FlightrecError
    from flightrec.record.kernel_events import choose_backend

    root = tracefs.find_root()
    if root is None:
        pytest.skip("tracefs not mounted")
    if (root / "kprobe_events").exists():
        assert choose_backend("auto", root).backend in ("kprobes", "bpf", "none")
        return
    # No kprobes: auto falls back to the BPF tracepoint backend where it
    # loads, and to markers alone (naming what is missing) where it does not.
    choice = choose_backend("auto", root)
    assert choice.backend in ("bpf", "none")
    assert "kprobe_events" in choice.reason
    if choice.backend == "none":
        assert {m.split()[0] for m in choice.missing} == {"rx_reserve", "flush", "tx_get_data"}
    else:
        assert choice.missing == ()
    with pytest.raises(FlightrecError, match="--kernel-events kprobes"):
        choose_backend("kprobes", root)
    proc = run("record", "-o", str(tmp_path / "k"), "--kernel-events", "kprobes", timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "k").exists()


def test_an_injected_fault_gets_the_same_verdict_in_both_marker_forms(machine, tmp_path):
    """Two recordings of the same injected bug, one trace_marker line per ring operation and
    one per descriptor: the analysis of each names the same kind of anomaly, the same
    verdict and the descriptor its forwarder caught."""
    got = {}
    for form in ("batched", "per-descriptor"):
        out = tmp_path / form
        m = record_fault(out, "double-fill", form)
        lines = [
            line.split("tracing_mark_write: ", 1)[1]
            for line in (out / "trace.txt").read_text().splitlines()
            if "tracing_mark_write: " in line
        ]
        sizes = [len(parse_markers(line) or ()) for line in lines]
        # batched lines in the one, none in the other
        assert (max(sizes) > 1) == (form == "batched"), form
        first = json.loads((out / "analysis.json").read_text())["anomalies"][0]
        assert first["addr"] == m["forwarder"]["anomalies"][0]["addr"], (form, first)
        got[form] = (first["kind"], first["verdict"], first["sock"].split()[0])
    assert got["batched"] == got["per-descriptor"] and got["batched"][1] == "application", got
