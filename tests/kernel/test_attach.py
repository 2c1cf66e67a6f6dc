"""`flightrec attach` on a program flightrec did not start: examples/xsk_fwd
(a libxdp forwarder, its markers off), running between two veth pairs that
this test builds with flightrec's own topology code, iperf3 flowing through it. Attach records its
interface's kernel events, saves and analyzes, and leaves nothing behind on
any exit path (the record tests' leftover checks)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from flightrec import tracefs
from flightrec.record import kernel_events, topology

from recordkit import run, start


@pytest.fixture
def events_machine(whole_machine):
    """whole_machine, where some kernel-event backend works (attach records nothing else)."""
    why = kernel_events.bpf_unavailable(tracefs.ensure_mounted())
    if why and kernel_events.kprobes_unavailable(tracefs.ensure_mounted()):
        pytest.skip(f"no kernel events here: {why}")
    return whole_machine


@pytest.fixture
def running_program(events_machine, xsk_fwd) -> Iterator[dict]:
    """examples/xsk_fwd (no markers) between client and server, with iperf3 TCP through it."""
    topo = topology.make_topology(f"att{os.getpid()}", 2, one_fwd_ns=True)
    procs: list[subprocess.Popen] = []
    try:
        topology.setup(topo)
        fwd = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{topo.outer_ns}",
                str(xsk_fwd),
                "--no-markers",
                "--queues",
                "2",
                "outer",
                "inner",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(fwd)
        said = []  # libxdp's own warnings may come first; the example's line comes once its sockets are bound
        while not (said and said[-1].startswith("xsk_fwd: forwarding outer <-> inner")):
            line = fwd.stderr.readline()
            assert line, "".join(said) + f"(xsk_fwd exited {fwd.wait(10)})"
            said.append(line)
        server = subprocess.Popen(
            ["ip", "netns", "exec", topo.server_ns, "iperf3", "-s", "-B", topo.server_addr],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(server)
        time.sleep(1.0)
        client = subprocess.Popen(
            # TCP, not UDP: iperf3 (3.12) opens a UDP stream with one datagram and
            # never sends it again, so one the program drops leaves no traffic at all
            ["ip", "netns", "exec", topo.client_ns, "iperf3", "-c", topo.server_addr, "-t", "120"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(client)
        time.sleep(1.0)
        yield {"ns": topo.outer_ns, "pid": fwd.pid, "proc": fwd}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait(10)
        topology.teardown(topo)


def meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_attach_records_a_running_program_clean_for_30_s(running_program, tmp_path):
    out = tmp_path / "att"
    proc = run(
        "attach",
        "--iface",
        "outer",
        "--netns",
        running_program["ns"],
        "--pid",
        str(running_program["pid"]),
        "--duration",
        "30",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "duration: attached 30 s" in proc.stdout and "verdict: clean" in proc.stdout, proc.stdout
    m = meta(out)
    assert m["attach"]["iface"] == "outer" and m["attach"]["pid"] == running_program["pid"]
    # The program's four sockets, read without touching it, before and after.
    assert len(m["af_xdp"]["sockets_at_start"]) == 4 and len(m["af_xdp"]["sockets_at_end"]) == 4
    analysis = json.loads((out / "analysis.json").read_text())
    events = analysis["stats"]["events"]
    assert events["reserve"] > 100 and events["flush"] > 10 and events["marker"] == 0, events
    if m["kernel_events"]["backend"] == "bpf":
        # Scoped to --iface: the reserves are those of outer's two sockets only (inner's
        # two receive iperf3's control traffic, and would show without the filter).
        reserving = set(re.findall(r"flightrec rx_reserve xs=(0x[0-9a-f]+)", (out / "trace.txt").read_text()))
        assert 1 <= len(reserving) <= 2, reserving
        assert m["attach"]["device_filter"].endswith(f":{m['attach']['ifindex']}")
    # The program ran on, untouched.
    assert running_program["proc"].poll() is None


def test_ctrl_c_and_sigkill_plus_cleanup_leave_nothing(running_program, tmp_path):
    proc = start("attach", "--iface", "outer", "--netns", running_program["ns"], "-o", str(tmp_path / "int"))
    _wait_attached(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, out + err
    assert meta(tmp_path / "int")["outcome"] == "interrupted"
    # SIGKILL: the registry is left for cleanup, which removes the instance and xsk_trace.
    proc = start("attach", "--iface", "outer", "--netns", running_program["ns"], "-o", str(tmp_path / "kill"))
    _wait_attached(proc)
    proc.kill()
    proc.communicate(timeout=30)
    cleaned = run("cleanup")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert running_program["proc"].poll() is None


@pytest.mark.parametrize(
    "args,said",
    [
        (["--iface", "nosuch0"], "no interface nosuch0"),
        (["--iface", "lo", "--netns", "flightrec-no-such-ns"], "no network namespace flightrec-no-such-ns"),
        (["--iface", "lo", "--pid", "1"], "process 1 holds no AF_XDP socket"),
        (["--iface", "lo", "--pid", "999999999"], "no process 999999999"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(events_machine, tmp_path, args, said):
    proc = run("attach", *args, "--duration", "1", "-o", str(tmp_path / "bad"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(f"flightrec: {said}"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad" / "trace.txt").exists()


def _wait_attached(proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.communicate()
        if "attached to" in line:
            time.sleep(0.5)
            return
    raise AssertionError("attach did not start in time")
