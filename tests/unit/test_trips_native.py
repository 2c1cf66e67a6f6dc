"""The trips' walk in C (flightrec/_trips.c) against its numpy reference
(flightrec/model/trips.py's _flow_points_np): the same flow points, in the
same order, on every fixture, on simulated traces of every fault, and on
hand-written cases of the rules' corners."""

from __future__ import annotations

import pytest

from flightrec.analysis import analyze_bytes, analyze_path
from flightrec.model import trips
from flightrec.simulate import FAULTS, SimConfig, simulate

pytestmark = pytest.mark.skipif(not trips.available(), reason="flightrec/_trips.so is not built (make)")


def same(tl) -> int:
    arr = trips.columns(tl)
    c = trips.flow_points(tl, arr)
    ref = trips._flow_points_np(tl, arr)
    for got, want in zip(c, ref):
        assert got.tolist() == want.tolist()
    return len(c[0])


def test_fixtures(fixtures):
    points = [same(analyze_path(str(p)).timeline) for p in sorted(fixtures.glob("*.txt"))]
    assert sum(points) > 1000


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("seed,cpus,markers", [(1, 2, "per-descriptor"), (2, 4, "batched"), (3, 8, "batched")])
def test_simulated(fault, seed, cpus, markers):
    sim = simulate(SimConfig(seed=seed, cpus=cpus, packets=300, fault=fault, markers=markers))
    assert same(analyze_bytes(sim.text.encode(), "sim").timeline) > 300


HEAD = "# tracer: nop\n#\n"


def line(n: int, ts: float, cpu: int, text: str, task: str = "xsk-9") -> str:
    return f"{task:>16s} [{cpu:03d}] ..... {ts:.6f}: {text}\n"


def test_corners():
    # descriptor 0x1000: reserved twice on one xs before a flush (one point there), then
    # back into FILL before the next flush (that flush is not on its trip); 0x2000 reserved
    # on another xs whose flush never comes; a flush of an xs nobody reserved
    rx = "__xsk_rcv_zc_L7: (__xsk_rcv_zc+0x9b/0x250) addr={a} len=0x40 xs={xs} fq=0xf0"
    fl = "xsk_flush: (xsk_flush+0x0/0x40) xs={xs}"
    mk = "tracing_mark_write: in q:0 {a} FREE -> FILL"
    events = [
        mk.format(a="0x1000"),
        mk.format(a="0x2000"),
        rx.format(a="0x1000", xs="0xa"),
        rx.format(a="0x1000", xs="0xa"),
        rx.format(a="0x2000", xs="0xb"),
        fl.format(xs="0xa"),
        rx.format(a="0x1000", xs="0xa"),
        mk.format(a="0x1000"),
        fl.format(xs="0xa"),
        fl.format(xs="0xc"),
        mk.format(a="0x2000"),
    ]
    text = HEAD + "".join(line(i, 1.0 + i / 1e6, i % 2, e) for i, e in enumerate(events))
    tl = analyze_bytes(text.encode(), "corners").timeline
    assert same(tl) == 9
    fid, row, phase = trips.flow_points(tl)
    # 0x1000's first trip: FILL, its reserves, the first flush once, the reserve after it, the FILL that closes
    # it (its next trip is that FILL alone: no flow); 0x2000's: FILL, reserve, its next FILL
    assert row.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10]
    assert phase.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert len(set(fid[[0, 2, 3, 5, 6, 7]].tolist())) == 1 and fid[1] == fid[4] == fid[8] != fid[0]
