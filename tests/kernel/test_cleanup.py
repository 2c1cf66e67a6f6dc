"""A SIGKILLed `flightrec record` leaves namespaces and a tracefs instance;
`flightrec cleanup`, or the next `record`, finds and removes them."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from flightrec import tracefs
from flightrec.record import state

from recordkit import REPO, flightrec, interrupt, registry, run, start, wait_forwarding

pytestmark = [pytest.mark.kernel]


def kill_recording(tmp_path) -> dict:
    """Start a recording, SIGKILL flightrec itself, return its registry."""
    proc = start("record", "-o", str(tmp_path / "killed"), "--duration", "30", "--plain")
    reg = wait_forwarding(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return reg


def test_cleanup_removes_what_a_killed_record_left(machine, tmp_path):
    reg = kill_recording(tmp_path)
    # The leftovers are really there: SIGKILL skips every finally.
    assert set(reg["netns"]) <= set(state.list_netns())
    assert reg["instance"] in tracefs.list_instances()
    dry = run("cleanup", "--dry-run", timeout=30)
    assert dry.returncode == 0
    for ns in reg["netns"]:
        assert f"netns {ns}" in dry.stdout
    assert f"tracefs instance {reg['instance']}" in dry.stdout
    assert set(reg["netns"]) <= set(state.list_netns()), "dry run removed something"
    proc = run("cleanup", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed" in proc.stdout
    assert not set(reg["netns"]) & set(state.list_netns())
    assert reg["instance"] not in tracefs.list_instances()
    again = run("cleanup", timeout=30)
    assert again.returncode == 0 and "nothing to clean up" in again.stdout


def test_next_record_removes_leftovers(machine, tmp_path):
    reg = kill_recording(tmp_path)
    proc = run("record", "-o", str(tmp_path / "next"), "--duration", "3", "--plain", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removing leftovers of a killed flightrec" in proc.stdout
    assert reg["netns"][0] in proc.stdout
    assert registry() is None


def test_cleanup_refuses_while_recording(machine, tmp_path):
    proc = start("record", "-o", str(tmp_path / "running"), "--duration", "30", "--plain")
    reg = wait_forwarding(proc)
    refused = run("cleanup", timeout=30)
    still = set(reg["netns"]) <= set(state.list_netns())
    interrupt(proc)
    assert refused.returncode == 2
    assert "is recording" in refused.stderr
    assert still, "cleanup removed a running recording's namespaces"


def test_cleanup_removes_scratch_folders_of_killed_vm_runs(machine, tmp_path):
    """A SIGKILLed `vm record` leaves its scratch folder only (QEMU dies with it)."""
    tmp = tmp_path / "tmp"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp / f"flightrec-vm-{gone.pid}-k1ll3d00"
    (stale / "job" / "out").mkdir(parents=True)
    live = tmp / f"flightrec-vm-{os.getpid()}-runn1ng0"  # a running vm's: not touched
    live.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    dry = subprocess.run(
        flightrec("cleanup", "--dry-run"), capture_output=True, text=True, env=env, cwd=REPO, timeout=30
    )
    assert dry.returncode == 0 and f"VM scratch folder {stale}" in dry.stdout, dry.stdout + dry.stderr
    assert stale.is_dir()
    done = subprocess.run(flightrec("cleanup"), capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert done.returncode == 0 and "removed" in done.stdout, done.stdout + done.stderr
    assert not stale.exists() and live.is_dir()
