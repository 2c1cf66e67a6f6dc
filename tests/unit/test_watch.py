"""The exit watch (flightrec/record/watch.py) on real child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from flightrec.record.watch import Exit, Watch


@pytest.fixture
def watch():
    w = Watch()
    yield w
    w.close()


def wait_exits(w: Watch, n: int, timeout: float = 5.0) -> list[Exit]:
    found: list[Exit] = []
    deadline = time.monotonic() + timeout
    while len(found) < n and time.monotonic() < deadline:
        found += w.exits()
        time.sleep(0.01)
    return sorted(found, key=lambda e: e.at)


def test_a_kill_is_seen_at_once_with_its_signal(watch):
    proc = subprocess.Popen(["sleep", "30"])
    watch.add(proc, "sleeper")
    time.sleep(0.1)
    assert watch.exits() == []
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    (exit,) = wait_exits(watch, 1)
    assert exit.what == "sleeper" and exit.pid == proc.pid
    assert exit.code == -signal.SIGKILL and exit.how() == "killed by SIGKILL"
    assert t_kill <= exit.at < t_kill + 0.5, exit.at - t_kill
    # Not reaped by the watch: the Popen still gets the status.
    assert proc.wait(5) == -signal.SIGKILL


def test_exit_codes_and_order(watch):
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.4)"])
    early = subprocess.Popen(["sh", "-c", "exit 3"])
    watch.add(late, "late")
    watch.add(early, "early")
    exits = wait_exits(watch, 2)
    assert [(e.what, e.code) for e in exits] == [("early", 3), ("late", 0)]
    assert exits[0].how() == "exited with code 3" and exits[1].how() == "exited cleanly (code 0)"
    assert early.wait(5) == 3 and late.wait(5) == 0


def test_a_process_reaped_before_it_is_added_is_reported(watch):
    proc = subprocess.Popen(["true"])
    proc.wait(5)
    watch.add(proc, "gone")
    (exit,) = wait_exits(watch, 1)
    assert exit.what == "gone" and exit.code == 0


def test_close_is_idempotent_and_add_after_close_is_ignored():
    w = Watch()
    w.close()
    w.close()
    proc = subprocess.Popen(["sleep", "5"])
    try:
        w.add(proc, "late")
        assert w.exits() == []
    finally:
        proc.kill()
        proc.wait(5)
