"""The Perfetto protobuf export, decoded with Perfetto's own schema (the
`perfetto` package's perfetto_trace_pb2) and held to the JSON export, whose
rules tests/unit/test_perfetto.py checks: the same slices on the same CPU
tracks at the same times, with the same fields and the same flows."""

from __future__ import annotations

import io
import json
from collections import defaultdict

import pytest

from flightrec import bulk
from flightrec.analysis import analyze_bytes, analyze_path
from flightrec.report import perfetto, pftrace
from flightrec.simulate import SimConfig, simulate

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2", reason="pip install -e '.[test]'")


def decode(result, threads: bool = True) -> pb.Trace:
    buf = io.BytesIO()
    pftrace.write_trace(result, buf, threads=threads)
    trace = pb.Trace()
    trace.ParseFromString(buf.getvalue())
    return trace


class Proto:
    """The trace as a reader builds it: tracks, slices with resolved names and
    annotations, flows by slice, instants."""

    def __init__(self, trace: pb.Trace):
        self.tracks = {
            p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")
        }
        (interned,) = [p for p in trace.packet if p.HasField("interned_data")]
        assert interned.sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
        d = interned.interned_data
        self.names = {n.iid: n.name for n in d.debug_annotation_names}
        self.strings = {s.iid: s.str.decode() for s in d.debug_annotation_string_values}
        self.cats = {c.iid: c.name for c in d.event_categories}
        self.begins: dict[int, list] = defaultdict(list)  # track -> [(ts, event)]
        self.ends: dict[int, list[int]] = defaultdict(list)
        self.instants = []
        for p in trace.packet:
            if not p.HasField("track_event"):
                continue
            assert p.trusted_packet_sequence_id == interned.trusted_packet_sequence_id
            e = p.track_event
            if e.type != pb.TrackEvent.TYPE_SLICE_END:  # these use the interned data
                assert p.sequence_flags == pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
            if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
                self.begins[e.track_uuid].append((p.timestamp, e))
            elif e.type == pb.TrackEvent.TYPE_SLICE_END:
                self.ends[e.track_uuid].append(p.timestamp)
            else:
                self.instants.append((p.timestamp, e))

    def value(self, a):
        kind = a.WhichOneof("value")
        if kind == "string_value_iid":
            return self.strings[a.string_value_iid]
        if kind == "pointer_value":
            return f"{a.pointer_value:#x}"
        if kind is None and (a.dict_entries or a.array_values):
            if a.dict_entries:
                return {x.name: self.value(x) for x in a.dict_entries}
            return [self.value(x) for x in a.array_values]
        return getattr(a, kind)

    def args(self, e) -> dict:
        return {(self.names[a.name_iid] if a.name_iid else a.name): self.value(a) for a in e.debug_annotations}


def json_of(result) -> dict:
    buf = io.BytesIO()
    perfetto.write_trace(result, buf)
    return json.loads(buf.getvalue())


def same_as_json(result) -> tuple[int, int]:
    """Every JSON slice is a protobuf slice on the same track, at the same ns,
    ending at the same ns, with the same name, category and fields; every
    slice is in the same flows, at the same place in them."""
    doc = json_of(result)
    got = Proto(decode(result))
    cpu_tracks = {t.name: uuid for uuid, t in got.tracks.items() if t.parent_uuid == pftrace.CPUS_TRACK}
    thread_tracks = {t.name: uuid for uuid, t in got.tracks.items() if t.parent_uuid == pftrace.THREADS_TRACK}
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }
    want: dict[int, list] = defaultdict(list)
    flows_json: dict[tuple[int, int], list] = defaultdict(list)  # (track, ts) -> [(flow id, phase)]
    for e in doc["traceEvents"]:
        name = names.get((e["pid"], e["tid"]))
        track = (cpu_tracks if e["pid"] == perfetto.CPU_PID else thread_tracks).get(name)
        if e["ph"] == "X":
            want[track].append(e)
        elif e["ph"] in "stf":
            flows_json[(track, round(float(e["ts"]) * 1000))].append((e["id"], "stf".index(e["ph"])))
    assert sorted(want) == sorted(got.begins)
    n_flows = n_slices = 0
    for track, events in want.items():
        begins = sorted(got.begins[track], key=lambda b: b[0])
        ends = sorted(got.ends[track])
        assert len(begins) == len(events) == len(ends)
        for e, (ts, b), end in zip(sorted(events, key=lambda e: float(e["ts"])), begins, ends):
            assert ts == round(float(e["ts"]) * 1000)
            assert end == ts + round(float(e["dur"]) * 1000)
            assert b.name == e["name"]
            assert got.cats[b.category_iids[0]] == e["cat"]
            args = got.args(b)
            assert args == {k: v for k, v in e["args"].items()}, (e, args)
            # v2 flows: an id on each of its slices, the last one's as terminating
            points = flows_json.get((track, ts), [])
            assert sorted(b.flow_ids) == sorted(f for f, phase in points if phase < 2)
            assert sorted(b.terminating_flow_ids) == sorted(f for f, phase in points if phase == 2)
            n_flows += len(points)
            n_slices += 1
    assert n_flows == sum(len(v) for v in flows_json.values())
    return n_slices, n_flows


def test_seed_fixture_matches_the_json(fixtures):
    result = analyze_path(str(fixtures / "seed-fill-order.txt"))
    slices, flow_points = same_as_json(result)
    assert slices > len(result.timeline) and flow_points > 0  # the thread tracks' runs too


@pytest.mark.parametrize(
    "cfg",
    [
        SimConfig(seed=3, cpus=4, packets=300, fault="publish-race"),
        SimConfig(seed=5, cpus=2, packets=200, fault="double-fill", markers="batched"),
        SimConfig(seed=7, cpus=3, packets=200, fault="stale-slot", loss=True),
    ],
    ids=["race", "double-fill", "loss"],
)
def test_simulated_traces_match_the_json(cfg):
    result = analyze_bytes(simulate(cfg).text.encode(), "sim")
    slices, flow_points = same_as_json(result)
    assert slices >= len(result.timeline) and flow_points > len(result.timeline) // 4


def test_every_fixture_decodes_with_one_end_per_begin(fixtures):
    for path in sorted(fixtures.glob("*.txt")):
        result = analyze_path(str(path))
        got = Proto(decode(result))
        for track, begins in got.begins.items():
            assert len(begins) == len(got.ends[track]), path.name
        assert sum(len(b) for b in got.begins.values()) >= len(result.timeline), path.name


def test_verdict_and_anomalies_are_instants(fixtures):
    result = analyze_path(str(fixtures / "seed-fill-order.txt"))
    got = Proto(decode(result))
    names = [e.name for _, e in got.instants]
    assert names[0] == f"verdict: {result.verdict}"
    assert [n for n in names if n.startswith(("KERNEL:", "APPLICATION:"))] == [
        f"{a.verdict.upper()}: {a.kind} at line {a.line}" for a in result.anomalies
    ]
    anomaly = [e for _, e in got.instants if e.name.startswith(("KERNEL:", "APPLICATION:"))][0]
    assert got.args(anomaly)["kind"] == result.anomalies[0].kind


def test_c_and_python_paths_write_the_same_bytes(monkeypatch, fixtures):
    if not bulk.available():
        pytest.skip("flightrec/_bulk.so is not built (make)")
    for name in ("seed-fill-order.txt", "bpf-double-fill-overrun.txt"):
        result = analyze_path(str(fixtures / name))
        c = io.BytesIO()
        pftrace.write_trace(result, c)
        monkeypatch.setenv("FLIGHTREC_PURE_PYTHON", "1")
        py = io.BytesIO()
        pftrace.write_trace(analyze_path(str(fixtures / name)), py)
        monkeypatch.delenv("FLIGHTREC_PURE_PYTHON")
        assert c.getvalue() == py.getvalue(), name


def test_rows_printed_in_parts_write_the_same_bytes(monkeypatch, fixtures):
    # the parts (CHUNK_ROWS) are an allocation matter only: a part boundary changes no byte
    result = analyze_path(str(fixtures / "bpf-double-fill-overrun.txt"))
    whole = io.BytesIO()
    pftrace.write_trace(result, whole)
    monkeypatch.setattr(pftrace, "CHUNK_ROWS", 7)
    parts = io.BytesIO()
    pftrace.write_trace(result, parts)
    assert parts.getvalue() == whole.getvalue() and len(result.timeline) > 7 * 10


def test_kernel_words_are_interned_and_hex_a_pointer(fixtures):
    # the probes' words take the short forms (same values as the JSON, test above): the site and the
    # format's field names by iid, kernel hex as pointer_value; a name the format lacks stays a string
    got = Proto(decode(analyze_path(str(fixtures / "seed-fill-order.txt"))))
    kernel = [e for begins in got.begins.values() for _, e in begins if got.cats[e.category_iids[0]] == "kernel"]
    probed = [e for e in kernel if "site" in got.args(e) and "xs" in got.args(e)]
    assert probed
    for e in probed:
        words = {got.names[a.name_iid]: a for a in e.debug_annotations if a.name_iid}
        assert got.strings[words["site"].string_value_iid] == got.args(e)["site"]
        assert words["xs"].WhichOneof("value") == "pointer_value"
    reserves = [e for e in kernel if "fq" in got.args(e)]
    assert reserves and all(a.name == "fq" for e in reserves for a in e.debug_annotations if not a.name_iid)
