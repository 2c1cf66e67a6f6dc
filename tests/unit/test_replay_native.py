"""The replay's walk in C (flightrec/_replay.c) and in Python must give the same Replay."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import re

import pytest

from flightrec.model import replay_native
from flightrec.model.replay import _native_columns, replay, replay_python
from flightrec.model.timeline import build_timeline
from flightrec.parse import scan
from flightrec.parse.events import parse_trace
from flightrec.simulate import FAULTS, SimConfig, simulate

pytestmark = pytest.mark.skipif(
    not (scan.available() and replay_native.available()),
    reason="flightrec/_scan.so or _replay.so is not built: run `make`",
)


def assert_same(data: bytes, unordered: frozenset[str] = frozenset()) -> None:
    tl = build_timeline(*parse_trace(data), "c")
    assert _native_columns(tl, unordered) is not None, "the C walk was not taken"
    fast, slow = replay(tl, unordered), replay_python(tl, unordered)
    for name in ("reads", "bad", "detections", "sock_xs", "ties", "flushes", "reserves", "kernel_events"):
        got, want = getattr(fast, name), getattr(slow, name)
        assert got == want, name
        if isinstance(want, dict):
            assert list(got) == list(want), f"{name}: order of keys"
    assert fast == slow


def test_fixtures(fixtures):
    for f in sorted(fixtures.glob("*.txt")):
        assert_same(f.read_bytes())


# Every fault, every kind of overrun, both marker forms and formats, 2 to 8 CPUs.
CASES = [
    (fault, seed, overrun, markers)
    for fault, seed, overrun, markers in itertools.product(
        FAULTS, range(3), ("none", "wrap", "loss", "tight"), ("per-descriptor", "batched")
    )
]


@pytest.mark.parametrize(("fault", "seed", "overrun", "markers"), CASES)
def test_simulated(fault, seed, overrun, markers):
    sim = simulate(
        SimConfig(
            seed=seed,
            cpus=2 + (seed * 3 + len(fault)) % 7,
            packets=300,
            fault=fault,
            wrap=overrun == "wrap",
            loss=overrun == "loss",
            tight=overrun == "tight",
            fmt="trace-cmd" if seed == 1 else "ftrace",
            markers=markers,
        )
    )
    assert_same(sim.text.encode())


@pytest.mark.parametrize("fault", ["none", "publish-race", "double-fill"])
def test_zero_copy_sockets_skip_the_fill_order_alike(fault):
    sim = simulate(SimConfig(seed=4, cpus=3, packets=300, fault=fault, pairs=2))
    tl = build_timeline(*parse_trace(sim.text.encode()), "c")
    socks = sorted({s for s in tl.sock if s is not None})
    assert_same(sim.text.encode(), frozenset(socks[:1]))


FILL_MARKER = re.compile(r"(tracing_mark_write: \S+ q:\d+ )(0x[0-9a-f]+)( \w+ -> FILL)$")


def test_a_trace_with_more_odd_rows_than_first_room():
    """Consecutive FILL markers' addresses swapped: reads out of FILL order and
    transitions out of turn, more than the walk's first buffers hold, so it walks again."""
    sim = simulate(SimConfig(seed=2, cpus=2, packets=2000, fault="none", pairs=1))
    out: list[str] = []
    held = None  # (index in out, match) of a FILL marker waiting for its partner
    for ln in sim.text.splitlines():
        m = FILL_MARKER.search(ln)
        if m is None:
            out.append(ln)
        elif held is None:
            held = (len(out), m)
            out.append(ln)
        else:
            i, h = held
            out[i] = h.string[: h.start(2)] + m.group(2) + h.string[h.end(2) :]
            out.append(ln[: m.start(2)] + h.group(2) + ln[m.end(2) :])
            held = None
    data = ("\n".join(out) + "\n").encode()
    slow = replay_python(build_timeline(*parse_trace(data), "c"))
    assert len(slow.reads) > 256 and len(slow.bad) > 64, (len(slow.reads), len(slow.bad))
    assert_same(data)


def test_a_real_trace_scaled_to_many_sockets(fixtures, tmp_path):
    """bench/analyze's --real scaling: 20 copies of a BPF-backend recording, each on
    its own sockets, kernel sockets and frames, half of the sockets never tied."""
    loader = importlib.machinery.SourceFileLoader("bench_analyze", str(fixtures.parent / "bench" / "analyze"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    bench = importlib.util.module_from_spec(spec)
    loader.exec_module(bench)
    path = tmp_path / "trace.txt"
    bench.scale_real(fixtures / "bpf-double-fill-overrun.txt", path, 30_000)
    data = path.read_bytes()
    tl = build_timeline(*parse_trace(data), "c")
    assert len(tl.arrays["socks"]) >= 40
    assert_same(data)
