"""A seeded sample of the kill campaign (scripts/kill-campaign): ten host
kills of flightrec, the forwarder, xsk_trace and iperf3 in every phase, each
followed by a check that nothing is left. The full campaign (50 kills, VM
runs too) is the script itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from recordkit import REPO

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

CAMPAIGN = REPO / "scripts" / "kill-campaign"


def test_kill_campaign_sample(machine):
    """Ten seeded kills of flightrec, the forwarder, xsk_trace and iperf3, in every phase."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (apt-get install bpftool): the campaign checks BPF programs with it")
    proc = subprocess.run(
        [sys.executable, str(CAMPAIGN), "--seed", "17", "--count", "10", "--host-only"],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=REPO,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[-1].startswith("10/10 clean"), proc.stdout
    kills = [ln for ln in lines if re.match(r"^ *\d+/10 (host|vm) ", ln)]
    assert len(kills) == 10 and all(ln.endswith("nothing left") for ln in kills), proc.stdout
