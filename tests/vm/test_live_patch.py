"""No live code patching of the network stack while a guest's recording runs.

Under QEMU 7.2's multi-threaded TCG a vCPU can run a stale translation holding the
temporary int3 of a live patch (docs/ci.md, "Live-patched kernel code under TCG"):
one CI run lost a 6.12 guest to "Oops: int3 at inet_getpeer+0x41", the DO_ONCE key of
the inet_peer hash secret, flipped by the recording's first ICMP error. The guest's
init uses every such key of the recording's traffic while one vCPU runs
(flightrec/vm/initramfs.py, warm_net); here a real recording runs between two
snapshots of all the kernel's DO_ONCE keys (tests/vm/oncekeys.py, /proc/kcore), and
none may change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vmkit import REPO, assert_nothing_left, flightrec, vm_env

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

# The keys the recording's traffic would flip (measured on 6.12 without the warm-up:
# its first TCP connection, flow hash and ICMP port unreachable), named by a function
# that tests each one (7.3 moved the TCP hash secret's into inet_init_ehash_secret).
WARMED = (
    ("__inet_hash_connect",),
    ("inet_ehashfn", "inet_init_ehash_secret"),
    ("secure_tcp_seq_and_ts_off",),
    ("flow_hash_from_keys",),
    ("inet_getpeer",),
)


def _keys(path: Path) -> dict[str, int]:
    return json.loads(path.read_text())["keys"]


def _key_of(keys: dict[str, int], functions: tuple[str, ...]) -> str:
    found = [k for k in keys if set(functions) & set(k.split("@")[0].split(","))]
    assert len(found) == 1, f"the once key of {' or '.join(functions)}: {found}"
    return found[0]


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.3"])
def test_no_once_key_flips_while_a_recording_runs(guest_kernel, kernel, tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    keys = f"{REPO}/tests/vm/oncekeys.py"
    script = (
        f"cd {REPO} && python3 {keys} > $FLIGHTREC_VM_OUT/before.json && "
        "python3 -m flightrec record -o $FLIGHTREC_VM_OUT/rec --duration 3 --kernel-events none --plain; "
        f"echo record=$?; python3 {keys} > $FLIGHTREC_VM_OUT/after.json"
    )
    proc = subprocess.run(
        flightrec("vm", "run", "--kernel", kernel, "-o", str(out), "--", "sh", "-c", script),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=240,
    )
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr
    assert "record=0" in proc.stdout  # the traffic ran
    assert "not warmed" not in proc.stdout + (out / "vm-console.log").read_text()
    before, after = _keys(out / "before.json"), _keys(out / "after.json")
    assert before.keys() == after.keys() and len(before) >= 10
    # the reader tells states apart: keys no traffic touches are still on
    assert 1 in before.values()
    for functions in WARMED:
        assert before[_key_of(before, functions)] == 0, f"{functions[0]}'s once key was not used before the recording"
    flipped = sorted(k for k in before if before[k] != after[k])
    assert flipped == [], f"live-patched while the recording ran: {flipped}"
    assert_nothing_left(tmp, proc.stdout)
