"""The Perfetto export, read back against the trace-event rules it must follow.

The `perfetto` package's trace processor downloads its binary at run time, so
these tests are the reader: they re-bind every flow event to its slice the way
Perfetto's JSON importer does (a v1 flow event with bp "e" binds to the slice
enclosing it on its own thread track) and check what a user would follow.
"""

from __future__ import annotations

import bisect
import io
import json
from collections import defaultdict

import pytest

from flightrec.analysis import analyze_bytes, analyze_path, analyze_text
from flightrec.errors import FlightrecError
from flightrec.model.trips import descriptor_trips
from flightrec.report.perfetto import write_trace, write_trace_file
from flightrec.simulate import SimConfig, simulate

INSERTION = "->FILL "


def export(result, threads: bool = True) -> dict:
    buf = io.BytesIO()
    write_trace(result, buf, threads=threads)
    return json.loads(buf.getvalue())  # valid JSON or this raises


def us_to_ns(ts) -> int:
    return round(float(ts) * 1000)


class Reader:
    """What Perfetto's importer makes of the file: tracks, slices, flows."""

    def __init__(self, doc: dict):
        self.events = doc["traceEvents"]
        self.thread_names = {
            (e["pid"], e["tid"]): e["args"]["name"]
            for e in self.events
            if e["ph"] == "M" and e["name"] == "thread_name"
        }
        self.slices: dict[tuple[int, int], list[dict]] = defaultdict(list)
        for e in self.events:
            if e["ph"] == "X":
                self.slices[(e["pid"], e["tid"])].append(e)
        for track in self.slices.values():
            track.sort(key=lambda e: us_to_ns(e["ts"]))
        self.flows: dict[int, list[dict]] = defaultdict(list)
        for e in self.events:
            if e["ph"] in "stf":
                self.flows[e["id"]].append(e)
        self.instants = [e for e in self.events if e["ph"] == "i"]
        self._start_cache: dict = {}
        self._flow_cache: dict = {}
        self._by_addr = None

    def bound_slice(self, flow_event: dict) -> dict:
        """The one slice of the flow event's track that encloses it."""
        t = us_to_ns(flow_event["ts"])
        key = (flow_event["pid"], flow_event["tid"])
        track, starts = self.slices[key], self._starts(key)
        i = bisect.bisect_right(starts, t) - 1
        # slices of a track never overlap (checked), so only the last one starting before t can enclose it
        hits = [
            s for s in track[max(0, i - 1) : i + 2] if us_to_ns(s["ts"]) <= t < us_to_ns(s["ts"]) + us_to_ns(s["dur"])
        ]
        assert len(hits) == 1, f"flow event {flow_event} encloses {len(hits)} slices"
        return hits[0]

    def _starts(self, key) -> list[int]:
        if key not in self._start_cache:
            self._start_cache[key] = [us_to_ns(s["ts"]) for s in self.slices[key]]
        return self._start_cache[key]

    def flow(self, fid: int) -> list[dict]:
        """The slices of one flow, in the order the file gives its events."""
        if fid not in self._flow_cache:
            self._flow_cache[fid] = [self.bound_slice(e) for e in self.flows[fid]]
        return self._flow_cache[fid]

    def flows_of(self, addr: str) -> list[list[dict]]:
        if self._by_addr is None:
            self._by_addr = defaultdict(list)
            for fid in sorted(self.flows):
                for a in dict.fromkeys(s["args"]["addr"] for s in self.flow(fid) if "addr" in s["args"]):
                    self._by_addr[a].append(self.flow(fid))
        return self._by_addr.get(addr, [])


def check_rules(doc: dict, result) -> Reader:
    """Every rule of the format the export promises, on any trace."""
    r = Reader(doc)
    tl = result.timeline
    # one named track per CPU, holding all of the timeline's events
    for cpu in set(tl.cpu):
        assert r.thread_names[(1, cpu)] == f"CPU {cpu}"
    assert sum(len(s) for (pid, _), s in r.slices.items() if pid == 1) == len(tl)
    # µs from near zero; slices of one track never overlap (a flow would bind to two)
    starts = [us_to_ns(e["ts"]) for e in doc["traceEvents"] if "ts" in e]
    assert min(starts) == 0 and max(starts) <= (tl.ts[-1] - tl.ts[0]) * 1e9 + 1e6
    for key, track in r.slices.items():
        for a, b in zip(track, track[1:]):
            assert us_to_ns(a["ts"]) + us_to_ns(a["dur"]) < us_to_ns(b["ts"]), (key, a, b)
            assert us_to_ns(a["dur"]) > 0
    for (pid, _), track in r.slices.items():
        for e in track:
            if pid == 1:
                assert "line" in e["args"] and "task" in e["args"] and e["name"]
            else:  # an application thread: where it ran
                assert e["cat"] == "thread" and e["name"] == f"on CPU {e['args']['cpu']}"
    # flows: s first, f last, in time order, one trip of one descriptor each
    for fid, evs in r.flows.items():
        phases = [e["ph"] for e in evs]
        assert phases[0] == "s" and phases[-1] == "f" and set(phases[1:-1]) <= {"t"}, (fid, phases)
        times = [us_to_ns(e["ts"]) for e in evs]
        assert times == sorted(times), (fid, times)
        assert all(e["cat"] == "flow" and e["name"] == "descriptor" for e in evs)
        assert all(e["bp"] == "e" for e in evs[1:])
        slices = r.flow(fid)
        addrs = {s["args"]["addr"] for s in slices if "addr" in s["args"]}
        assert len(addrs) == 1, (fid, addrs)
        # a FILL insertion opens or closes a trip, never sits inside one: no id spans two trips
        inner = [s["name"] for s in slices[1:-1]]
        assert not any(INSERTION in n for n in inner), (fid, [s["name"] for s in slices])
        flushes = [s for s in slices if s["name"].startswith("xsk_flush")]
        assert all(
            s["args"]["xs"] in {x["args"].get("xs") for x in slices if x["name"].startswith("reserve")} for s in flushes
        )
    # anomalies: global instants carrying the verdict
    anomalies = [e for e in r.instants if e["cat"] == "anomaly"]
    assert [e["args"]["verdict"] for e in anomalies] == [a.verdict for a in result.anomalies]
    assert all(e["s"] == "g" for e in anomalies)
    assert doc["otherData"]["verdict"] == result.verdict
    return r


def test_seed_descriptor_flows_through_all_its_states(fixtures):
    result = analyze_path(str(fixtures / "seed-fill-order.txt"))
    r = check_rules(export(result), result)
    (trip,) = r.flows_of("0x16ce900")
    names = [s["name"].split(" ")[0] for s in trip]
    assert names == ["reserve", "FILL->RX", "note", "RX->TX", "tx_get_data", "TX->COMP", "COMP->FILL"]
    # the arrow crosses from the kernel's CPU 2 to the application's CPU 1
    assert [s["tid"] for s in trip][:2] == [2, 1]
    assert trip[0]["args"]["len"] == "0x4e" and trip[0]["args"]["fq"] == "0xffffa0c72db94c40"
    assert trip[-1]["args"]["sock"] == "ingress q:1" and trip[-1]["args"]["line"] == 21


def test_seed_poison_shows_the_cross_cpu_flush(fixtures):
    result = analyze_path(str(fixtures / "seed-poison.txt"))
    doc = export(result)
    r = check_rules(doc, result)
    (trip,) = r.flows_of("0x1000900")
    assert [(s["name"], s["tid"]) for s in trip] == [("reserve 0x1000900", 2), ("xsk_flush", 0)]
    assert trip[1]["args"]["line"] == 3  # CPU 0's flush, the first after the reserve, not CPU 2's own
    (anomaly,) = [e for e in r.instants if e["cat"] == "anomaly"]
    assert anomaly["args"]["verdict"] == "kernel" and anomaly["args"]["kind"] == "publish_race"
    assert anomaly["name"].startswith("KERNEL")
    # the poisoned read is drawn but belongs to no descriptor's flow
    poison = [s for s in r.slices[(1, 0)] if s["args"].get("addr") == "0xdeadbeefdeadbeef"]
    assert len(poison) == 1 and poison[0]["name"] == "FILL->RX POISON"
    assert not r.flows_of("0xdeadbeefdeadbeef")


def test_application_thread_tracks(fixtures):
    result = analyze_path(str(fixtures / "seed-fill-order.txt"))
    r = Reader(export(result, threads=True))
    assert r.thread_names[(2, 209120)] == "flowtrackd-p9zw-209120"
    (run,) = r.slices[(2, 209120)]  # the application stayed on CPU 1 for its 7 markers and notes
    assert run["name"] == "on CPU 1" and run["args"] == {"cpu": 1, "first_line": 14, "last_line": 25, "events": 7}
    assert all(e["pid"] == 1 for e in r.events if e["ph"] in "stf")
    r = Reader(export(result, threads=False))
    assert not any(pid == 2 for pid, _ in r.slices)


def test_thread_track_follows_a_migration():
    text = TRACE_HEAD + "".join(
        [
            line("fwd-10", 1, "10.000001", "tracing_mark_write", "in q:0 0x1000 COMP -> FILL"),
            line("fwd-10", 1, "10.000002", "tracing_mark_write", "in q:0 0x2000 COMP -> FILL"),
            line("fwd-10", 3, "10.000050", "tracing_mark_write", "in q:0 0x3000 COMP -> FILL"),
            line("other-11", 1, "10.000060", "tracing_mark_write", "out q:0 0x4000 COMP -> FILL"),
            line("other-11", 1, "10.000061", "sched_switch", 'prev_comm=other prev_pid=11 next_comm="x\\y"'),
        ]
    )
    result = analyze_text(text)
    r = check_rules(export(result), result)
    (other,) = [s for s in r.slices[(1, 1)] if s["cat"] == "other"]
    assert other["name"] == "sched_switch" and other["args"]["body"].endswith('next_comm="x\\y"')
    assert [(s["name"], s["args"]["events"]) for s in r.slices[(2, 10)]] == [("on CPU 1", 2), ("on CPU 3", 1)]
    assert [s["name"] for s in r.slices[(2, 11)]] == ["on CPU 1"]
    assert r.thread_names[(2, 11)] == "other-11"


def reference_trips(tl) -> list[list[int]]:
    """The trip rule as a plain replay, to hold the vectorized one against."""
    current, closed, pending = {}, [], {}
    for i, (k, a, x, to) in enumerate(zip(tl.kind, tl.addr, tl.xs, tl.to)):
        if k == "flush":
            for trip in pending.pop(x, []):
                if current.get(tl.addr[trip[0]]) is trip and trip[-1] != i:
                    trip.append(i)
            continue
        if a is None or a == 0xDEADBEEFDEADBEEF:
            continue
        if k == "marker" and to == "FILL":
            if a in current:
                current[a].append(i)
                closed.append(current[a])
            current[a] = [i]
            continue
        current.setdefault(a, []).append(i)
        if k == "reserve":
            pending.setdefault(x, []).append(current[a])
    trips = [t for t in closed + list(current.values()) if len(t) > 1]
    return sorted(trips)


TRACE_HEAD = "# tracer: nop\n"


def line(task: str, cpu: int, ts: str, event: str, body: str) -> str:
    return f"{task:>16} [{cpu:03d}] d..1. {ts}: {event}: {body}\n"


def test_flush_joins_only_the_trips_it_published():
    xs, other = "0xffff888100000400", "0xffff888100000800"
    text = TRACE_HEAD + "".join(
        [
            line("fwd-10", 1, "10.000001", "tracing_mark_write", "in q:0 0x1000 COMP -> FILL"),
            line("fwd-10", 1, "10.000002", "tracing_mark_write", "in q:0 0x2000 COMP -> FILL"),
            line("ksoftirqd/0-15", 0, "10.000010", "rx_reserve", f"addr=0x1000 len=0x40 xs={xs}"),
            line("ksoftirqd/2-25", 2, "10.000010", "rx_reserve", f"addr=0x2000 len=0x40 xs={xs}"),
            line("ksoftirqd/0-15", 0, "10.000010", "flush", f"xs={other}"),  # same µs, same CPU, another socket
            line("ksoftirqd/0-15", 0, "10.000011", "flush", f"xs={xs}"),
            line("ksoftirqd/2-25", 2, "10.000012", "flush", f"xs={xs}"),
            line("fwd-10", 1, "10.000020", "tracing_mark_write", "in q:0 0x1000 FILL -> RX"),
            line("fwd-10", 1, "10.000021", "tracing_mark_write", "in q:0 0x2000 FILL -> RX"),
            line("fwd-10", 1, "10.000030", "tracing_mark_write", "in q:0 0x1000 RX -> FILL"),
            line("fwd-10", 1, "10.000031", "tracing_mark_write", "in q:0 0x1000 FILL -> RX"),
        ]
    )
    result = analyze_text(text)
    r = check_rules(export(result), result)
    first, second = r.flows_of("0x1000")
    assert [s["args"]["line"] for s in first] == [2, 4, 7, 9, 11]  # line 6's flush was of another xs
    assert [s["args"]["line"] for s in second] == [11, 12]
    (trip,) = r.flows_of("0x2000")
    assert [s["args"]["line"] for s in trip] == [3, 5, 7, 10]  # CPU 0's flush, not CPU 2's later one
    # two events at one µs on CPU 0 got two distinct, non-overlapping slices
    cpu0 = [s["args"]["line"] for s in r.slices[(1, 0)]]
    assert cpu0 == [4, 6, 7]


@pytest.mark.parametrize(
    "cfg",
    [
        SimConfig(seed=11, cpus=4, packets=600),
        SimConfig(seed=12, cpus=3, packets=600, fault="publish-race"),
        SimConfig(seed=13, cpus=2, packets=600, fault="double-fill", wrap=True, fmt="trace-cmd"),
        SimConfig(seed=14, cpus=4, packets=600, fault="stale-slot", loss=True, probes="no-flush"),
    ],
    ids=["clean", "publish-race", "double-fill-wrapped-trace-cmd", "stale-slot-loss-no-flush"],
)
def test_simulated_traces_follow_the_rules(cfg):
    sim = simulate(cfg)
    result = analyze_text(sim.text, "sim")
    r = check_rules(export(result), result)
    tl = result.timeline
    # every descriptor that went round FILL more than once has one flow per trip
    insertions = defaultdict(int)
    for k, a, to in zip(tl.kind, tl.addr, tl.to):
        if k == "marker" and to == "FILL":
            insertions[a] += 1
    reused = [a for a, n in insertions.items() if n >= 2]
    assert reused, "the simulation should reuse descriptors"
    for a in reused[:20]:
        assert len(r.flows_of(f"{a:#x}")) >= insertions[a] - 1
    assert descriptor_trips(tl) == reference_trips(tl)
    assert len(r.flows) == len(reference_trips(tl))
    some = set(reused[:3])
    assert descriptor_trips(tl, some) == [t for t in reference_trips(tl) if tl.addr[t[0]] in some]
    if cfg.loss:
        assert any(e["cat"] == "loss" for e in r.instants)


def test_write_errors_are_flightrec_errors(tmp_path, fixtures):
    result = analyze_path(str(fixtures / "seed-poison.txt"))
    with pytest.raises(FlightrecError, match="does not exist"):
        write_trace_file(result, str(tmp_path / "missing" / "out.json"))
    with pytest.raises(FlightrecError, match="is a directory"):
        write_trace_file(result, str(tmp_path))
    out = tmp_path / "out.json"
    stats = write_trace_file(result, str(out))
    assert json.loads(out.read_text())["otherData"]["verdict"] == "kernel"
    assert stats.flows == 2 and stats.anomalies == 1 and stats.cpus == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_c_and_python_paths_write_the_same_bytes(monkeypatch, fixtures):
    """The C scanner + flightrec.bulk path and the pure-Python one, byte for
    byte, on a trace with odd task names, odd bodies and unknown events."""
    sim = simulate(SimConfig(seed=21, cpus=3, packets=400, fault="double-fill", loss=True))
    lines = sim.text.encode().splitlines(keepends=True)
    odd = [
        b' t\xc3\xa9sk "q"-77  [001] d.Z1. %s: __xsk_rcv_zc_L7: (__xsk_rcv_zc+0x9b/0x250) addr=0x1000 '
        b'len=0x42 n\xc3\xa9="\\\x01" =x y= xs=0xffff1 fq=0x2\n',
        b' bad\xff-78  [002] ..... %s: some_event: body \xff\xfe with="quotes"\n',
        b' bad\xff-78  [002] ..... %s: some_event: body \xff\xfe with="quotes"\n',
        b' app-79  [001] ...1. %s: tracing_mark_write: odd q:4 0xdeadbeefdeadbeef FILL -> RX: d\xc3\xa9tail "x" \xff\n',
        b" app-79  [001] ...1. %s: tracing_mark_write: odd q:4 0x1000 FREE -> FILL: \x01\n",
        b' app-79  [001] ...1. %s: tracing_mark_write: 0x1000 n\xc3\xb6te "q" \xfe\\\n',
    ]
    events = [i for i, line in enumerate(lines) if b"]" in line and not line.startswith(b"#")]
    for k, line in enumerate(odd):
        at = events[len(events) // 2 + k]
        ts = lines[at].split(b": ", 1)[0].rsplit(b" ", 1)[1]
        lines.insert(at + 1, line % ts)
    data = b"".join(lines)

    def write(pure: bool) -> bytes:
        if pure:
            monkeypatch.setenv("FLIGHTREC_PURE_PYTHON", "1")
        else:
            monkeypatch.delenv("FLIGHTREC_PURE_PYTHON", raising=False)
        buf = io.BytesIO()
        write_trace(analyze_bytes(data, "odd"), buf)
        return buf.getvalue()

    fast, slow = write(False), write(True)
    assert fast == slow
    doc = json.loads(fast)
    names = {e.get("args", {}).get("task") for e in doc["traceEvents"] if e["ph"] == "X"}
    assert 'tésk "q"-77' in names and "bad\ufffd-78" in names
    hit = next(e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("n\u00e9") is not None)
    assert hit["args"]["n\u00e9"] == '"\\\x01"' and hit["args"]["addr"] == "0x1000"
    assert hit["args"]["y"] == "" and "" not in hit["args"]  # "=x" names nothing
    assert sum(e["name"] == "some_event" and e["cat"] == "other" for e in doc["traceEvents"]) == 2
    marks = {e["name"]: e["args"] for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] in ("marker", "note")}
    assert marks["FILL->RX POISON"]["detail"] == 'd\u00e9tail "x" \ufffd'
    assert marks["FREE->FILL 0x1000"]["detail"] == "\x01"
    assert marks["note 0x1000"]["text"] == 'n\u00f6te "q" \ufffd\\'
