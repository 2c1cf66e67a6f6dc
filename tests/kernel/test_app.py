"""`flightrec record --app`: a program flightrec did not start as its forwarder
takes the forwarder's place, on real namespaces, veth, XDP and AF_XDP.

The program here is c/forwarder run as any program would be, through its
command line with the placeholders filled: with markers (every check),
without (kernel events only, and the analysis says which checks did not run),
and with a bug injected. Bad commands end in one line, exit 2, nothing left.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from flightrec.record import forwarder

from recordkit import registry, run, start

FWD = f"{forwarder.forwarder_path()} --outer -:{{outer}} --inner -:{{inner}} --queues {{queues}}"


def record_app(out: Path, app: str, *extra: str, duration: str = "6"):
    return run("record", "-o", str(out), "--duration", duration, "--plain", "--app", app, *extra, timeout=180)


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_the_forwarder_as_an_app_with_markers_runs_clean(whole_machine, tmp_path):
    out = tmp_path / "app"
    proc = record_app(out, f"{FWD} --trace-dir {{tracedir}} --stats {{out}}/app-stats.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: clean" in proc.stdout and "checks not run" not in proc.stdout, proc.stdout
    m = meta(out)
    assert m["outcome"] == "clean" and m["forwarder"] is None
    app = m["app"]
    # The placeholders were filled: both interfaces in one namespace, the instance's folder.
    assert app["argv"][1:5] == ["--outer", "-:outer", "--inner", "-:inner"], app["argv"]
    assert app["argv"][app["argv"].index("--trace-dir") + 1].endswith(f"/instances/{m['trace']['instance']}")
    assert app["netns"].endswith("-fwd") and app["xdp"] == {"outer": "xdp", "inner": "xdp"}, app
    assert app["forwarding_seconds"] >= 5.5
    # Its sockets, found through /proc and read back with XDP_OPTIONS: one per queue and side.
    socks = m["af_xdp"]["sockets"]
    assert len(socks) == 4 and {s["mode"] for s in socks} == {"copy"}, socks
    assert all(set(s["xdp_statistics"]) >= {"rx_dropped", "rx_fill_ring_empty_descs"} for s in socks), socks
    # The program's own files went where {out} said.
    assert (out / "app-stats.json").is_file()
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["stats"]["events"]["marker"] > 1000 and analysis["stats"]["checks_not_run"] == []


def test_a_bug_injected_in_the_app_is_the_application_s(whole_machine, tmp_path):
    out = tmp_path / "double"
    proc = record_app(out, f"{FWD} --trace-dir {{tracedir}} --inject double-fill --frames 1024")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verdict: application (duplicate_insertion" in proc.stdout, proc.stdout
    m = meta(out)
    # Its detection line stopped tracing, then it exited: its way to stop, not a death.
    assert m["outcome"] == "anomaly" and m["died"] is None, m["outcome"]
    assert m["app"]["exit_code"] == forwarder.EXIT_ANOMALY


def test_an_app_without_markers_is_analyzed_from_kernel_events_and_says_what_did_not_run(whole_machine, tmp_path):
    out = tmp_path / "bare"
    proc = record_app(out, f"{FWD} --no-markers", "--kernel-events", "bpf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no application markers: 6 checks not run; kernel events only" in proc.stdout, proc.stdout
    analysis = json.loads((out / "analysis.json").read_text())
    events = analysis["stats"]["events"]
    assert events["marker"] == 0 and events["reserve"] > 1000 and events["flush"] > 100, events
    assert {n["check"] for n in analysis["stats"]["checks_not_run"]} >= {"publish_race", "fill_order", "poison"}
    show = run("analyze", str(out / "trace.txt"))
    assert "no application markers in this trace: not run: publish_race" in " ".join(show.stdout.split())


@pytest.mark.parametrize(
    "app,extra,said",
    [
        ("false", (), "--app: false exited with code 1 before it attached XDP and opened an AF_XDP socket"),
        ("sleep 60", ("--app-ready-timeout", "2"), "--app: sleep attached no XDP program to outer or inner within 2 s"),
        ("/nonexistent/prog {outer}", (), "--app: /nonexistent/prog: no such program"),
        ('prog "unclosed', (), "--app: cannot split the command"),
    ],
)
def test_a_bad_app_is_one_line_and_exit_2(whole_machine, tmp_path, app, extra, said):
    t = time.monotonic()
    proc = record_app(tmp_path / "bad", app, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"flightrec: {said}"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert time.monotonic() - t < 60


def test_an_app_that_dies_ends_the_run_and_one_stopped_by_ctrl_c_leaves_nothing(whole_machine, tmp_path):
    # Killed by someone else mid-run: a death, said and saved like the forwarder's.
    proc = start(
        "record",
        "-o",
        str(tmp_path / "killed"),
        "--duration",
        "20",
        "--plain",
        "--app",
        f"{FWD} --trace-dir {{tracedir}}",
    )
    pid = _wait_for_app(proc)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.startswith("flightrec: the app (") and "killed by SIGKILL" in err, err
    assert meta(tmp_path / "killed")["outcome"] == "app-died"
    # Ctrl-C of flightrec: the app is stopped with the rest, the trace saved.
    proc = start(
        "record", "-o", str(tmp_path / "int"), "--duration", "20", "--plain", "--app", f"{FWD} --trace-dir {{tracedir}}"
    )
    _wait_for_app(proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert meta(tmp_path / "int")["outcome"] == "interrupted"


def _wait_for_app(proc, timeout: float = 30) -> int:
    """The app's pid once the traffic runs (the registry lists the iperf3 clients)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        reg = registry()
        if reg and reg.get("pid") == proc.pid and any(p["what"] == "iperf3-client-tcp" for p in reg["processes"]):
            return next(p["pid"] for p in reg["processes"] if p["what"] == "app")
        time.sleep(0.1)
    raise AssertionError("the app's run did not start in time")
