"""`record --app` on an AF_XDP program flightrec did not write: DPDK's testpmd
with its AF_XDP driver, from Debian's packages (tests/dpdkkit.py), forwarding
between the two veths. It writes no markers: the analysis runs on the BPF
kernel events alone and says which checks it could not run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from dpdkkit import dpdk_runtime_dir_removed, dpdk_testpmd_app, dpdk_testpmd_root
from recordkit import run


@pytest.fixture(scope="module")
def testpmd() -> Iterator[str]:
    root, why = dpdk_testpmd_root()
    if root is None:
        pytest.skip(why)
    with dpdk_runtime_dir_removed():
        yield dpdk_testpmd_app(root)


def test_testpmd_runs_clean_for_30_s_on_kernel_events_alone(whole_machine, testpmd, tmp_path: Path):
    out = tmp_path / "testpmd"
    proc = run(
        "record",
        "-o",
        str(out),
        "--duration",
        "30",
        "--plain",
        "--kernel-events",
        "bpf",
        "--queues",
        "1",
        "--app",
        testpmd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: clean" in proc.stdout and "checks not run; kernel events only" in proc.stdout, proc.stdout
    m = json.loads((out / "meta.json").read_text())
    assert m["outcome"] == "clean" and m["app"]["forwarding_seconds"] >= 29, m["app"]
    # testpmd's own sockets: one on each of its two ports
    assert len(m["af_xdp"]["sockets"]) == 2, m["af_xdp"]
    analysis = json.loads((out / "analysis.json").read_text())
    events = analysis["stats"]["events"]
    assert events["marker"] == 0 and events["reserve"] > 10000 and events["flush"] > 1000, events
    # the traffic went through testpmd: the stamped flows arrived intact
    stamp = next(t for t in m["traffic"] if t["name"] == "stamp")
    assert stamp["exit_code"] == 0 and stamp["corrupt"] == 0 and stamp["packets_received"] > 10000, stamp
    tcp = next(t for t in m["traffic"] if t["name"] == "tcp")
    assert tcp["exit_code"] == 0 and tcp["received_bps"] > 1e6, tcp
