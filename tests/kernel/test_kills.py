"""Kills: a helper that dies mid-run is noticed at once and ends the run with
its trace saved; two recordings started together do not mix.

Real recordings: namespaces, veth, XDP, AF_XDP, tracefs, the BPF backend.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flightrec import tracefs
from flightrec.record import kernel_events

from recordkit import TimedLines, registry, start, wait_forwarding

pytestmark = [pytest.mark.kernel]

BPF_LINE = re.compile(r"\s(\d+\.\d+): bpf_trace_printk: flightrec ")


def bpf_or_skip() -> None:
    why = kernel_events.bpf_unavailable(tracefs.ensure_mounted())
    if why:
        pytest.skip(f"BPF backend unavailable here: {why}")


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def record_and_kill(out: Path, what: str, sig: int, after: float, *extra: str):
    """Record 8 s, send ``sig`` to the helper ``what`` ``after`` s into the traffic;
    return (flightrec's exit code, stdout lines, stderr, kill time)."""
    proc = start("record", "-o", str(out), "--duration", "8", "--plain", *extra)
    lines = TimedLines(proc.stdout)
    reg = wait_forwarding(proc)
    pid = next(p["pid"] for p in reg["processes"] if p["what"] == what)
    time.sleep(after)
    t_kill = time.monotonic()
    os.kill(pid, sig)
    stderr = proc.stderr.read()
    code = proc.wait(timeout=60)
    lines.thread.join(5)
    return code, lines, stderr, t_kill


def test_trace_clock_is_clock_monotonic(whole_machine):
    """The instance's mono clock gives CLOCK_MONOTONIC's numbers: a marker
    written between two time.monotonic() readings carries a time between them."""
    with tracefs.TraceInstance() as inst:
        if inst.set_clock() != "mono":
            pytest.skip("this kernel offers no mono trace clock")
        inst.start()
        stamps = []
        for i in range(20):
            before = time.monotonic()
            with open(inst.file("trace_marker"), "w") as marker:
                marker.write(f"clock-check {i}\n")
            after = time.monotonic()
            stamps.append((before, after))
        text = inst.read("trace")
    found = {
        int(m.group(2)): float(m.group(1))
        for m in re.finditer(
            r"\s(\d+\.\d+): tracing_mark_write: "
            r"clock-check (\d+)",
            text,
        )
    }
    assert len(found) == 20, text[-500:]
    for i, (before, after) in enumerate(stamps):
        # The trace prints microseconds: allow for its rounding.
        assert before - 1e-6 <= found[i] <= after + 1e-6, (i, before, found[i], after)


def test_xsk_trace_killed_is_noticed_at_once_and_ends_the_run(whole_machine, tmp_path):
    bpf_or_skip()
    out = tmp_path / "xsk"
    code, lines, stderr, t_kill = record_and_kill(out, "xsk_trace", signal.SIGKILL, 2.0, "--kernel-events", "bpf")
    assert code == 2, lines.text() + stderr
    # Said within a second, and the run stopped there (not at the end of its 8 s).
    said = lines.first_after(t_kill, "ERROR xsk_trace")
    assert said is not None and said - t_kill < 1.0, lines.text()
    ended = lines.first_after(t_kill, "saving the trace")
    assert ended is not None and ended - t_kill < 2.0, lines.text()
    # One line on stderr naming what died and how; nothing asks for cleanup.
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "xsk_trace" in stderr and "killed by SIGKILL" in stderr
    assert "cleanup" not in stderr + lines.text()
    m = meta(out)
    assert m["outcome"] == "helper-died" and m["exit_code"] == 2
    assert m["died"]["what"] == "xsk_trace" and m["died"]["code"] == -signal.SIGKILL
    # ended_at is on the trace clock (mono: CLOCK_MONOTONIC, this process's clock too).
    ke = m["kernel_events"]
    assert m["trace"]["clock"] == "mono" and m["trace"]["clock_offset_s"] == 0.0, m["trace"]
    assert t_kill <= ke["ended_at"] < t_kill + 1.0, (ke["ended_at"], t_kill)
    assert ke["ended_by"] == "xsk_trace killed by SIGKILL"
    # The trace ends the kernel events there: none after ended_at, some before.
    text = (out / "trace.txt").read_text()
    stamps = [float(x) for x in BPF_LINE.findall(text)]
    assert stamps and max(stamps) <= ke["ended_at"], (stamps[-1:], ke["ended_at"], m["trace"]["per_cpu"])
    # Frozen at the death, not when the loop came round: the markers that go on
    # alone would overwrite the kernel events within a tenth of a second.
    last = max(float(x) for x in re.findall(r"\s(\d+\.\d+): ", text))
    assert last < ke["ended_at"] + 0.1, (last, ke["ended_at"])
    assert m["trace"]["tracing_on_at_stop"] is False
    # Saved and analyzed as on an anomaly.
    assert (out / "analysis.json").is_file()
    assert "verdict: " in lines.text()
    assert registry() is None


@pytest.mark.parametrize(
    "what,sig",
    [("forwarder", signal.SIGKILL), ("iperf3-client-tcp", signal.SIGTERM), ("iperf3-server-udp", signal.SIGKILL)],
)
def test_other_helpers_killed_end_the_run_at_once(whole_machine, tmp_path, what, sig):
    out = tmp_path / what
    code, lines, stderr, t_kill = record_and_kill(out, what, sig, 1.5, "--kernel-events", "none")
    assert code == 2, lines.text() + stderr
    said = lines.first_after(t_kill, "ERROR ")
    assert said is not None and said - t_kill < 1.0, lines.text()
    assert len(stderr.strip().splitlines()) == 1, stderr
    name = {
        "forwarder": "the forwarder",
        "iperf3-client-tcp": "iperf3 tcp client",
        "iperf3-server-udp": "iperf3 udp server",
    }[what]
    assert stderr.startswith(f"flightrec: {name} (pid "), stderr
    assert "cleanup" not in stderr + lines.text()
    m = meta(out)
    assert m["outcome"] == ("forwarder-died" if what == "forwarder" else "helper-died")
    assert m["died"]["what"] == what and m["died"]["seconds_into_recording"] < 8
    assert m["kernel_events"]["ended_at"] is None  # markers only: no kernel-event source to end
    assert (out / "trace.txt").stat().st_size > 0 and (out / "analysis.json").is_file()


def test_two_records_started_together(whole_machine, tmp_path):
    """Both at once: one records, the other refuses at once with one line, exit 2."""
    procs = [start("record", "-o", str(tmp_path / name), "--duration", "3", "--plain") for name in "ab"]
    t0 = time.monotonic()
    ended: dict[int, float] = {}
    while len(ended) < 2 and time.monotonic() - t0 < 90:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic() - t0
        time.sleep(0.05)
    results = [(p.returncode, *p.communicate(timeout=10)) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    winner, loser = (0, 1) if results[0][0] == 0 else (1, 0)
    err = results[loser][2]
    assert len(err.strip().splitlines()) == 1 and re.search(r"another flightrec \(pid \d+\) is recording", err), err
    # At once: the refusal comes before the other's first step is done, not after its run.
    assert ended[loser] < 10 and ended[loser] < ended[winner] - 2, ended
    assert not (tmp_path / "ab"[loser] / "trace.txt").exists()


def test_a_forwarder_that_dies_after_the_freeze_leaves_the_run_standing(whole_machine, tmp_path):
    """Stopped (SIGSTOP) once record starts saving, the forwarder ignores record's
    SIGINT and SIGTERM and dies by its SIGKILL: the trace was frozen before, so
    the clean run stands, said with a warning, its real exit code in meta.json."""
    out = tmp_path / "stuck"
    proc = start("record", "-o", str(out), "--duration", "3", "--plain", "--kernel-events", "none")
    lines = TimedLines(proc.stdout)
    pid = next(p["pid"] for p in wait_forwarding(proc)["processes"] if p["what"] == "forwarder")
    assert lines.wait_for("saving the trace", 60) is not None, lines.text()
    os.kill(pid, signal.SIGSTOP)
    stderr = proc.stderr.read()
    code = proc.wait(timeout=60)
    lines.thread.join(5)
    assert code == 0, lines.text() + stderr
    assert "forwarder killed by SIGKILL while being stopped, after the trace was frozen" in lines.text()
    m = meta(out)
    assert m["outcome"] == "clean" and m["died"] is None
    assert m["forwarder"]["exit_code"] == -signal.SIGKILL


def test_an_iperf3_that_gives_up_by_itself_is_a_warning_not_a_death(whole_machine, tmp_path):
    """The UDP client's control connection destroyed (`ss -K`, as a failing
    control connection in a loaded TCG guest ends it): no signal, no
    interrupt, so the recording goes on with the TCP and stamped traffic,
    says so once, and ends clean after its whole duration.

    The server's end is destroyed too: the reset the client's end sends
    crosses the forwarder, which may drop it under load (a landing CI run
    saw the server wait out the recording), and then the server would not
    know its client is gone. Whichever end goes first, both give up."""
    out = tmp_path / "gave-up"
    proc = start("record", "-o", str(out), "--duration", "8", "--plain", "--kernel-events", "none")
    lines = TimedLines(proc.stdout)
    reg = wait_forwarding(proc)
    client_ns = next(n for n in reg["netns"] if n.endswith("-client"))
    server_ns = next(n for n in reg["netns"] if n.endswith("-server"))
    time.sleep(1.0)
    t_cut = time.monotonic()
    killed = [
        subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-K", "-t", side, "=", ":5202"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        for ns, side in ((client_ns, "dport"), (server_ns, "sport"))
    ]
    assert all(k.returncode == 0 for k in killed) and ":5202" in killed[0].stdout, killed
    stderr = proc.stderr.read()
    code = proc.wait(timeout=60)
    lines.thread.join(5)
    assert code == 0, lines.text() + stderr
    said = lines.first_after(t_cut, "warning: iperf3 udp client")
    assert said is not None and said - t_cut < 1.0, lines.text()
    # The client, and its server that lost it; each said once and kept in meta.json.
    warnings = [ln.split("warning: ", 1)[1] for ln in lines.text().splitlines() if "warning: iperf3 udp" in ln]
    # which of the two the watch reports first is a race between their exits
    assert sorted(w.split(" (pid ")[0] for w in warnings) == ["iperf3 udp client", "iperf3 udp server"], warnings
    assert all("gave up (" in w and w.endswith("the traffic left: tcp, stamp") for w in warnings), warnings
    m = meta(out)
    assert m["outcome"] != "helper-died" and m["died"] is None, m["died"]
    assert m["gave_up"] == warnings, m["gave_up"]
    assert m["forwarder"]["forwarding_seconds"] >= 7.5, m["forwarder"]
