"""The VM runner on real QEMU: a command's exit code and output come back, the host's
root stays untouched, and every failure is one line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_vm_record import vm_record

from flightrec.errors import FlightrecError
from flightrec.vm.qemu import VmConfig
from flightrec.vm.runner import run_in_guest

from vmkit import (
    REPO,
    assert_nothing_left,
    finish,
    flightrec,
    guest_netns,
    last_line,
    processes_naming,
    run_until,
    vm_env,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_command_runs_in_the_guest_kernel_and_its_output_comes_back(guest_kernel, tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    probe = REPO / "flightrec" / "vm" / "__init__.py"
    before_probe = probe.read_bytes()
    script = (
        "uname -r; nproc; "
        "mountpoint -q /sys/kernel/tracing && echo tracefs-ok; "
        "test -e /sys/kernel/tracing/kprobe_events && echo kprobes-ok; "
        "echo pinned=$(cat /sys/kernel/tracing/events/initcall/initcall_finish/enable); "
        f"echo scribble >> {probe} && echo host-file-writable-in-guest; "
        "ip link add vm-test-a type veth peer name vm-test-b && echo veth-ok; "
        "echo result > $FLIGHTREC_VM_OUT/result.txt; exit 7"
    )
    proc = subprocess.run(
        flightrec("vm", "run", "-o", str(out), "--", "sh", "-c", script),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=150,
    )
    assert proc.returncode == 7, proc.stdout + proc.stderr
    lines = [ln.removeprefix("  guest | ") for ln in proc.stdout.splitlines() if ln.startswith("  guest | ")]
    assert lines[0] == guest_kernel.release  # the guest kernel, not the host's
    assert lines[1] == "2"
    assert "tracefs-ok" in lines and "kprobes-ok" in lines and "veth-ok" in lines
    # the scheduler's trace hooks stay registered: no live patch of them while vCPUs run
    assert "pinned=1" in lines and "not pinned" not in proc.stdout
    # The overlay takes the write; the host's file is unchanged.
    assert "host-file-writable-in-guest" in lines
    assert probe.read_bytes() == before_probe
    assert (out / "result.txt").read_text() == "result\n"
    assert "guest ready in" in proc.stdout
    assert_nothing_left(tmp)


def test_boot_failure_is_one_line_and_exit_2(guest_kernel, tmp_path):
    """The Debian bzImage without its modules cannot reach the host's root: the init says so."""
    tmp = tmp_path / "tmp"
    proc = subprocess.run(
        flightrec("vm", "run", "--kernel", str(guest_kernel.bzimage), "--", "true"),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("flightrec: guest boot failed: cannot mount the host root")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert_nothing_left(tmp)


def test_watchdog_stops_a_hung_guest(guest_kernel, tmp_path):
    tmp = tmp_path / "tmp"
    proc = subprocess.run(
        flightrec("vm", "run", "--timeout", "3", "--", "sleep", "600"),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "flightrec: watchdog: the guest's command ran over 3 s; QEMU stopped"
    assert_nothing_left(tmp)


def test_watchdog_keeps_the_console_output_and_what_the_guest_wrote(guest_kernel, tmp_path):
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc = subprocess.run(
        flightrec(
            "vm",
            "run",
            "--timeout",
            "3",
            "-o",
            str(out),
            "--",
            "sh",
            "-c",
            "echo partial > $FLIGHTREC_VM_OUT/partial.txt; echo waiting; sleep 600",
        ),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "flightrec: watchdog: the guest's command ran over 3 s; QEMU stopped; "
        f"guest console: {out / 'vm-console.log'}\n"
    )
    assert "flightrec-vm: ready" in (out / "vm-console.log").read_text()
    assert (out / "vm-output.log").read_text() == "waiting\n"
    assert (out / "partial.txt").read_text() == "partial\n"
    vm = json.loads((out / "vm.json").read_text())
    assert vm["error"].startswith("watchdog: the guest's command ran over 3 s") and vm["boots"] == 1
    assert_nothing_left(tmp)


def test_a_guest_dying_mid_command_is_named_with_its_panic_and_not_retried(guest_kernel, tmp_path):
    """QEMU exits without an exit code (the guest kernel crashed after the command started):
    the panic is the error, the console is kept, and a retry is never made once it runs."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc = subprocess.run(
        flightrec(
            "vm",
            "run",
            "--boot-attempts",
            "3",
            "-o",
            str(out),
            "--",
            "sh",
            "-c",
            "echo crashing; sync; echo c > /proc/sysrq-trigger; sleep 60",
        ),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        "flightrec: the guest died while running its command (QEMU exit 0): "
        "Kernel panic - not syncing: sysrq triggered crash"
    ), proc.stderr
    assert proc.stderr.endswith(f"; guest console: {out / 'vm-console.log'}\n")
    assert "sysrq triggered crash" in (out / "vm-console.log").read_text()
    assert "booting again" not in proc.stdout and proc.stdout.count("boot: ") == 1
    assert json.loads((out / "vm.json").read_text())["boots"] == 1
    assert_nothing_left(tmp)


def test_a_boot_killed_before_the_command_is_retried_and_said(guest_kernel, tmp_path):
    """QEMU dies during the first boot (killed here, as the OOM killer or a panic would end
    it): with --boot-attempts the guest boots again, says so, and vm.json keeps the story."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc, seen = run_until(
        flightrec("vm", "run", "--boot-attempts", "3", "-o", str(out), "--", "echo", "hello"),
        vm_env(tmp),
        r"boot: ",
        timeout=60,
    )
    deadline = time.monotonic() + 10
    while not (qemu := [p for p in processes_naming(str(tmp)) if "qemu-system" in p]):
        assert time.monotonic() < deadline, "QEMU never started"
        time.sleep(0.05)
    os.kill(int(qemu[0].split(":")[0]), signal.SIGKILL)
    rest = finish(proc, 150)
    output = seen + rest
    assert proc.returncode == 0, output
    assert "boot 1 of 3 failed: the guest died before its command started (QEMU exit -9)" in output
    assert "booting again" in output and "boot 2 of 3: " in output
    assert "guest | hello" in output
    vm = json.loads((out / "vm.json").read_text())
    assert vm["boots"] == 2 and vm["exit_code"] == 0
    assert len(vm["failed_boots"]) == 1 and "QEMU exit -9" in vm["failed_boots"][0]["reason"]
    assert (out / vm["failed_boots"][0]["console"]).is_file()
    assert_nothing_left(tmp, output)


def test_a_kernel_that_panics_at_every_boot_fails_after_the_attempts_with_each_console(
    guest_kernel, tmp_path, monkeypatch
):
    """A kernel panic before the command (no init: the kernel cannot mount a root) on every
    boot: each boot's console is kept and the error gives the panic."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    said: list[str] = []
    t = time.monotonic()
    with pytest.raises(FlightrecError) as err:
        run_in_guest(
            ["true"],
            guest_kernel,
            VmConfig(cmdline=("rdinit=/nonexistent",)),
            timeout=60,
            out_dir=out,
            boot_attempts=2,
            say=said.append,
        )
    message = str(err.value)
    assert message.startswith("the guest died before its command started (QEMU exit 0): Kernel panic - not syncing: ")
    assert message.endswith(f"; guest console: {out / 'vm-console.log'}")
    assert any(s.startswith("boot 1 of 2 failed: the guest died before its command started") for s in said), said
    vm = json.loads((out / "vm.json").read_text())
    assert vm["boots"] == 2 and [b["console"] for b in vm["failed_boots"]] == [
        "vm-console-boot1.log",
        "vm-console-boot2.log",
    ]
    for name in ("vm-console-boot1.log", "vm-console-boot2.log", "vm-console.log"):
        assert "Kernel panic - not syncing" in (out / name).read_text()
    assert time.monotonic() - t < 100
    assert_nothing_left(tmp)


STALL_EVERY_VCPU = (
    "echo before > $FLIGHTREC_VM_OUT/before.txt; echo -1 > /proc/sys/kernel/sched_rt_runtime_us; "
    # A SCHED_FIFO spinner on each vCPU, RT throttling off: no ordinary task runs again.
    "echo stalling; exec taskset -c 0 sh -c 'taskset -c 1 chrt -f 50 yes >/dev/null & exec chrt -f 50 yes >/dev/null'"
)


def test_progress_watchdog_stops_a_guest_that_runs_no_task(guest_kernel, tmp_path):
    """Every vCPU taken by a real-time spinner: the heartbeats stop, the progress watchdog
    stops QEMU within its bound and says why, with the guest's last lines."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    stall = 10
    proc, seen = run_until(
        flightrec("vm", "run", "--stall-timeout", str(stall), "-o", str(out), "--", "sh", "-c", STALL_EVERY_VCPU),
        vm_env(tmp),
        r"guest \| stalling",
        timeout=90,
    )
    t = time.monotonic()
    rest = finish(proc, 90)
    took = time.monotonic() - t
    assert proc.returncode == 2, seen + rest
    line = last_line(rest)
    assert (
        line is not None
        and line.startswith("flightrec: progress watchdog: no heartbeat from ")
        and f"of the guest for {stall} s" in line
    ), rest
    assert "last output: stalling" in line and "QEMU stopped" in line and "the guest had written before.txt" in line
    assert line.endswith(f"; guest console: {out / 'vm-console.log'}")
    # The heartbeat is read once a second: the bound is the stall timeout plus a few seconds.
    assert stall - 2 <= took <= stall + 6, f"stopped {took:.1f} s after the stall"
    assert (out / "before.txt").read_text() == "before\n"
    assert (out / "vm-console.log").is_file()
    assert_nothing_left(tmp, seen + rest)


# The heartbeat task of vCPU 1 stopped (SIGSTOP), vCPU 0's still beating: the host cannot
# tell this from a vCPU whose kernel spins, and the guest can still run its command. (A real
# spinner on one vCPU stops the heartbeats of both: the virtiofs replies it starves are
# completed on that vCPU; test_progress_watchdog_stops_a_guest_that_runs_no_task covers that.)
STALL_ONE_VCPU = (
    "kill -STOP $(pgrep -f 'heartbeat[.]1$'); echo stalled vCPU 1; "
    "while [ ! -e $FLIGHTREC_VM_JOB/stop ]; do sleep 0.2; done; "
    'echo "asked: $(cat $FLIGHTREC_VM_JOB/stop)"; echo saved > $FLIGHTREC_VM_OUT/trace.txt; exit 143'
)


def test_progress_watchdog_asks_a_guest_that_still_runs_to_stop_and_keeps_its_trace(
    guest_kernel, tmp_path, monkeypatch
):
    """vCPU 1 stops beating, vCPU 0 still runs tasks: with graceful_stop the guest is asked
    to stop (as for Ctrl-C), saves its output, powers off, and the run still fails with the reason."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    said: list[str] = []
    output: list[str] = []
    stall = 10
    with pytest.raises(FlightrecError) as err:
        run_in_guest(
            ["sh", "-c", STALL_ONE_VCPU],
            guest_kernel,
            VmConfig(),
            timeout=90,
            out_dir=out,
            graceful_stop=True,
            stall_timeout=stall,
            say=said.append,
            on_output=output.append,
        )
    message = str(err.value)
    assert message.startswith(f"progress watchdog: no heartbeat from vCPU 1 of the guest for {stall} s"), message
    assert "last output: stalled vCPU 1" in message
    assert "the guest was asked to stop and save its trace" in message
    assert "the guest had written trace.txt" in message
    assert any("asking the guest to stop and save its trace" in s for s in said), said
    assert "asked: SIGTERM" in output
    assert (out / "trace.txt").read_text() == "saved\n"
    assert (out / "vm-console.log").is_file()
    assert_nothing_left(tmp)


def test_a_hung_job_share_is_told_by_the_guest_itself(guest_kernel, tmp_path):
    """The job share's virtiofsd stopped on the host: the guest's writes there never
    return. Its init says so on the console, with the tasks blocked in the kernel,
    before the progress watchdog stops QEMU; the watchdog's line carries it."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc, seen = run_until(
        flightrec("vm", "run", "-o", str(out), "--", "sh", "-c", "echo go; sleep 600"),
        vm_env(tmp),
        r"guest \| go",
        timeout=90,
    )
    # The job share's daemon: its socket is named ...-job.sock, its source is the job folder.
    daemons = subprocess.run(
        ["pgrep", "-f", f"virtiofsd .*-job[.]sock -o source={tmp}/"], capture_output=True, text=True
    ).stdout.split()
    if len(daemons) == 1:
        os.kill(int(daemons[0]), signal.SIGSTOP)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    rest = finish(proc, 90)
    assert len(daemons) == 1, (daemons, rest)
    assert proc.returncode == 2, seen + rest
    line = last_line(rest)
    assert line is not None and line.startswith("flightrec: progress watchdog: no heartbeat from every vCPU"), rest
    said = re.search(r"the guest said: (.*?); last output", line)
    assert said, line
    assert re.match(
        r"vCPU \d: its heartbeat's write to the job folder \(virtiofs\) has not returned for \d+ s", said[1]
    )
    # The heartbeat loops, waiting for the daemon's answer.
    assert re.search(r"waiting in the kernel: sh \(pid \d+, S in request_wait_answer\)", said[1]), said[1]
    assert "sysrq: Show Blocked State" in (out / "vm-console.log").read_text()
    assert_nothing_left(tmp, seen + rest)


def test_a_command_near_its_watchdog_leaves_its_python_stack_on_the_console(guest_kernel, tmp_path):
    """A recording that outlives --timeout: 15 s before the watchdog the guest's init asks
    it for its Python stacks, and the watchdog's line says where its main thread was."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    timeout = 40
    proc = vm_record(out, tmp, "--kernel-events", "none", "--duration", "300", "--timeout", str(timeout), timeout=200)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = last_line(proc.stderr)
    assert line is not None and line.startswith(f"flightrec: watchdog: the guest's command ran over {timeout} s"), line
    # The init looks every 2 s: it speaks 15 to 13 s before the watchdog.
    said = re.search(
        r"the guest said: the command has run (\d+) s and its time is nearly up; (.*?); guest console", line
    )
    assert said and timeout - 15 <= int(said[1]) <= timeout - 12, line
    assert re.fullmatch(
        r"flightrec's main thread at flightrec/\S+[.]py:\d+ in \w+( < flightrec/\S+[.]py:\d+ in \w+)?", said[2]
    ), line
    console = (out / "vm-console.log").read_text()
    assert "Current thread 0x" in console or "Thread 0x" in console
    assert_nothing_left(tmp, proc.stdout + proc.stderr)


def test_boot_watchdog(guest_kernel, tmp_path):
    tmp = tmp_path / "tmp"
    proc = subprocess.run(
        flightrec("vm", "run", "--boot-timeout", "1", "--", "true"),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "watchdog: the guest did not reach its command within 1 s" in proc.stderr
    assert_nothing_left(tmp)


def test_missing_qemu_and_missing_kernel_package(tmp_path):
    tmp = tmp_path / "tmp"
    env = dict(vm_env(tmp), FLIGHTREC_QEMU="/nonexistent/qemu-system-x86_64")
    proc = subprocess.run(
        flightrec("vm", "record", "-o", str(tmp_path / "o")),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == "flightrec: /nonexistent/qemu-system-x86_64 not found: apt-get install qemu-system-x86\n"
    if shutil.which("qemu-system-x86_64") is None or shutil.which("apt-cache") is None:
        pytest.skip("the missing-package case needs QEMU and apt installed")
    proc = subprocess.run(
        flightrec("vm", "run", "--kernel", "linux-image-0.0.0-none-amd64", "--", "true"),
        capture_output=True,
        text=True,
        env=vm_env(tmp),
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("flightrec: no kernel package matches 'linux-image-0.0.0-none-amd64'")
    assert list(tmp.iterdir()) == []


def long_record(tmp_path: Path, until: str) -> tuple[subprocess.Popen, str, Path, Path]:
    """A 600 s `vm record`, started and read until ``until`` shows in its output."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    proc, seen = run_until(
        flightrec("vm", "record", "--duration", "600", "-o", str(out)), vm_env(tmp), until, timeout=150
    )
    return proc, seen, tmp, out


def assert_stopped_at_once(proc: subprocess.Popen, seen: str, tmp: Path) -> None:
    rest = finish(proc, 60)
    assert proc.returncode == 128 + signal.SIGINT, seen + rest
    console = tmp.parent / "out" / "vm-console.log"
    # The console is named when there is one (a signal that lands before QEMU starts leaves none).
    assert last_line(rest) in (
        "flightrec: interrupted by SIGINT; the VM was stopped",
        f"flightrec: interrupted by SIGINT; the VM was stopped; guest console: {console}",
    )
    assert console.is_file() == last_line(rest).endswith("vm-console.log")
    assert_nothing_left(tmp, seen + rest)


def test_sigint_stops_the_recording_early_and_keeps_its_trace(guest_kernel, tmp_path):
    """A real SIGINT to the process group, as a terminal's Ctrl-C sends it, mid-recording:
    the guest's recording stops, saves its trace, and the host analyzes it."""
    # From the traffic's start, not the forwarder's: in a loaded TCG guest iperf3 can take
    # longer than the 5 s below to start, and the trace then held the forwarder's start alone.
    proc, seen, tmp, out = long_record(tmp_path, r"guest \| .*traffic: ")
    time.sleep(5)  # some traffic through the forwarder
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rest = finish(proc, 150)
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
    rest = finish(proc, 150)
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
    assert "flightrec-vm: ready" in (tmp.parent / "out" / "vm-console.log").read_text()  # kept, and named


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
    out = subprocess.run(
        flightrec("vm", "run", "--", "true"), capture_output=True, text=True, env=vm_env(tmp), cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert list(tmp.iterdir()) == []
