"""The C scanner and the Python parser must read every trace the same way."""

import random

import pytest

from flightrec.model.timeline import build_timeline
from flightrec.parse import scan
from flightrec.parse.events import parse_trace
from flightrec.simulate import SimConfig, simulate

pytestmark = pytest.mark.skipif(not scan.available(), reason="flightrec/_scan.so is not built: run `make`")

COLUMNS = ("kind", "addr", "xs", "length", "sock", "queue", "frm", "to", "detail", "detection", "slot", "prod")
PARSED = ("line", "pid", "cpu", "ts", "task", "flags", "event", "body")


def both(data: bytes):
    fast = build_timeline(*parse_trace(data), "c")
    slow = build_timeline(*parse_trace(data, pure=True), "py")
    return fast, slow


def assert_same(data: bytes):
    fast, slow = both(data)
    for name in PARSED:
        assert list(getattr(fast.parsed, name)) == list(getattr(slow.parsed, name)), name
    assert fast.column_names() == slow.column_names()
    for name in fast.column_names():
        assert getattr(fast, name) == getattr(slow, name), name
    assert set(COLUMNS) <= set(fast.column_names())
    for name in (
        "lines",
        "unparsed",
        "entries",
        "header_cpus",
        "cpu_started",
        "losses",
        "format",
        "cut_last_line",
        "instances",
    ):
        assert getattr(fast.parsed, name) == getattr(slow.parsed, name), name
    assert fast.window == slow.window and fast.losses == slow.losses


def test_fixtures(fixtures):
    for f in sorted(fixtures.glob("*.txt")):
        assert_same(f.read_bytes())


@pytest.mark.parametrize("markers", ["per-descriptor", "batched"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fmt", ["ftrace", "trace-cmd"])
def test_simulated(seed, fmt, markers):
    sim = simulate(
        SimConfig(
            seed=seed,
            cpus=2 + seed,
            packets=400,
            fault="double-fill",
            wrap=seed % 2 == 0,
            loss=seed % 3 == 0,
            fmt=fmt,
            markers=markers,
        )
    )
    assert_same(sim.text.encode())


def test_mutated_lines_read_alike(fixtures):
    """Random damage to real lines: both sides accept and reject the same ones."""
    rng = random.Random(7)
    base = (fixtures / "seed-fill-order.txt").read_bytes().splitlines(keepends=True)
    alphabet = b" -:.[]()0x19afAFqFILRXTCOMP=_>\t\xff\xc3"
    out = []
    for _ in range(3000):
        line = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            if len(line) < 2:
                break
            pos = rng.randrange(len(line) - 1)
            op = rng.random()
            if op < 0.4:
                line[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del line[pos]
            else:
                line.insert(pos, rng.choice(alphabet))
        out.append(bytes(line).replace(b"\n", b"") + b"\n")
    assert_same(b"".join(out))


def test_bpf_backend_lines():
    data = (
        b"          <idle>-0       [001] ..s2.  1234.500000: bpf_trace_printk: "
        b"flightrec rx_reserve xs=0xffff8881045f2000 q=0x1 slot=0x3e8 addr=0x1a000 len=0x4e\n"
        b"          <idle>-0       [001] ..s2.  1234.500001: bpf_trace_printk: "
        b"flightrec flush xs=0xffff8881045f2000 q=0x1 prod=0x3e9\n"
        b"          <idle>-0       [001] ..s2.  1234.500002: bpf_trace_printk: flightrec\ttx_get_data addr=0x1a000\n"
        b"          <idle>-0       [001] ..s2.  1234.500003: bpf_trace_printk: somebody else's printk addr=0x1\n"
    )
    fast, slow = both(data)
    assert fast.kind == slow.kind == ["reserve", "flush", "other", "other"]
    assert fast.slot[0] == 0x3E8 and fast.prod[1] == 0x3E9 and fast.xs[1] == 0xFFFF8881045F2000
    assert_same(data)


def test_cut_and_long_lines():
    data = b"x" * 70000 + b"\n" + b"  fwd-1 [000] ..... 1.000000: tracing_mark_write: outer q:0 0x1000 FREE -> FI"
    fast, slow = both(data)
    assert fast.parsed.cut_last_line and slow.parsed.cut_last_line
    assert fast.parsed.unparsed == slow.parsed.unparsed == 1


def test_a_new_kernel_field_and_event_are_rows_of_the_format():
    """The TX work's COMPLETION event with a `cons` field: one row of each table,
    and both parsers read it alike, with no change to either."""
    from flightrec.parse.format import CONTRACT, Format, KernelField

    # (filtered first, so the test still means something once the contract has them)
    fmt = Format(
        kinds=tuple(k for k in CONTRACT.kinds if k != "completion") + ("completion",),
        fields=tuple(f for f in CONTRACT.fields if f.name != "cons") + (KernelField("cons", "cons"),),
        events=tuple(e for e in CONTRACT.events if e[0] != "completion")
        + (("completion", ("xsk_comp", "xskq_prod_submit_addr"), ("addr", "cons")),),
    )
    data = (
        b"          <idle>-0       [001] ..s2.  1234.500000: bpf_trace_printk: "
        b"flightrec xsk_comp xs=0xffff8881045f2000 cons=0x3e8 addr=0x1a000\n"
        b"          <idle>-0       [001] ..s2.  1234.500001: xskq_prod_submit_addr_L2: "
        b"(xskq+0x1/0x9) addr=0x1b000 cons=0x3e9\n"
        b"          <idle>-0       [001] ..s2.  1234.500002: xsk_comp: addr=0x1c000\n"
        b"          <idle>-0       [001] ..s2.  1234.500003: xsk_comp: addr=0x1c000 cons=zz\n"
    )
    fast = build_timeline(*parse_trace(data, fmt), "c")
    slow = build_timeline(*parse_trace(data, fmt, pure=True), "py")
    for t in (fast, slow):
        assert t.kind == ["completion", "completion", "other", "other"]
        assert t.cons == [0x3E8, 0x3E9, None, None] and t.addr[:2] == [0x1A000, 0x1B000]
    assert fast.column_names() == slow.column_names()
    for name in fast.column_names():
        assert getattr(fast, name) == getattr(slow, name), name


def test_timestamps_read_as_python_floats():
    """The C scanner's fast decimal path rounds as float() does, long or short."""
    rng = random.Random(3)
    stamps = [
        f"{rng.randrange(10 ** rng.randint(1, 12))}.{rng.randrange(10 ** rng.randint(1, 12))}" for _ in range(20000)
    ]
    data = "".join(f" a-1 [000] .... {t}: foo: bar\n" for t in stamps).encode()
    fast, _ = parse_trace(data)
    assert fast.ts == [float(t) for t in stamps]


def test_short_lines_get_a_row_each():
    """Rows are sized for ftrace's long lines; a text of short ones is scanned again."""
    data = b"#\n" * 5000 + b"x\n" * 3000 + (FIXTURE_LINE * 3)
    fast, slow = both(data)
    assert len(fast) == 3 and fast.parsed.unparsed == slow.parsed.unparsed == 3000
    assert_same(data)


FIXTURE_LINE = b"  fwd-1 [000] ..... 1.000000: tracing_mark_write: outer q:0 0x1000 FREE -> FILL\n"


BATCH_BODIES = [
    "ingress q:1 COMP -> FILL 0x1000 0x1800 RX -> FILL 0x2000",
    "ingress q:1 FILL -> RX 0x1000",
    "0x10 egress_tx_queue forward; 0x20 egress_tx_queue forward pkt 7",
    "0x10 a; zz b",  # a piece is no note: one note, as before
    "0x10 a:; 0x20 b",
    "0x1 q:1 FILL -> RX 0x10",
    "0x1 q:1 FILL -> RX 0x10 0x20",  # a note about 0x1, as before
    "s q:1 FILL -> RX 0x10: poison",  # detection lines are never batched
    "s q:1 FILL -> RX 0x10 FILL",
    "s q:1 FILL -> RX 0x10 FILL -> RX",
    "s q:x FILL -> RX 0x10 0x20",
    "s q:1 FILL -> RX 0x10 0x20:",
    "s q:1 FILL -> RX 0x10; 0x20 x",
]


def batch_trace(bodies, event="tracing_mark_write"):
    return "".join(f"  fwd-1 [001] ....  100.{i:06d}: {event}: {b}\n" for i, b in enumerate(bodies)).encode()


def test_batched_lines_expand_alike():
    """A batched line is one row per descriptor on both paths, with its line, CPU and time."""
    fast, slow = both(batch_trace(BATCH_BODIES))
    assert_same(batch_trace(BATCH_BODIES))
    got = [
        (t.line[r], t.kind[r], t.sock[r], t.addr[r], t.frm[r], t.to[r], t.detail[r])
        for t in (fast,)
        for r in range(len(t))
    ]
    assert got[:6] == [
        (1, "marker", "ingress q:1", 0x1000, "COMP", "FILL", None),
        (1, "marker", "ingress q:1", 0x1800, "COMP", "FILL", None),
        (1, "marker", "ingress q:1", 0x2000, "RX", "FILL", None),
        (2, "marker", "ingress q:1", 0x1000, "FILL", "RX", None),
        (3, "note", None, 0x10, None, None, "egress_tx_queue forward"),
        (3, "note", None, 0x20, None, None, "egress_tx_queue forward pkt 7"),
    ]
    assert got[6] == (4, "note", None, 0x10, None, None, "a; zz b")
    assert [k for _, k, *_ in got[9:]] == ["marker", "note", "other", "other", "other", "other", "other", "other"]
    assert fast.ts[:3] == [100.0] * 3 and fast.cpu[:3] == [1] * 3


def test_batched_lines_grow_the_rows():
    """Many descriptors per line: more rows than the first guess, scanned again."""
    body = "outer q:0 COMP -> FILL " + " ".join(f"0x{a:x}" for a in range(0, 120 * 0x800, 0x800))
    data = batch_trace([body] * 50 + ["0x1 a; " * 100 + "0x2 b"], event="print").replace(
        b"print: ", b"print: 0xffffffff81000000: "
    )
    fast, slow = both(data)
    assert len(fast) == 50 * 120 + 101
    assert_same(data)


def test_mutated_batched_lines_read_alike():
    rng = random.Random(11)
    base = [batch_trace([b]) for b in BATCH_BODIES]
    alphabet = b" -:;.0x19afFILRXTCOMP>\t"
    out = []
    for _ in range(3000):
        line = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(line) - 1)
            op = rng.random()
            if op < 0.4:
                line[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del line[pos]
            else:
                line.insert(pos, rng.choice(alphabet))
        out.append(bytes(line).replace(b"\n", b"") + b"\n")
    assert_same(b"".join(out))
