"""examples/xsk_fwd, a libxdp forwarder instrumented with the marker library,
recorded with `flightrec record --app` as a user would: built with
`flightrec markers --cflags`, run with libxdp's own XDP program, on real
namespaces, veth, XDP and AF_XDP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from recordkit import run

# The program is built by conftest's xsk_fwd fixture.


def record(out: Path, app: str, *extra: str, duration: str = "8") -> subprocess.CompletedProcess:
    return run("record", "-o", str(out), "--duration", duration, "--plain", "--app", app, *extra, timeout=240)


def test_the_example_runs_clean_for_30_s_with_every_check(whole_machine, xsk_fwd, tmp_path):
    out = tmp_path / "clean"
    proc = record(out, f"{xsk_fwd} --queues {{queues}} {{outer}} {{inner}}", duration="30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: clean" in proc.stdout and "checks not run" not in proc.stdout, proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["app"]["forwarding_seconds"] >= 29, meta["app"]
    # libxdp's default program on both sides, its sockets in copy mode
    assert set(meta["app"]["xdp"]) == {"outer", "inner"}, meta["app"]
    assert {s["mode"] for s in meta["af_xdp"]["sockets"]} == {"copy"}
    events = json.loads((out / "analysis.json").read_text())["stats"]["events"]
    assert events["marker"] > 10_000 and events["reserve"] > 1000, events


def test_a_double_fill_in_the_example_is_caught_as_the_application_s(whole_machine, xsk_fwd, tmp_path):
    out = tmp_path / "double"
    proc = record(out, f"{xsk_fwd} --queues {{queues}} {{outer}} {{inner}} --inject double-fill")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verdict: application (duplicate_insertion" in proc.stdout, proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    # the library's detection line stopped tracing; then the example exited with its code
    assert meta["outcome"] == "anomaly" and meta["died"] is None and meta["app"]["exit_code"] == 3, meta
    lines = (out / "trace.txt").read_text().splitlines()
    last = [ln for ln in lines if "tracing_mark_write: " in ln][-1]
    assert last.endswith("COMP -> FILL: invalid, was FILL"), last


def test_the_example_without_markers_is_analyzed_from_kernel_events(whole_machine, xsk_fwd, tmp_path):
    out = tmp_path / "bare"
    proc = record(out, f"{xsk_fwd} --no-markers --queues {{queues}} {{outer}} {{inner}}", "--kernel-events", "bpf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no application markers: 6 checks not run; kernel events only" in proc.stdout, proc.stdout
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["stats"]["events"]["marker"] == 0 and analysis["stats"]["events"]["reserve"] > 1000
