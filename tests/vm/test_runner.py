"""The VM runner on real QEMU: a command's exit code and output come back, the host's
root stays untouched, and every failure is one line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vmkit import (REPO, assert_nothing_left, flightrec, guest_netns, last_line, processes_naming,
                               run_until, vm_env)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_command_runs_in_the_guest_kernel_and_its_output_comes_back(guest_kernel, tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    probe = REPO / "flightrec" / "vm" / "__init__.py"
    before_probe = probe.read_bytes()
    script = (
        "uname -r; nproc; "
        "mountpoint -q /sys/kernel/tracing && echo tracefs-ok; "
        "test -e /sys/kernel/tracing/kprobe_events && echo kprobes-ok; "
        f"echo scribble >> {probe} && echo host-file-writable-in-guest; "
        "ip link add vm-test-a type veth peer name vm-test-b && echo veth-ok; "
        "echo result > $FLIGHTREC_VM_OUT/result.txt; exit 7"
    )
    proc = subprocess.run(flightrec("vm", "run", "-o", str(out), "--", "sh", "-c", script),
                          capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=150)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    lines = [ln.removeprefix("  guest | ") for ln in proc.stdout.splitlines() if ln.startswith("  guest | ")]
    assert lines[0] == guest_kernel.release  # the guest kernel, not the host's
    assert lines[1] == "2"
    assert "tracefs-ok" in lines and "kprobes-ok" in lines and "veth-ok" in lines
    # The overlay takes the write; the host's file is unchanged.
    assert "host-file-writable-in-guest" in lines
    assert probe.read_bytes() == before_probe
    assert (out / "result.txt").read_text() == "result\n"
    assert "guest ready in" in proc.stdout
    assert_nothing_left(tmp)


def test_boot_failure_is_one_line_and_exit_2(guest_kernel, tmp_path):
    """The Debian bzImage without its modules cannot reach the host's root: the init says so."""
    tmp = tmp_path / "tmp"
    proc = subprocess.run(flightrec("vm", "run", "--kernel", str(guest_kernel.bzimage), "--", "true"),
                          capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("flightrec: guest boot failed: cannot mount the host root")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert_nothing_left(tmp)


def test_watchdog_stops_a_hung_guest(guest_kernel, tmp_path):
    tmp = tmp_path / "tmp"
    proc = subprocess.run(flightrec("vm", "run", "--timeout", "3", "--", "sleep", "600"),
                          capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "flightrec: watchdog: the guest's command ran over 3 s; QEMU stopped"
    assert_nothing_left(tmp)


def test_boot_watchdog(guest_kernel, tmp_path):
    tmp = tmp_path / "tmp"
    proc = subprocess.run(flightrec("vm", "run", "--boot-timeout", "1", "--", "true"),
                          capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "watchdog: the guest did not reach its command within 1 s" in proc.stderr
    assert_nothing_left(tmp)


def test_missing_qemu_and_missing_kernel_package(tmp_path):
    tmp = tmp_path / "tmp"
    env = dict(vm_env(tmp), FLIGHTREC_QEMU="/nonexistent/qemu-system-x86_64")
    proc = subprocess.run(flightrec("vm", "record", "-o", str(tmp_path / "o")), capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "flightrec: /nonexistent/qemu-system-x86_64 not found: apt-get install qemu-system-x86\n"
    if shutil.which("qemu-system-x86_64") is None or shutil.which("apt-cache") is None:
        pytest.skip("the missing-package case needs QEMU and apt installed")
    proc = subprocess.run(flightrec("vm", "run", "--kernel", "linux-image-0.0.0-none-amd64", "--", "true"),
                          capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("flightrec: no kernel package matches 'linux-image-0.0.0-none-amd64'")
    assert list(tmp.iterdir()) == []


def long_record(tmp_path: Path, until: str) -> tuple[subprocess.Popen, str, Path, Path]:
    """A 600 s `vm record`, started and read until ``until`` shows in its output."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc, seen = run_until(flightrec("vm", "record", "--duration", "600", "-o", str(out)), vm_env(tmp), until,
                           timeout=150)
    return proc, seen, tmp, out


def assert_stopped_at_once(proc: subprocess.Popen, seen: str, tmp: Path) -> None:
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, seen + rest
    assert last_line(rest) == "flightrec: interrupted by SIGINT; the VM was stopped"
    assert_nothing_left(tmp, seen + rest)


def test_sigint_stops_the_recording_early_and_keeps_its_trace(guest_kernel, tmp_path):
    """A real SIGINT to the process group, as a terminal's Ctrl-C sends it, mid-recording:
    the guest's recording stops, saves its trace, and the host analyzes it."""
    proc, seen, tmp, out = long_record(tmp_path, r"guest \| .*forwarder ready")
    time.sleep(5)  # some traffic through the forwarder
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=150)
    stopped_in = time.monotonic() - t
    assert proc.returncode == 128 + signal.SIGINT, seen + rest
    assert "asking the guest to stop and save its trace" in rest
    assert last_line(rest) == "flightrec: stopped early by SIGINT; the trace up to then is saved", rest
    trace = (out / "trace.txt").read_text()
    assert trace.count("tracing_mark_write:") > 100 and "__xsk_rcv_zc" in trace
    assert json.loads((out / "analysis.json").read_text())["verdict"] == "clean"
    assert json.loads((out / "vm.json").read_text())["guest"]["stopped_by"] == signal.SIGINT
    assert "verdict: clean" in rest
    assert stopped_in < 120, f"stopping took {stopped_in:.0f} s"
    assert guest_netns(seen)  # the recording had made its namespaces (in the guest)
    assert_nothing_left(tmp, seen + rest)


def test_sigterm_stops_the_recording_early_too(guest_kernel, tmp_path):
    """What a CI runner's timeout sends: the trace is kept, the exit code says SIGTERM."""
    proc, seen, tmp, out = long_record(tmp_path, r"guest \| .*traffic: ")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=150)
    assert proc.returncode == 128 + signal.SIGTERM, seen + rest
    assert "got SIGTERM; stopping and saving the trace" in rest
    assert last_line(rest) == "flightrec: stopped early by SIGTERM; the trace up to then is saved", rest
    assert (out / "trace.txt").stat().st_size > 0 and (out / "analysis.json").is_file()
    assert_nothing_left(tmp, seen + rest)


def test_second_sigint_stops_the_vm_at_once(guest_kernel, tmp_path):
    proc, seen, tmp, _ = long_record(tmp_path, r"guest \| .*forwarder ready")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first one is passed on to the guest ...
        seen += line
        if "asking the guest to stop" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # ... the second one does not wait for it
    assert_stopped_at_once(proc, seen, tmp)


def test_sigint_while_booting_stops_the_vm(guest_kernel, tmp_path):
    proc, seen, tmp, out = long_record(tmp_path, r"boot: ")
    os.killpg(proc.pid, signal.SIGINT)
    assert_stopped_at_once(proc, seen, tmp)
    assert not (out / "trace.txt").exists()


def test_sigkill_takes_qemu_down_and_the_next_run_removes_the_scratch_folder(guest_kernel, tmp_path):
    tmp = tmp_path / "tmp"
    proc, _ = run_until(flightrec("vm", "run", "--", "sleep", "600"), vm_env(tmp), r"guest ready", timeout=120)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # PR_SET_PDEATHSIG: QEMU and virtiofsd die with flightrec; only its scratch folder stays.
    left = list(tmp.iterdir())
    assert len(left) == 1 and left[0].name.startswith(f"flightrec-vm-{proc.pid}-")
    deadline = time.monotonic() + 10
    while processes_naming(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(str(tmp)) == []
    out = subprocess.run(flightrec("vm", "run", "--", "true"), capture_output=True, text=True,
                         env=vm_env(tmp), cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert list(tmp.iterdir()) == []
