"""The analyzer's verdicts on the post's excerpts and on small hand-made traces."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from flightrec.analysis import analyze_path, analyze_text

from tracegen import XS, flush, mark, reserve


def first(result):
    assert result.anomalies, "expected an anomaly"
    return result.to_json()["anomalies"][0]


def test_seed_fill_order_is_kernel(fixtures):
    r = analyze_path(str(fixtures / "seed-fill-order.txt"))
    a = first(r)
    assert len(r.anomalies) == 1
    assert (a["verdict"], a["addr"], a["expected"], a["reserve_cpu"]) == ("kernel", "0x1229100", "0x13d3900", 2)
    assert a["xs"] == "0xffffa0c6e26ab400" and a["queue"] == 1
    assert a["flush_cpu"] is None and any("flush" in m for m in a["missing"])
    lines = {e["line"] for e in a["evidence"]}
    assert {25, 19} <= lines  # the detection line and CPU 2's reserve of 0x13d3900
    assert "0x1dba100, 0x1627100" in a["explanation"]  # the kernel kept the app's FILL order


def test_seed_poison_is_kernel_race(fixtures):
    a = first(analyze_path(str(fixtures / "seed-poison.txt")))
    assert a["verdict"] == "kernel"
    assert (a["reserve_cpu"], a["flush_cpu"]) == (2, 0)
    assert a["xs"] == "0xffff90fd32693c00" and a["expected"] == "0x1000900"
    assert a["addr"] == "0xdeadbeefdeadbeef"
    assert {2, 3, 6} <= {e["line"] for e in a["evidence"]}


def test_double_fill_seen_only_by_the_kernel_shows_both_reserves(fixtures):
    """A real BPF-backend recording (--inject double-fill) whose doubled FILL entry
    fell before the trace: only the kernel's two reserves of 0x1cc100 show it."""
    a = first(analyze_path(str(fixtures / "bpf-double-fill-overrun.txt")))
    assert (a["verdict"], a["addr"], a["expected"]) == ("application", "0x1cc100", "0x1cd100")
    reserves = [e for e in a["evidence"] if "rx_reserve" in e["text"]]
    assert [e["line"] for e in reserves] == [39, 37]
    assert {"slot=0x1cc", "slot=0x1cd"} == {w for e in reserves for w in e["text"].split() if w.startswith("slot=")}
    assert "the copy the application read at line 1496" in reserves[1]["why"]


def ring(n, start=0x1000):
    return [start + 0x800 * i for i in range(n)]


def test_clean_cycle_is_clean():
    a = ring(4)
    t = 1.0
    text = ""
    for x in a:
        text += mark(t, 0, f"ingress q:0 {x:#x} FREE -> FILL")
        t += 0.001
    for x in a:
        text += reserve(t, 1, x)
        t += 0.001
        text += flush(t, 1)
        t += 0.001
        for transition in ("FILL -> RX", "RX -> TX", "TX -> COMP", "COMP -> FILL"):
            side = "egress" if transition in ("RX -> TX", "TX -> COMP") else "ingress"
            text += mark(t, 0, f"{side} q:0 {x:#x} {transition}")
            t += 0.001
    r = analyze_text(text)
    assert r.anomalies == ()
    assert r.to_json()["stats"]["sockets"] == {"ingress q:0": f"{XS:#x}"}


def test_double_fill_is_application_with_that_descriptor():
    a, b, c = ring(3)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + mark(1.002, 0, f"ingress q:0 {a:#x} COMP -> FILL")  # a is still in FILL
        + reserve(1.003, 1, a)
        + reserve(1.004, 1, b)
        + reserve(1.005, 1, a)
        + mark(1.006, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.007, 0, f"ingress q:0 {b:#x} FILL -> RX")
        + mark(1.008, 0, f"ingress q:0 {a:#x} FILL -> RX: expected {c:#x} remaining: []")
    )
    r = analyze_text(text)
    j = r.to_json()
    assert j["verdict"] == "application"
    assert all(x["verdict"] == "application" and x["addr"] == f"{a:#x}" for x in j["anomalies"])
    assert j["anomalies"][0]["kind"] == "duplicate_insertion"
    # the kernel's own reserve events for that descriptor are part of the proof
    assert sum("the kernel took" in e["why"] for e in j["anomalies"][0]["evidence"]) == 2


def test_fill_and_tx_is_application():
    a, b = ring(2)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + reserve(1.002, 1, a)
        + mark(1.003, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.004, 0, f"egress q:0 {a:#x} RX -> TX")
        + mark(1.005, 0, f"ingress q:0 {a:#x} RX -> FILL")  # into FILL while in TX
    )
    a0 = first(analyze_text(text))
    assert (a0["verdict"], a0["kind"], a0["addr"]) == ("application", "duplicate_insertion", f"{a:#x}")


def test_markers_only_symptom_is_undetermined_and_says_what_is_missing():
    a, b = ring(2)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + mark(1.002, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.003, 0, f"ingress q:0 0xdeadbeefdeadbeef FILL -> RX: expected {b:#x} remaining: []")
    )
    a0 = first(analyze_text(text))
    assert a0["verdict"] == "undetermined"
    assert a0["kind"] == "poison_read"
    assert any("reserve" in m for m in a0["missing"]) and any("flush" in m for m in a0["missing"])


def test_kernel_delivering_what_it_reserved_out_of_app_order_is_application():
    a, b, c = ring(3)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + reserve(1.002, 1, a)
        + reserve(1.003, 1, c)  # c was in FILL without a marker
        + mark(1.004, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.005, 0, f"ingress q:0 {c:#x} FILL -> RX")
    )
    a0 = first(analyze_text(text))
    assert (a0["verdict"], a0["kind"], a0["addr"], a0["expected"]) == (
        "application",
        "fill_order",
        f"{c:#x}",
        f"{b:#x}",
    )


def test_loss_inside_the_causal_window_is_undetermined():
    text = open(pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "seed-poison.txt").read()
    lines = text.splitlines(keepends=True)
    lines.insert(3, "CPU:2 [LOST 7 EVENTS]\n")
    a0 = first(analyze_text("".join(lines)))
    assert a0["verdict"] == "undetermined"
    assert "CPU 2 lost 7 events" in a0["explanation"]


def test_history_before_the_window_gives_no_false_anomaly():
    # CPU 1's buffer started late: descriptors it handled before are unknown.
    a, b = ring(2)
    text = (
        "# entries-in-buffer/entries-written: 10/99   #P:2\n"
        + mark(1.000, 0, f"ingress q:0 {b:#x} FILL -> RX")  # before CPU 1 starts
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.100, 1, a)
        + mark(1.101, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.102, 0, f"egress q:0 {a:#x} RX -> TX")
        + mark(1.103, 0, f"egress q:0 {a:#x} TX -> COMP")
    )
    r = analyze_text(text)
    assert r.anomalies == ()
    assert r.timeline.window.complete_from == 1.100


def test_unknown_events_are_kept():
    text = (
        mark(1.0, 0, "ingress q:0 0x1000 FREE -> FILL") + "  sshd-5 [000] ..... 1.100000: sched_switch: prev=a next=b\n"
    )
    r = analyze_text(text)
    assert r.to_json()["stats"]["events"]["other"] == 1
    assert r.timeline.frame["event"].tolist() == ["tracing_mark_write", "sched_switch"]


def bpf(ts, cpu, text):
    return f"          <idle>-0       [{cpu:03d}] ..s2. {ts:.6f}: bpf_trace_printk: flightrec {text}\n"


def test_bpf_backend_slot_published_before_written_is_kernel():
    a, b = ring(2)
    xs = f"{XS:#x}"
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + bpf(1.002, 1, f"rx_reserve xs={xs} q=0x0 slot=0x0 addr={a:#x} len=0x4e")
        # CPU 0 flushes: the producer (2) is past slot 1, which CPU 1 has not reported written yet
        + bpf(1.003, 0, f"flush xs={xs} q=0x0 prod=0x2")
        + mark(1.004, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + bpf(1.005, 1, f"rx_reserve xs={xs} q=0x0 slot=0x1 addr={b:#x} len=0x4e")
        + bpf(1.006, 1, f"flush xs={xs} q=0x0 prod=0x2")
        + mark(1.007, 0, f"ingress q:0 0xdeadbeefdeadbeef FILL -> RX: expected {b:#x} remaining: []")
    )
    found = analyze_text(text).to_json()["anomalies"]
    # First the kernel's own events (checks/kernel_publish.py), at the late write...
    k = found[0]
    assert (k["verdict"], k["kind"], k["reserve_cpu"], k["flush_cpu"], k["addr"]) == (
        "kernel",
        "kernel_publish_race",
        1,
        0,
        f"{b:#x}",
    )
    # ...then the application's read of the stale slot, tied to the same race.
    a0 = found[1]
    assert (a0["verdict"], a0["kind"], a0["reserve_cpu"], a0["flush_cpu"], a0["expected"]) == (
        "kernel",
        "publish_race",
        1,
        0,
        f"{b:#x}",
    )
    assert any("past slot 1" in e["why"] for e in a0["evidence"])


def _bpf_ring(events: list[tuple[float, int, str]]) -> str:
    xs = f"{XS:#x}"
    return "".join(bpf(t, cpu, text.format(xs=xs)) for t, cpu, text in events)


def test_kernel_events_alone_catch_a_slot_published_before_written():
    """No marker at all: CPU 0's flush publishes slot 1 before CPU 1 writes it."""
    text = _bpf_ring(
        [
            (1.000, 1, "rx_reserve xs={xs} q=0x0 slot=0x0 addr=0x1000 len=0x4e"),
            (1.001, 1, "flush xs={xs} q=0x0 prod=0x1"),
            (1.002, 0, "rx_reserve xs={xs} q=0x0 slot=0x2 addr=0x3000 len=0x4e"),
            (1.003, 0, "flush xs={xs} q=0x0 prod=0x3"),
            (1.004, 1, "rx_reserve xs={xs} q=0x0 slot=0x1 addr=0x2000 len=0x4e"),
            (1.005, 1, "flush xs={xs} q=0x0 prod=0x3"),
        ]
    )
    r = analyze_text(text)
    [a] = r.to_json()["anomalies"]
    assert (a["kind"], a["verdict"], a["reserve_cpu"], a["flush_cpu"], a["addr"]) == (
        "kernel_publish_race",
        "kernel",
        1,
        0,
        "0x2000",
    )
    assert "slot 1" in a["explanation"] and "1000 us later" in a["explanation"], a["explanation"]
    assert [c["holds"] for c in a["claims"]] == [True] and not a["claims"][0]["absence"]
    assert r.to_json()["stats"]["checks_not_run"], "no markers: the marker checks are said not to have run"


@pytest.mark.parametrize(
    "events",
    [
        # Each CPU writes its slot before its flush publishes it, NAPI moving between CPUs.
        [
            (1.000, 1, "rx_reserve xs={xs} q=0x0 slot=0x0 addr=0x1000 len=0x4e"),
            (1.001, 1, "flush xs={xs} q=0x0 prod=0x1"),
            (1.002, 0, "rx_reserve xs={xs} q=0x0 slot=0x1 addr=0x2000 len=0x4e"),
            (1.003, 0, "flush xs={xs} q=0x0 prod=0x2"),
            (1.004, 1, "rx_reserve xs={xs} q=0x0 slot=0x2 addr=0x3000 len=0x4e"),
        ],
        # A flush line printed late, its producer past the other CPU's already written slots.
        [
            (1.000, 0, "rx_reserve xs={xs} q=0x0 slot=0x0 addr=0x1000 len=0x4e"),
            (1.001, 1, "rx_reserve xs={xs} q=0x0 slot=0x1 addr=0x2000 len=0x4e"),
            (1.002, 0, "flush xs={xs} q=0x0 prod=0x2"),
        ],
        # The socket freed and another made at the same address: its slots start at 0 again, seconds later.
        [
            (1.000, 0, "rx_reserve xs={xs} q=0x0 slot=0x4ff addr=0x1000 len=0x4e"),
            (1.001, 0, "flush xs={xs} q=0x0 prod=0x500"),
            (3.000, 1, "rx_reserve xs={xs} q=0x0 slot=0x0 addr=0x2000 len=0x4e"),
        ],
    ],
)
def test_kernel_events_of_a_sound_kernel_stay_clean(events):
    assert analyze_text(_bpf_ring(events)).anomalies == ()


def test_real_ftrace_and_trace_cmd_output_read_alike(fixtures):
    """The same events, as an instance's trace file and as trace-cmd report print them."""
    docs = [
        analyze_path(str(fixtures / name)).to_json()
        for name in ("ftrace-instance-fill-order.txt", "tracecmd-instance-fill-order.txt")
    ]
    assert docs[0]["stats"]["format"] == "ftrace" and docs[1]["stats"]["format"] == "trace-cmd"
    for doc in docs:
        assert doc["stats"]["events"]["marker"] == 10 and doc["stats"]["events"]["note"] == 1
        a = doc["anomalies"][0]
        assert (a["kind"], a["verdict"], a["addr"], a["expected"]) == (
            "fill_order",
            "undetermined",
            "0x16ce900",
            "0x13d3900",
        )
        assert any("reserve" in m for m in a["missing"])
    strip = ("evidence", "explanation", "line", "source")
    assert [{k: v for k, v in a.items() if k not in strip} for a in docs[0]["anomalies"]] == [
        {k: v for k, v in a.items() if k not in strip} for a in docs[1]["anomalies"]
    ]


def test_a_length_mismatch_on_a_frame_the_application_put_in_two_rings_is_its_own():
    # fill-and-tx: 0x1000 goes back to FILL while the peer also sends it; the kernel
    # then receives another packet into it and writes its len, while the XDP
    # program's metadata in the frame belongs to the other packet.
    t, s = 1.0, "ingress q:0"
    text = "".join(
        [
            mark(t, 0, f"{s} 0x1000 FREE -> FILL"),
            reserve(t + 0.00001, 1, 0x1000),
            mark(t + 0.00002, 0, f"{s} 0x1000 FILL -> RX"),
            mark(t + 0.00003, 0, f"{s} 0x1000 RX -> FILL"),
            mark(t + 0.00004, 0, "egress q:0 0x1000 RX -> TX"),
            mark(t + 0.000041, 0, "egress q:0 0x1000 TX -> COMP"),
            mark(t + 0.000042, 0, f"{s} 0x1000 COMP -> FILL"),
            reserve(t + 0.00005, 1, 0x1000).replace("len=0x4e", "len=0x1d1"),
            flush(t + 0.00006, 1),
            mark(t + 0.00007, 0, f"{s} 0x1000 FILL -> RX: len 465 xdp_len 1204"),
        ]
    )
    r = analyze_text(text)
    verdicts = {a["kind"]: a["verdict"] for a in r.to_json()["anomalies"]}
    assert verdicts.get("length_mismatch") == "application", r.to_json()["anomalies"]
    assert "kernel" not in verdicts.values(), verdicts
