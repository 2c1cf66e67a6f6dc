"""The simulator itself: its text is well-formed ftrace, its ground truth holds.

These tests replay the simulated trace independently of the analyzer (a few
regular expressions and a deque), so a bug in the simulator cannot hide
behind a matching bug in `flightrec analyze`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict, deque

import pytest

from flightrec.errors import FlightrecError
from flightrec.simulate import FAULTS, POISON, SimConfig, simulate

FTRACE_EVENT = re.compile(
    r"^ *(?P<task>.{1,16})-(?P<pid>\d+) +\[(?P<cpu>\d{3})\] (?P<flags>[.dDbBnNpPhHsSzZ0-9a-f]{5}) +"
    r"(?P<sec>\d+)\.(?P<usec>\d{6}): (?P<event>[\w.]+): (?P<body>.*)$"
)
TRACECMD_EVENT = re.compile(
    r"^ *(?P<task>.{1,16})-(?P<pid>\d+) +\[(?P<cpu>\d{3})\] +"
    r"(?P<sec>\d+)\.(?P<usec>\d{6}): (?P<event>[\w.]+): +(?P<body>.*)$"
)
FTRACE_OTHER = re.compile(r"^(#.*|##### CPU \d+ buffer started ####|CPU:\d+ \[LOST( \d+)? EVENTS\])$")
TRACECMD_OTHER = re.compile(r"^(cpus=\d+|CPU:\d+ \[(\d+ )?EVENTS DROPPED\])$")
# docs/markers.md
SOCK = r"(?P<sock>[A-Za-z][\w.-]* q:\d+)"
TRANSITION = re.compile(
    SOCK + r" (?P<addr>0x[0-9a-f]+) (?P<frm>FREE|FILL|RX|TX|COMP) -> (?P<to>FREE|FILL|RX|TX|COMP)(?P<rest>: .*)?$"
)
NOTE = re.compile(r"^(?P<addr>0x[0-9a-f]+) \w+( \w+)*$")
DETECTION = re.compile(
    r": (expected (?P<exp>0x[0-9a-f]+) ?remaining: \[[0-9a-f, .…]*\]|invalid, was (FREE|FILL|RX|TX|COMP))$"
)
VALID = {
    ("FREE", "FILL"),
    ("FREE", "TX"),
    ("FILL", "RX"),
    ("RX", "TX"),
    ("RX", "FILL"),
    ("RX", "FREE"),
    ("TX", "COMP"),
    ("COMP", "FILL"),
    ("COMP", "TX"),
    ("COMP", "FREE"),
}
GRID = [(seed, cpus) for seed, cpus in zip(range(12), [2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 8, 5])]


def events(text: str, fmt: str = "ftrace"):
    """(lineno, cpu, ts_us, event, body, task) of every event line; asserts every other line is known."""
    ev_re, other_re = (FTRACE_EVENT, FTRACE_OTHER) if fmt == "ftrace" else (TRACECMD_EVENT, TRACECMD_OTHER)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        m = ev_re.match(line)
        if m:
            body = m["body"]
            if fmt == "trace-cmd" and m["event"] == "print":
                assert body.startswith("tracing_mark_write: "), line
                ev, body = "tracing_mark_write", body[len("tracing_mark_write: ") :]
            else:
                ev = m["event"]
            out.append((n, int(m["cpu"]), int(m["sec"]) * 1_000_000 + int(m["usec"]), ev, body, m["task"].strip()))
        else:
            assert other_re.match(line), f"line {n} is neither an event nor a known {fmt} line: {line!r}"
    return out


def fields(body: str) -> dict:
    return dict(kv.split("=", 1) for kv in body.split() if "=" in kv)


def test_deterministic():
    cfg = SimConfig(seed=11, cpus=5, packets=800, fault="double-fill", wrap=True)
    a, b = simulate(cfg), simulate(cfg)
    assert a.text == b.text
    assert a.truth == b.truth
    assert simulate(SimConfig(seed=12, cpus=5, packets=800, fault="double-fill", wrap=True)).text != a.text


@pytest.mark.parametrize("fmt", ["ftrace", "trace-cmd"])
@pytest.mark.parametrize("seed,cpus", GRID[:6])
def test_well_formed(seed, cpus, fmt):
    sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=1200, fmt=fmt, wrap=seed % 2 == 0))
    evs = events(sim.text, fmt)
    assert len(evs) == sim.truth.events
    assert len(sim.text.splitlines()) == sim.truth.lines
    assert {c for _, c, *_ in evs} <= set(range(cpus))
    ts = [e[2] for e in evs]
    assert ts == sorted(ts), "lines must be merged across CPUs in timestamp order"
    kinds = defaultdict(int)
    for _, _, _, ev, body, task in evs:
        assert len(task) <= 15 or task == "<idle>", task
        if ev == "tracing_mark_write":
            m = TRANSITION.match(body)
            assert m or NOTE.match(body), f"marker outside docs/markers.md: {body!r}"
            kinds["marker"] += 1
        elif ev.startswith("__xsk_rcv_zc"):
            assert {"addr", "len", "xs", "fq"} <= fields(body).keys()
            kinds["reserve"] += 1
        elif ev.startswith("xsk_flush"):
            assert "xs" in fields(body)
            kinds["flush"] += 1
        elif ev.startswith("xp_raw_get_data"):
            assert "addr" in fields(body)
            kinds["tx"] += 1
        elif ev == "cq_submit":
            assert {"addr", "xs", "cq", "slot"} <= fields(body).keys()
            kinds["cq_submit"] += 1
        else:
            pytest.fail(f"unexpected event {ev}")
    assert min(kinds["marker"], kinds["reserve"], kinds["flush"], kinds["tx"], kinds["cq_submit"]) > 0, kinds
    if fmt == "ftrace":
        head = sim.text.splitlines()[:2]
        assert head[0] == "# tracer: nop"
        m = re.match(r"# entries-in-buffer/entries-written: (\d+)/(\d+)   #P:(\d+)$", head[1])
        assert m and int(m[1]) == len(evs) and int(m[3]) == cpus
    else:
        assert sim.text.startswith(f"cpus={cpus}\n")


@pytest.mark.parametrize("seed,cpus", GRID)
def test_clean_trace_replays_clean(seed, cpus):
    """Per socket: reserve order == FILL insert order == FILL -> RX order, every read was
    published by a flush of its xs on the reserving CPU, and every transition is valid."""
    sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=1500))
    assert sim.truth.anomaly is None and sim.truth.detection_line is None
    xs_of = {s: int(v["xs"], 16) for s, v in sim.truth.sockets.items()}
    sock_of = {x: s for s, x in xs_of.items()}
    fill = defaultdict(deque)  # sock -> FILL order the application produced
    reserved = defaultdict(deque)  # sock -> (addr, cpu) reserved, not yet flushed
    published = defaultdict(deque)  # sock -> addrs published by a flush
    state = {}
    for n, cpu, _, ev, body, _ in events(sim.text):
        f = fields(body)
        if ev.startswith("__xsk_rcv_zc"):
            sock = sock_of[int(f["xs"], 16)]
            assert int(f["addr"], 16) == fill[sock].popleft(), f"line {n}: reserve out of FILL order"
            reserved[sock].append((int(f["addr"], 16), cpu))
        elif ev.startswith("xsk_flush"):
            sock = sock_of[int(f["xs"], 16)]
            assert reserved[sock], f"line {n}: flush with nothing reserved"
            while reserved[sock]:
                addr, rcpu = reserved[sock].popleft()
                assert rcpu == cpu, f"line {n}: clean flush on CPU {cpu} published CPU {rcpu}'s reserve"
                published[sock].append(addr)
        elif ev == "tracing_mark_write" and (m := TRANSITION.match(body)):
            assert m["rest"] is None, f"line {n}: detection line in a clean trace"
            addr = int(m["addr"], 16)
            assert (m["frm"], m["to"]) in VALID, body
            assert state.get(addr, m["frm"]) == m["frm"], f"line {n}: {body} but state was {state.get(addr)}"
            state[addr] = m["to"]
            if m["to"] == "FILL":
                fill[m["sock"]].append(addr)
            if m["to"] == "RX":
                assert published[m["sock"]].popleft() == addr, f"line {n}: read not what was published"
    assert len(state) > 100


@pytest.mark.parametrize("fault", ["publish-race", "stale-slot"])
@pytest.mark.parametrize("seed,cpus", GRID[:8])
def test_race_truth_matches_lines(fault, seed, cpus):
    sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=1500, fault=fault, fmt="ftrace"))
    t, lines = sim.truth, sim.text.splitlines()
    a = t.anomaly
    assert a["verdict"] == "kernel" and a["reserve_cpu"] != a["flush_cpu"]
    ev = t.evidence_lines
    assert ev["b_reserve"] < ev["reserve"] < ev["flush"] < ev["detection"]
    res, fl, own = (FTRACE_EVENT.match(lines[ev[k] - 1]) for k in ("reserve", "flush", "own_flush"))
    assert int(res["cpu"]) == a["reserve_cpu"] and fields(res["body"])["addr"] == a["expected"]
    assert fields(res["body"])["xs"] == a["xs"] == fields(fl["body"])["xs"]
    assert int(fl["cpu"]) == a["flush_cpu"] and int(own["cpu"]) == a["reserve_cpu"]
    det = lines[t.detection_line - 1]
    assert f" {a['addr']} FILL -> RX: expected {a['expected']}" in det
    assert (a["addr"] == f"{POISON:#x}") == (fault == "publish-race")
    assert t.detection_line >= len(lines) - 40, "tracing stops right after the detection"


@pytest.mark.parametrize("seed,cpus", GRID[:8])
def test_application_faults_truth(seed, cpus):
    lines_of = {}
    for fault in ("double-fill", "fill-and-tx", "invalid-transition"):
        sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=1500, fault=fault, probes="none"))
        t, lines = sim.truth, sim.text.splitlines()
        assert t.anomaly["verdict"] == "application"
        addr = t.anomaly["addr"]
        assert not any("__xsk_rcv_zc" in ln or "xsk_flush" in ln for ln in lines), "probes=none: markers only"
        if fault == "invalid-transition":
            assert re.search(f" {addr} FILL -> TX(: invalid, was FILL)?$", lines[t.detection_line - 1])
            continue
        first, second = t.evidence_lines["insert1"], t.evidence_lines["insert2"]
        want = (" -> FILL", " -> FILL") if fault == "double-fill" else ("RX -> FILL", "RX -> TX")
        assert lines[first - 1].endswith(f" {addr} " + want[0].strip()) or want[0] in lines[first - 1]
        assert f" {addr} " in lines[first - 1] and f" {addr} " in lines[second - 1]
        assert lines[second - 1].endswith(want[1])
        between = lines[first : second - 1]
        assert not any(f" {addr} FILL -> RX" in ln for ln in between), "no RX of it in between"
        assert t.detection_line > second
        lines_of[fault] = t.detection_line
    assert lines_of


def test_double_fill_symptom_on_another_address():
    """Some seeds show the duplicate only as a FILL-order break on a different descriptor."""
    other = 0
    for seed in range(20):
        a = simulate(SimConfig(seed=seed, cpus=4, packets=1000, fault="double-fill")).truth.anomaly
        if a["symptom"]["addr"] != a["addr"]:
            assert a["symptom"]["expected"] is not None
            other += 1
    assert 0 < other < 20


@pytest.mark.parametrize("fmt", ["ftrace", "trace-cmd"])
def test_wrap(fmt):
    sim = simulate(SimConfig(seed=3, cpus=4, packets=3000, fault="publish-race", wrap=True, fmt=fmt))
    t = sim.truth
    assert t.wrap["dropped"], "some CPU must have overrun"
    evs = events(sim.text, fmt)
    first = {}
    for _, cpu, ts, *_ in evs:
        first.setdefault(cpu, ts)
    assert len(set(first.values())) == len(first), "each CPU's surviving data starts at its own time"
    if fmt == "ftrace":
        m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", sim.text)
        assert int(m[1]) < int(m[2])
        started = re.findall(r"^##### CPU (\d+) buffer started ####$", sim.text, re.M)
        assert len(started) == len(first) - 1  # all but the CPU of the very first line
    else:
        drops = dict(re.findall(r"^CPU:(\d+) \[(\d+) EVENTS DROPPED\]$", sim.text, re.M))
        assert {int(c): int(n) for c, n in drops.items()} == {int(c): n for c, n in t.wrap["dropped"].items()}
    # the fault's story survives the wrap
    assert t.evidence_lines.keys() >= {"b_reserve", "reserve", "flush", "detection"}


@pytest.mark.parametrize("fmt", ["ftrace", "trace-cmd"])
@pytest.mark.parametrize("seed,cpus", GRID[:6])
def test_tight_overrun(seed, cpus, fmt):
    """Each CPU's buffer begins at its own point a few of its events before the fault; the racing
    CPU's first surviving event is its reserve, and the text says each CPU's buffer began late."""
    sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=1200, fault="publish-race", tight=True, fmt=fmt))
    t = sim.truth
    evs = events(sim.text, fmt)
    first = {}
    for n, cpu, ts, *_ in evs:
        first.setdefault(cpu, n)
    racing = next(c for n, c, *_ in evs if n == t.evidence_lines["reserve"])
    assert first[racing] == t.evidence_lines["reserve"], "the racing CPU's buffer begins at its reserve"
    assert t.wrap["tight"] and t.wrap["dropped"][str(racing)] > 0
    detection = t.detection_line
    for cpu, n in first.items():
        assert n < detection, f"CPU {cpu}'s buffer begins after the detection"
    if fmt == "ftrace":
        m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", sim.text)
        assert int(m[1]) == len(evs) < int(m[2])
        started = re.findall(r"^##### CPU (\d+) buffer started ####$", sim.text, re.M)
        assert len(started) == len(first) - 1
    else:
        drops = dict(re.findall(r"^CPU:(\d+) \[(\d+) EVENTS DROPPED\]$", sim.text, re.M))
        assert {int(c): int(n) for c, n in drops.items()} == {int(c): n for c, n in t.wrap["dropped"].items()}
    assert t.anomaly["verdict"] in ("kernel", "undetermined")
    if t.anomaly["verdict"] == "undetermined":
        assert t.anomaly["missing"] and t.anomaly["reserve_cpu"] is None


def test_tight_and_wrap_are_one_or_the_other():
    with pytest.raises(FlightrecError):
        simulate(SimConfig(tight=True, wrap=True))


@pytest.mark.parametrize("fault", FAULTS)
def test_loss_inside_window(fault):
    sim = simulate(SimConfig(seed=8, cpus=3, packets=1500, fault=fault, loss=True))
    t, lines = sim.truth, sim.text.splitlines()
    assert len(t.loss) == 1
    loss = t.loss[0]
    assert re.match(rf"CPU:{loss['cpu']} \[LOST ({loss['count']} )?EVENTS\]$", lines[loss["line"] - 1])
    if fault == "none":
        assert t.anomaly is None
        return
    start = min(v for k, v in t.evidence_lines.items() if k in ("b_reserve", "x_read", "insert1"))
    assert start < loss["line"] < t.detection_line
    assert t.anomaly["verdict"] == ("application" if fault == "invalid-transition" else "undetermined")


def test_markers_only_kernel_fault_is_undetermined():
    t = simulate(SimConfig(seed=2, cpus=2, packets=1000, fault="publish-race", probes="none")).truth
    assert t.anomaly["verdict"] == "undetermined" and t.anomaly["missing"] == ["reserve", "flush"]


def test_every_fault_cpu_count_and_format_simulates():
    """The simulator's own invariants (asserted inside) hold across the grid."""
    n, tasks = 0, set()
    for fault in FAULTS:
        for seed, cpus in GRID:
            for wrap in (False, True):
                sim = simulate(
                    SimConfig(
                        seed=seed,
                        cpus=cpus,
                        packets=600,
                        fault=fault,
                        wrap=wrap,
                        fmt="trace-cmd" if seed % 3 == 0 else "ftrace",
                    )
                )
                assert (sim.truth.anomaly is None) == (fault == "none")
                tasks |= {s["task"] for s in sim.truth.sockets.values()}
                n += 1
    assert n == len(FAULTS) * len(GRID) * 2
    assert any(" " in t for t in tasks) and any(t.count("-") > 1 for t in tasks), tasks


@pytest.mark.parametrize("bad", [dict(cpus=1), dict(cpus=9), dict(fault="nope"), dict(packets=3), dict(fmt="x")])
def test_bad_config(bad):
    with pytest.raises(FlightrecError):
        simulate(SimConfig(**bad))


def test_cli(tmp_path):
    out, truth = tmp_path / "t.txt", tmp_path / "t.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flightrec",
            "simulate",
            "--seed",
            "4",
            "--cpus",
            "3",
            "--packets",
            "500",
            "--fault",
            "fill-and-tx",
            "-o",
            str(out),
            "--truth",
            str(truth),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    t = json.loads(truth.read_text())
    assert t["anomaly"]["verdict"] == "application"
    assert out.read_text() == simulate(SimConfig(seed=4, cpus=3, packets=500, fault="fill-and-tx")).text
    r = subprocess.run(
        [sys.executable, "-m", "flightrec", "simulate", "--cpus", "3", "--packets", "300"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.startswith("# tracer: nop") and json.loads(r.stderr)["anomaly"] is None
    r = subprocess.run([sys.executable, "-m", "flightrec", "simulate", "--cpus", "12"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "flightrec", "simulate", "-o", str(tmp_path / "no" / "x.txt")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("flightrec: ") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "flightrec", "simulate", "--help"], capture_output=True, text=True)
    assert "Examples:" in r.stdout
