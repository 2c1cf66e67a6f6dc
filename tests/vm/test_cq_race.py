"""A second real kernel bug, caught in a VM: the immature COMPLETION production that
upstream 30f241fcf52a fixed (docs/cq-race.md), in Debian 12's own 6.12 kernel.

`vm record --tx-twins` gives every forwarder queue a second, TX-only socket on
another CPU sharing the queue's COMPLETION ring. On Debian's 6.12 one socket's
skb destructor publishes a slot the other reserved while that socket's skb is
still in flight: verdict kernel, cq_cross_publish, the two sockets named. Debian's
7.3, which carries the fix, runs clean with the same options. The recipe is the
catalogue's (flightrec/vm/bugs.py), run as written. Each run keeps under 2 min.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_vm_record import vm_record
from test_zerocopy import _series

from flightrec.vm.bugs import find

from vmkit import assert_nothing_left

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

BUG = find("cq-immature")
BUDGET = 120  # issue 13: each caught run within 2 minutes


@pytest.fixture
def out_dir(artifacts_dir: Path, request) -> Path:
    return artifacts_dir / f"vm-{request.node.name}"


def _record(kernel: str, out: Path, tmp: Path) -> tuple[int, float, str]:
    _series(kernel, with_vmlinux=True)  # the probes are resolved from its debug vmlinux
    t = time.monotonic()
    proc = vm_record(out, tmp, "--kernel", kernel, *BUG.record_args, timeout=240)
    took = time.monotonic() - t
    assert_nothing_left(tmp, proc.stdout)
    return proc.returncode, took, proc.stdout + proc.stderr


def test_debian_612_publishes_a_slot_another_socket_reserved(out_dir, tmp_path):
    code, took, log = _record(BUG.bug_kernel, out_dir, tmp_path / "tmp")
    assert code == 1, f"exit {code}, want 1 (the analysis found the bug):\n{log[-3000:]}"
    analysis = json.loads((out_dir / "analysis.json").read_text())
    assert analysis["verdict"] == BUG.verdict, analysis["anomalies"][:1]
    first = analysis["anomalies"][0]
    assert (first["verdict"], first["kind"]) == (BUG.verdict, BUG.kind), first
    # the mechanism: which socket reserved the slot, which one's destructor published it
    reserved = [e for e in first["evidence"] if "reserved slot" in e["why"]]
    published = [e for e in first["evidence"] if "destructor published" in e["why"]]
    assert reserved and published, first["evidence"]
    reserver, publisher = reserved[0]["why"].split()[1], published[0]["why"].split()[1].removesuffix("'s")
    assert reserver.startswith("0x") and publisher.startswith("0x") and reserver != publisher, first["evidence"]
    assert "30f241fcf52a" in first["explanation"]
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["options"]["tx_twins"] is True
    assert took <= BUDGET, f"the run took {took:.0f} s"


def test_debian_73_with_the_fix_stays_clean_with_the_same_options(out_dir, tmp_path):
    code, _, log = _record(BUG.fixed_kernel, out_dir, tmp_path / "tmp")
    assert code == 0, f"exit {code}, want 0 (clean):\n{log[-3000:]}"
    analysis = json.loads((out_dir / "analysis.json").read_text())
    events = analysis["stats"]["events"]
    # both sockets sent and completed through the shared ring, seen by the probes
    assert events["cq_reserve"] > 1000 and events["cq_submit"] > 1000, events
    assert analysis["verdict"] == "clean"
    # ... and says the check had nothing to look at, rather than that it passed
    not_run = {n["check"]: n for n in analysis["stats"]["checks_not_run"]}
    assert set(not_run) == {BUG.kind} and not_run[BUG.kind]["needs"] == "fields", not_run
    assert f"not run: {BUG.kind}" in log
