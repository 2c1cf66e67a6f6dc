"""The BPF tracepoint backend (c/xsk_trace): kernel events on kernels without kprobes.

Real programs on real tracepoints: the loader alone (attach, detach on
SIGINT, nothing left after SIGKILL), then `flightrec record --kernel-events
bpf` end to end, checked against the markers of the same trace, and the
teardown on every way out (duration, SIGINT, SIGKILL + `flightrec cleanup`).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from flightrec import tracefs
from flightrec.parse.fields import parse_markers
from flightrec.record import kernel_events, state

from recordkit import (
    XSK_TRACE_PROGRAMS,
    bpf_links,
    bpf_programs,
    interrupt,
    registry,
    run,
    skip_unless_can_record,
    snapshot,
    start,
    stop_strays,
    wait_forwarding,
)

pytestmark = [pytest.mark.kernel]

PROG_NAMES = XSK_TRACE_PROGRAMS
LINE = re.compile(r"\[(\d+)\][^:]*\s(\d+\.\d+): (\w+): (.*)$")
FIELD = re.compile(r"(\w+)=(0x[0-9a-f]+)")


def skip_unless_bpf() -> None:
    skip_unless_can_record()
    why = kernel_events.bpf_unavailable(tracefs.ensure_mounted())
    if why:
        pytest.skip(f"BPF backend unavailable here: {why}")


def printk_enable() -> str:
    return (tracefs.ensure_mounted() / tracefs.PRINTK_EVENT).read_text().strip()


def loaded_programs() -> set[str]:
    """Names of flightrec's tracepoint programs the kernel holds now."""
    return set(bpf_programs(PROG_NAMES).values())


def tracing_links() -> int:
    """How many links of flightrec's programs exist (bpftool link)."""
    return bpf_links(PROG_NAMES)


def wait_unloaded(timeout: float = 10.0) -> set[str]:
    """Programs are freed after an RCU grace period: poll until gone."""
    deadline = time.monotonic() + timeout
    left = loaded_programs()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = loaded_programs()
    return left


@pytest.fixture
def machine():
    """Skip unless the backend can run; the machine is unchanged afterwards, BPF included."""
    skip_unless_bpf()
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (apt-get install bpftool)")
    assert wait_unloaded() == set(), "flightrec BPF programs loaded before the test"
    before = {**snapshot(), "printk_enable": printk_enable()}
    yield before
    stop_strays()
    assert wait_unloaded() == set(), "BPF programs still loaded after the test"
    assert {**snapshot(), "printk_enable": printk_enable()} == before


# --- the loader alone ------------------------------------------------------------


def test_loader_refuses_bad_options(machine):
    for args in (["--dev", "x:1"], ["--dev", "12"], ["--bogus"]):
        proc = subprocess.run([str(kernel_events.loader_path()), *args], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("xsk_trace: "), proc.stderr
        assert proc.stdout == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_loader_attaches_and_leaves_nothing(machine, sig, tmp_path):
    tracer = kernel_events.BpfTracer([], tmp_path / "stderr")
    ready = tracer.start()
    try:
        assert ready["event"] == "ready" and len(ready["programs"]) == 3
        assert loaded_programs() == PROG_NAMES
        assert tracing_links() == 3, "each program attached through its own link"
        assert tracer.proc is not None
        tracer.proc.send_signal(sig)
        code = tracer.proc.wait(10)
    finally:
        tracer.stop()
        tracefs.restore_toplevel_printk(tracefs.ensure_mounted(), machine["printk_enable"], settle=0.5)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, tracer.stderr_tail()
        assert tracer.exit_event and tracer.exit_event["code"] == 0
    # Nothing pinned: closing the links (even by dying) detached everything.
    assert wait_unloaded() == set()
    assert tracing_links() == 0


def test_auto_picks_bpf_without_kprobes(machine):
    root = tracefs.ensure_mounted()
    why_not_kprobes = kernel_events.kprobes_unavailable(root)
    if why_not_kprobes is None:
        pytest.skip("kprobes work here: auto picks them, not the BPF backend")
    choice = kernel_events.choose_backend("auto", root)
    assert choice.backend == "bpf" and choice.missing == ()
    assert why_not_kprobes in choice.reason
    assert kernel_events.choose_backend("bpf", root).backend == "bpf"
    assert kernel_events.choose_backend("none", root).backend == "none"


# --- recording with it -----------------------------------------------------------


def parse(trace: Path) -> list[tuple[int, float, str, dict, str]]:
    """(cpu, ts, kind, fields, body) for each marker and BPF kernel event."""
    events = []
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if not m:
            continue
        cpu, ts, ev, body = int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        if ev == "bpf_trace_printk" and body.startswith("flightrec "):
            name = body.split()[1]
            events.append((cpu, ts, name, {k: int(v, 16) for k, v in FIELD.findall(body)}, body))
        elif ev == "tracing_mark_write":
            events.append((cpu, ts, "marker", {}, body))
    return events


@pytest.mark.slow
def test_record_with_bpf_events(machine, artifacts_dir):
    out = artifacts_dir / "bpf-clean"
    proc = run("record", "-o", str(out), "--duration", "20", "--kernel-events", "bpf", "--plain", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kernel events: bpf" in proc.stdout and "verdict: clean" in proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    ke = meta["kernel_events"]
    assert ke["backend"] == "bpf" and ke["missing"] == [] and ke["reason"]
    assert ke["bpf"]["exit_code"] == 0 and len(ke["bpf"]["argv"]) == 5  # loader + two --dev
    assert meta["forwarder"]["forwarding_seconds"] >= 19

    events = parse(out / "trace.txt")
    kinds = Counter(e[2] for e in events)
    fill_rx = [e for e in events if e[2] == "marker" and "FILL -> RX" in e[4]]
    # (sock, queue, addr, from, to, detail) per descriptor: batched lines expanded as flightrec reads them.
    moves = [m for e in events if e[2] == "marker" for m in (parse_markers(e[4]) or [])]
    read = {m[2] for m in moves if (m[3], m[4]) == ("FILL", "RX")}
    sent = {m[2] for m in moves if (m[3], m[4]) == ("RX", "TX")}
    assert kinds["rx_reserve"] >= 1000 and kinds["flush"] >= 1000 and len(read) >= 1000, (kinds, len(read))
    assert kinds["tx_get_data"] > 0, kinds
    # Interleaved on at least two CPUs: each kind seen on >= 2, and the
    # time-ordered stream switches CPU many times.
    for name, evs in (
        ("rx_reserve", [e for e in events if e[2] == "rx_reserve"]),
        ("flush", [e for e in events if e[2] == "flush"]),
        ("FILL -> RX", fill_rx),
    ):
        assert len({e[0] for e in evs}) >= 2, f"{name} seen on one CPU only"
    switches = sum(1 for a, b in zip(events, events[1:]) if a[0] != b[0])
    assert switches >= 100, f"only {switches} CPU switches"

    # The kernel events agree with the markers of the same trace. Per-CPU
    # buffers wrap independently: compare only where every CPU's is complete.
    complete_from = max(min(e[1] for e in events if e[0] == cpu) for cpu in {e[0] for e in events})
    events = [e for e in events if e[1] >= complete_from]
    reserved = defaultdict(list)  # xs -> [(slot, addr)]
    for cpu, ts, name, f, body in events:
        if name == "rx_reserve":
            assert set(f) == {"xs", "q", "slot", "addr", "len"}, body
            assert f["q"] < 2 and f["len"] > 0
            reserved[f["xs"]].append((f["slot"], f["addr"]))
        elif name == "flush":
            assert set(f) == {"xs", "q", "prod"}, body
        elif name == "tx_get_data":
            assert set(f) == {"xs", "q", "addr"}, body
    assert len(reserved) == 4, "one RX socket per queue and side"
    for slots in reserved.values():
        # One socket's slots are ring indexes in order, nearly always consecutive.
        # Before complete_from jumps are normal: the NAPI moves between CPUs
        # and the other CPU's reserves there were overwritten (4 recordings,
        # 2026-11-29: 20-94 jumps each, all before the later CPU's first event;
        # none after it (about 85k reserves in all); recursion_misses 0). After it, CI
        # under heavy load once saw 38 in 15.8k (0.24 %), cause not found; the
        # analyzer must (and does) survive that, and the order never went back.
        steps = [(b[0] - a[0]) & 0xFFFFFFFF for a, b in zip(slots, slots[1:])]
        assert all(0 < d < 1 << 31 for d in steps), [(a, b) for a, b in zip(slots, slots[1:]) if b[0] <= a[0]][:5]
        jumps = [d for d in steps if d != 1]
        assert len(jumps) <= max(2, len(steps) // 100), (len(jumps), len(steps), jumps[:10])
    taken = {addr for slots in reserved.values() for _, addr in slots}
    assert len(read & taken) >= 0.9 * min(len(read), len(taken)), "reserve addrs are not the RX descriptors read"
    tx = {e[3]["addr"] for e in events if e[2] == "tx_get_data"}
    assert len(tx & sent) >= 0.9 * len(tx), "tx_get_data addrs are not the descriptors sent"
    # Each flush publishes the slots its CPU reserved before it on that socket. Per
    # CPU: the flush line is printed at the napi_poll tracepoint, after the poll
    # returned, and by then the NAPI may already run on the other CPU and have
    # reserved slots there (seen in CI: a flush line 2 slots behind them).
    last_slot: dict[tuple[int, int], int] = {}
    checked = 0
    for cpu, ts, name, f, body in events:
        if name == "rx_reserve":
            last_slot[f["xs"], cpu] = f["slot"]
        elif name == "flush" and (f["xs"], cpu) in last_slot:
            assert (f["prod"] - last_slot[f["xs"], cpu] - 1) & 0xFFFFFFFF < 1 << 31, body
            checked += 1
    assert checked >= 1000

    analyze = run("analyze", str(out / "trace.txt"), timeout=120)
    assert analyze.returncode == 0, analyze.stdout + analyze.stderr
    data = json.loads(run("analyze", "--json", str(out / "trace.txt"), timeout=120).stdout)
    assert data["verdict"] == "clean"
    assert data["stats"]["events"]["reserve"] == kinds["rx_reserve"]
    assert data["stats"]["events"]["flush"] == kinds["flush"]
    assert data["stats"]["events"]["tx"] == kinds["tx_get_data"]


def test_double_fill_evidence_has_kernel_reserves(machine, artifacts_dir):
    out = artifacts_dir / "bpf-double-fill"
    proc = run(
        "record",
        "-o",
        str(out),
        "--duration",
        "10",
        "--kernel-events",
        "bpf",
        "--inject",
        "double-fill",
        "--plain",
        timeout=90,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["verdict"] == "application", analysis["verdict"]
    first = analysis["anomalies"][0]
    addr = first["addr"]
    reserves = [e for e in first["evidence"] if "bpf_trace_printk: flightrec rx_reserve" in e["text"]]
    assert reserves, f"no kernel reserve event in the evidence: {json.dumps(first['evidence'], indent=1)}"
    assert all(f"addr={addr}" in e["text"] for e in reserves)
    # The kernel took the duplicated descriptor twice, into two slots.
    slots = {re.search(r"slot=(0x[0-9a-f]+)", e["text"]).group(1) for e in reserves}
    assert len(slots) >= 2, reserves


def test_sigint_detaches_and_restores(machine, tmp_path):
    proc = start("record", "-o", str(tmp_path / "int"), "--duration", "30", "--kernel-events", "bpf", "--plain")
    reg = wait_forwarding(proc)
    assert any(p["what"] == "xsk_trace" for p in reg["processes"]), reg
    assert loaded_programs() == PROG_NAMES
    instance = tracefs.ensure_mounted() / "instances" / reg["instance"]
    # "1*": enabled, in soft mode since the online race detector's trigger sits on the event
    assert (instance / tracefs.PRINTK_EVENT).read_text().strip() == "1*"
    # The kernel lists it as "traceoff:unlimited if bpf_string ~ ..."
    trigger = (instance / kernel_events.RACE_TRIGGER_FILE).read_text()
    assert trigger.startswith("traceoff") and kernel_events.RACE_TRIGGER.split(" if ")[1] in trigger, trigger
    assert printk_enable() == machine["printk_enable"], "top-level bpf_trace_printk left enabled"
    stdout, stderr = interrupt(proc)
    assert proc.returncode == 128 + signal.SIGINT, stdout + stderr
    meta = json.loads((tmp_path / "int" / "meta.json").read_text())
    assert meta["kernel_events"]["bpf"]["exit_code"] == 0
    assert registry() is None


def test_sigkill_then_cleanup(machine, tmp_path):
    proc = start("record", "-o", str(tmp_path / "killed"), "--duration", "30", "--kernel-events", "bpf", "--plain")
    reg = wait_forwarding(proc)
    loader = next(p for p in reg["processes"] if p["what"] == "xsk_trace")
    assert loaded_programs() == PROG_NAMES
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    # The loader dies with flightrec (parent-death signal), and its links with it.
    assert wait_unloaded() == set()
    assert state.process_start_time(loader["pid"]) is None
    dry = run("cleanup", "--dry-run", timeout=30)
    assert "bpf_printk_toplevel" in dry.stdout, dry.stdout
    done = run("cleanup", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert registry() is None
    assert reg["instance"] not in tracefs.list_instances()
