"""Zero-copy checks: RX order is not FILL order there, ownership still is.

A zero-copy driver takes FILL entries into its own ring ahead of the packets
and reuses a buffer it dropped (the pool's free list) before FILL, so a
descriptor can come out of RX after others FILL'd later. meta.json's
`af_xdp.sockets[].mode` tells the analyzer which sockets were bound so.
"""

from __future__ import annotations

from flightrec.analysis import analyze_bytes
from flightrec.parse.fields import parse_detection
from flightrec.parse.meta import zerocopy_sockets

from tracegen import mark, reserve

SOCK = "outer q:0"


def zc_meta(mode: str = "zerocopy") -> dict:
    return {"af_xdp": {"sockets": [{"sock": SOCK, "mode": mode}, {"sock": "inner q:0", "mode": "copy"}]}}


def trace(*marks: str, reserves: dict[int, float] | None = None) -> bytes:
    """Markers of SOCK, one per 10 µs on CPU 0; `reserves`: addr -> when the kernel reserved it, CPU 1."""
    timed = [(1.0 + i * 1e-5, mark(1.0 + i * 1e-5, 0, f"{SOCK} {m}")) for i, m in enumerate(marks)]
    timed += [(ts, reserve(ts, 1, addr)) for addr, ts in (reserves or {}).items()]
    return ("# tracer: nop\n" + "".join(line for _, line in sorted(timed))).encode()


# Three frames into FILL; the driver drops the first one's packet (XDP_PASS
# before the socket was in the map) and reposts it after the other two.
REORDERED = (
    "0x1000 FREE -> FILL",
    "0x2000 FREE -> FILL",
    "0x3000 FREE -> FILL",
    "0x2000 FILL -> RX",
    "0x3000 FILL -> RX",
    "0x1000 FILL -> RX",
)
REORDER_RESERVES = {0x2000: 1.00003, 0x3000: 1.000045, 0x1000: 1.000055}


def test_meta_names_the_zero_copy_sockets():
    assert zerocopy_sockets(zc_meta()) == frozenset({SOCK})
    assert zerocopy_sockets(zc_meta("copy")) == frozenset()
    assert zerocopy_sockets(None) == frozenset()
    assert zerocopy_sockets({"af_xdp": {"sockets": "garbage"}}) == frozenset()


def test_reordered_rx_is_clean_on_a_zero_copy_socket():
    result = analyze_bytes(trace(*REORDERED, reserves=REORDER_RESERVES), "zc.txt", meta=zc_meta())
    assert result.anomalies == (), [a.explanation for a in result.anomalies]
    assert result.stats()["fill_order_unchecked"] == [SOCK]


def test_the_same_order_in_copy_mode_breaks_fill_order():
    result = analyze_bytes(trace(*REORDERED, reserves=REORDER_RESERVES), "copy.txt", meta=zc_meta("copy"))
    assert [a.kind for a in result.anomalies][:1] == ["fill_order"], result.anomalies
    assert result.stats()["fill_order_unchecked"] == []


def test_a_double_fill_is_still_the_applications_in_zero_copy():
    # 0x1000 goes round once, then the application puts it into FILL twice:
    # the kernel hands it out twice, and the second read finds it in RX.
    marks = (
        "0x1000 FREE -> FILL",
        "0x2000 FREE -> FILL",
        "0x1000 FILL -> RX",
        "0x1000 RX -> TX",
        "0x1000 TX -> COMP",
        "0x1000 COMP -> FILL",
        "0x1000 COMP -> FILL",
        "0x1000 FILL -> RX",
        "0x1000 FILL -> RX",
    )
    result = analyze_bytes(trace(*marks), "zc.txt", meta=zc_meta())
    assert result.anomalies, "a double fill went unseen in zero-copy"
    assert result.verdict == "application", [(a.kind, a.verdict, a.explanation) for a in result.anomalies]


def test_the_forwarders_zero_copy_poison_line():
    assert parse_detection("poison").kind == "poison"
    marks = ("0x1000 FREE -> FILL", "0x2000 FREE -> FILL", "0x2000 FILL -> RX", "0xdeadbeefdeadbeef FILL -> RX: poison")
    result = analyze_bytes(trace(*marks), "zc.txt", meta=zc_meta())
    kinds = [a.kind for a in result.anomalies]
    assert kinds == ["poison_read"], [(a.kind, a.explanation) for a in result.anomalies]
    assert "None" not in result.anomalies[0].explanation
