"""The TX-side checks on small hand-made traces: a frame reused before its completion."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from flightrec.analysis import analyze_path, analyze_text
from flightrec.simulate import SimConfig, simulate

from tracegen import line, mark, reserve

A = 0x1000
OVERRUN = "# entries-in-buffer/entries-written: 10/999   #P:2\n"


def tx_read(ts: float, cpu: int, addr: int) -> str:
    return line(ts, cpu, "xp_raw_get_data", f"(xp_raw_get_data+0x0/0x60) addr={addr:#x}")


def story(reuse: str) -> str:
    """A frame received, forwarded to TX, then `reuse` (a marker line) before its completion."""
    return (
        mark(1.000, 0, f"ingress q:0 {A:#x} FREE -> FILL")
        + reserve(1.001, 1, A)
        + mark(1.002, 0, f"ingress q:0 {A:#x} FILL -> RX")
        + mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + mark(1.004, 1, reuse)
        + tx_read(1.005, 0, A)
        # the real completion: it meets the frame where the reuse put it
        + mark(1.006, 0, f"egress q:0 {A:#x} TX -> COMP" + ("" if reuse.endswith("TX") else ": invalid, was FILL"))
    )


def anomalies(text: str) -> list[dict]:
    return analyze_text(text).to_json()["anomalies"]


@pytest.mark.parametrize(
    "reuse", [f"ingress q:0 {A:#x} COMP -> FILL", f"egress q:0 {A:#x} COMP -> TX", f"ingress q:0 {A:#x} FREE -> FILL"]
)
def test_a_frame_given_back_to_the_kernel_with_no_completion_read_is_the_applications(reuse):
    first, *rest = anomalies(story(reuse))
    assert (first["kind"], first["verdict"], first["addr"], first["line"]) == (
        "reuse_before_completion",
        "application",
        f"{A:#x}",
        5,
    )
    why = {e["line"]: e["why"] for e in first["evidence"]}
    assert "into its TX ring" in why[4]
    assert "to transmit it after the reuse" in why[6]  # the kernel's own read, after the reuse
    assert "came only here" in why[7]
    assert all(c["holds"] for c in first["claims"])
    # the completion that met the frame in FILL is explained by the reuse, not blamed on the kernel
    assert all(a["verdict"] == "application" for a in rest), rest


def test_the_applications_own_tx_to_fill_marker_is_its_word():
    first = anomalies(OVERRUN + mark(1.000, 0, f"ingress q:0 {A:#x} TX -> FILL"))[0]
    assert (first["kind"], first["verdict"], first["line"]) == ("reuse_before_completion", "application", 2)


def test_rx_to_fill_of_a_frame_in_tx_stays_a_duplicate_insertion():
    """The application believed the frame was in RX: one buffer in two rings (fill-and-tx), not a reuse."""
    first = anomalies(story(f"ingress q:0 {A:#x} RX -> FILL"))[0]
    assert (first["kind"], first["verdict"]) == ("duplicate_insertion", "application")


def test_a_completion_read_in_between_is_clean():
    text = (
        mark(1.000, 0, f"ingress q:0 {A:#x} FREE -> FILL")
        + reserve(1.001, 1, A)
        + mark(1.002, 0, f"ingress q:0 {A:#x} FILL -> RX")
        + mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + tx_read(1.004, 0, A)
        + mark(1.005, 0, f"egress q:0 {A:#x} TX -> COMP")
        + mark(1.006, 1, f"ingress q:0 {A:#x} COMP -> FILL")
    )
    assert anomalies(text) == []


def test_a_cpu_that_began_recording_in_between_leaves_it_undetermined():
    """CPU 1's buffer begins after the TX: its missing markers may hold the completion."""
    text = (
        OVERRUN
        + mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + "##### CPU 1 buffer started ####\n"
        + mark(1.004, 1, f"ingress q:0 {A:#x} COMP -> FILL")
    )
    assert [a for a in anomalies(text) if a["verdict"] != "undetermined"] == []


SEEDS = range(40)


@pytest.mark.parametrize("variant", [{}, {"wrap": True}, {"fmt": "trace-cmd", "tight": True}, {"probes": "none"}])
def test_simulated_reuse_is_named_with_its_mechanism(variant):
    """Against the simulator's ground truth: where the truth says application, the first
    anomaly is the reuse itself, at the line that reused the frame."""
    judged = 0
    for seed in SEEDS:
        sim = simulate(SimConfig(seed=seed, cpus=2 + seed % 7, packets=800, fault="reuse-in-flight", **variant))
        want, first = sim.truth.anomaly, anomalies(sim.text)[0]
        assert (first["verdict"], first["addr"]) == (want["verdict"], want["addr"]), (seed, want, first)
        if want["verdict"] == "application":
            judged += 1
            assert first["kind"] == "reuse_before_completion", (seed, first)
            assert first["line"] == sim.truth.evidence_lines["insert2"], (seed, first)
    assert judged >= len(SEEDS) // 2


def sent_early(tx_at: float, cpu1_from: str = "") -> str:
    """A frame read from COMPLETION at 1.004, sent by the kernel at `tx_at`."""
    return (
        mark(1.000, 0, f"ingress q:0 {A:#x} FREE -> FILL")
        + reserve(1.001, 1, A)
        + mark(1.002, 0, f"ingress q:0 {A:#x} FILL -> RX")
        + mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + cpu1_from
        + mark(1.004, 0, f"egress q:0 {A:#x} TX -> COMP")
        + mark(1.005, 0, f"ingress q:0 {A:#x} COMP -> FILL")
        + tx_read(tx_at, 1, A)
    )


def test_a_frame_the_kernel_sends_after_its_completion_was_read_is_the_kernels():
    first = anomalies(sent_early(1.006))[0]
    assert (first["kind"], first["verdict"], first["addr"], first["line"]) == (
        "completion_in_flight",
        "kernel",
        f"{A:#x}",
        7,
    )
    assert [e["line"] for e in first["evidence"]] == [4, 5, 7]
    assert all(c["holds"] for c in first["claims"]) and any(
        c["absence"] and c["events"] == "kernel" for c in first["claims"]
    )


def test_a_frame_sent_before_its_completion_is_clean():
    text = (
        mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + tx_read(1.0035, 1, A)
        + mark(1.004, 0, f"egress q:0 {A:#x} TX -> COMP")
        + mark(1.005, 0, f"egress q:0 {A:#x} COMP -> TX")
        + tx_read(1.006, 1, A)
    )
    assert anomalies(text) == []


def test_without_the_kernels_whole_history_the_early_completion_is_undetermined():
    """CPU 1 began recording after the TX: its send of the frame before the read may be lost."""
    text = (
        OVERRUN
        + mark(1.003, 0, f"egress q:0 {A:#x} RX -> TX")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.0035, 1, 0x9000)
        + mark(1.004, 0, f"egress q:0 {A:#x} TX -> COMP")
        + tx_read(1.006, 1, A)
    )
    first = anomalies(text)[0]
    assert (first["kind"], first["verdict"]) == ("completion_in_flight", "undetermined")
    assert any("CPU 1" in m for m in first["missing"])


@pytest.mark.parametrize(
    "variant", [{}, {"wrap": True}, {"fmt": "trace-cmd", "tight": True}, {"probes": "none"}, {"loss": True}]
)
def test_simulated_early_completion_against_ground_truth(variant):
    """The kernel publishes a frame's COMPLETION entry before it sends it; the application
    reuses the frame and the receiver gets other data. With the kernel's TX events the
    verdict is kernel at the late send; without them the receiver's report is undetermined,
    naming the TX events it lacks."""
    for seed in range(24):
        sim = simulate(SimConfig(seed=seed, cpus=2 + seed % 7, packets=800, fault="early-completion", **variant))
        want, found = sim.truth.anomaly, anomalies(sim.text)
        first = found[0]
        assert (first["verdict"], first["addr"]) == (want["verdict"], want["addr"]), (seed, want, first)
        if want["verdict"] == "kernel":
            assert first["kind"] == "completion_in_flight" and first["line"] == sim.truth.evidence_lines["late"]
            receiver = next(a for a in found if a["kind"] == "payload_corrupt")
            assert receiver["verdict"] == "kernel" and receiver["addr"] == want["addr"]
        else:
            assert first["missing"], first
        assert [a for a in found if a["verdict"] not in ("undetermined", want["verdict"])] == []


def cq(ts: float, cpu: int, event: str, fields: str) -> str:
    """A COMPLETION kprobe event as Debian 6.1 (cq_submit, addr) or 6.12 (cq_reserve, addr and slot) print it."""
    return line(ts, cpu, event, f"(xsk_destruct_skb+0x46/0x80) {fields}", task="ksoftirqd/1", pid=15, flags="d.s1.")


XS6 = "xs=0xffff888012345600 cq=0xffff888012349000"


def completed_twice(*kernel: str) -> str:
    """A frame sent once, read from COMPLETION twice; `kernel` the COMPLETION events between."""
    return (
        mark(1.000, 0, f"egress q:0 {A:#x} RX -> TX")
        + tx_read(1.001, 1, A)
        + "".join(kernel)
        + mark(1.004, 0, f"egress q:0 {A:#x} TX -> COMP")
        + mark(1.005, 0, f"egress q:0 {A:#x} TX -> COMP")
    )


def test_a_frame_the_kernel_wrote_into_two_completion_entries_is_the_kernels():
    first = anomalies(
        completed_twice(
            cq(1.002, 1, "cq_submit", f"addr={A:#x} {XS6} slot=0x0"),
            cq(1.003, 1, "cq_submit", f"addr={A:#x} {XS6} slot=0x1"),
        )
    )[0]
    assert (first["kind"], first["verdict"], first["addr"], first["line"]) == (
        "unexpected_completion",
        "kernel",
        f"{A:#x}",
        6,
    )
    assert "2 COMPLETION entries" in first["explanation"]


@pytest.mark.parametrize(
    "kernel",
    [
        [cq(1.002, 1, "cq_submit", f"addr={A:#x} {XS6} slot=0x0")],  # 6.1: written at submit
        [
            cq(1.0015, 1, "cq_reserve", f"addr={A:#x} xs=0xffff888012345600"),  # 6.1's reserve writes nothing
            cq(1.002, 1, "cq_submit", f"addr={A:#x} {XS6} slot=0x0"),
        ],
        [
            cq(1.0015, 1, "cq_reserve", f"addr={A:#x} {XS6} slot=0x0"),  # 6.12: written at reserve
            cq(1.002, 1, "cq_submit", f"{XS6} n=0x1 slot=0x0"),
        ],
    ],
)
def test_one_completion_entry_read_twice_is_the_applications(kernel):
    first = anomalies(completed_twice(*kernel))[0]
    assert (first["kind"], first["verdict"], first["addr"]) == ("unexpected_completion", "application", f"{A:#x}")


def test_without_completion_events_a_second_completion_is_undetermined():
    first = anomalies(completed_twice())[0]
    assert (first["kind"], first["verdict"]) == ("unexpected_completion", "undetermined")
    assert any("cq_submit" in m for m in first["missing"])


@pytest.mark.parametrize("variant", [{}, {"wrap": True}, {"tight": True}, {"probes": "none"}, {"loss": True}])
def test_simulated_double_completion_against_ground_truth(variant):
    """The kernel writes a sent frame's address into a second COMPLETION entry (the
    simulator's cq_submit events, Debian 6.1's form): kernel, at the application's second
    read; without COMPLETION events undetermined, naming them."""
    for seed in range(24):
        sim = simulate(SimConfig(seed=seed, cpus=2 + seed % 7, packets=800, fault="double-completion", **variant))
        want, found = sim.truth.anomaly, anomalies(sim.text)
        first = found[0]
        if variant.get("loss"):
            # a loss in the story leaves it undetermined, whichever line says so first (as in
            # test_analyze_simulated); never a verdict on someone
            assert any((a["verdict"], a["addr"]) == (want["verdict"], want["addr"]) for a in found), (seed, found[:3])
        else:
            assert (first["verdict"], first["addr"]) == (want["verdict"], want["addr"]), (seed, want, first)
        if want["verdict"] == "kernel":
            assert first["kind"] == "unexpected_completion" and first["line"] == sim.truth.detection_line
            assert sim.truth.evidence_lines["write2"] in {e["line"] for e in first["evidence"]}
        elif not variant.get("loss"):
            assert first["missing"], first
        assert [a for a in found if a["verdict"] not in ("undetermined", want["verdict"])] == []


X, Y, CQ, B = 0xFFFF888012345600, 0xFFFF888012347800, 0xFFFF888012349000, 0x2000


def reserve612(ts: float, cpu: int, xs: int, slot: int, addr: int) -> str:
    return line(
        ts,
        cpu,
        "cq_reserve",
        f"(__xsk_generic_xmit+0x32f/0xc70) addr={addr:#x} xs={xs:#x} cq={CQ:#x} slot={slot:#x}",
        task="fwd",
        pid=100,
    )


def submit612(ts: float, cpu: int, xs: int, slot: int, n: int = 1) -> str:
    return line(
        ts,
        cpu,
        "cq_submit",
        f"(xsk_destruct_skb+0x4c/0xa0) xs={xs:#x} n={n:#x} cq={CQ:#x} slot={slot:#x}",
        task="ksoftirqd/1",
        pid=15,
        flags="..s1.",
    )


def shared_cq(first: int, second: int) -> str:
    """Two sockets sharing one COMPLETION ring (Debian 6.12's events): X reserves slot 0 for A,
    Y slot 1 for B, then the destructors of `first` and `second` run."""
    return (
        mark(1.000, 0, f"a q:0 {A:#x} RX -> TX")
        + mark(1.001, 0, f"b q:0 {B:#x} RX -> TX")
        + reserve612(1.002, 0, X, 0, A)
        + reserve612(1.003, 1, Y, 1, B)
        + submit612(1.004, 1, first, 0)
        + mark(1.005, 0, f"a q:0 {A:#x} TX -> COMP")
        + submit612(1.006, 0, second, 1)
        + mark(1.007, 0, f"b q:0 {B:#x} TX -> COMP")
    )


def test_one_socket_publishing_the_completion_slot_another_reserved_is_the_kernels():
    first = anomalies(shared_cq(Y, X))[0]
    assert (first["kind"], first["verdict"], first["addr"], first["xs"], first["line"]) == (
        "cq_cross_publish",
        "kernel",
        f"{A:#x}",
        f"{X:#x}",
        5,
    )
    assert {e["line"] for e in first["evidence"]} == {3, 5, 6}  # the reserve, the publish, the application's read


def test_each_socket_publishing_its_own_completion_slots_is_clean():
    assert anomalies(shared_cq(X, Y)) == []


def test_a_slot_reserved_again_replaces_the_attempt_before():
    """X's first reserve of slot 0 was refused (a full ring) or cancelled: Y's reserve of the same
    slot replaces it, and Y's own destructor publishing it is clean."""
    text = reserve612(1.000, 0, X, 0, A) + reserve612(1.001, 1, Y, 0, B) + submit612(1.002, 1, Y, 0)
    assert anomalies(text) == []


def test_completion_reserves_without_slots_say_the_cross_publish_check_did_not_run():
    """7.3's reserve is for the pool, not a socket: the check has nothing to count, and says so;
    6.12's events feed it, and a trace without COMPLETION reserves has nothing to say about it."""
    reserve73 = line(1.0, 0, "cq_reserve", f"(__xsk_generic_xmit+0x3fb/0x1090) cq={CQ:#x} slot=0x0")
    stats = analyze_text(reserve73 + mark(1.1, 0, f"a q:0 {A:#x} RX -> TX")).to_json()["stats"]
    assert [(n["check"], n["needs"]) for n in stats["checks_not_run"]] == [("cq_cross_publish", "fields")]
    assert "name no socket" in stats["checks_not_run"][0]["why"]
    assert analyze_text(shared_cq(X, Y)).to_json()["stats"]["checks_not_run"] == []
    assert analyze_text(mark(1.1, 0, f"a q:0 {A:#x} RX -> TX")).to_json()["stats"]["checks_not_run"] == []


def test_the_real_612_trace_is_the_completion_cross_publish(fixtures):
    """fixtures/vm-612-cq-immature.txt: Debian 12's 6.12 caught in a real guest."""
    doc = analyze_path(str(fixtures / "vm-612-cq-immature.txt")).to_json()
    first = doc["anomalies"][0]
    assert (doc["verdict"], first["kind"], first["line"], first["addr"]) == (
        "kernel",
        "cq_cross_publish",
        2798,
        "0xfc100",
    )
    assert {e["line"] for e in first["evidence"]} == {2791, 2798, 2902}
    assert "30f241fcf52a" in first["explanation"] and doc["stats"]["checks_not_run"] == []


def test_the_real_73_tx_heavy_trace_is_clean_and_says_what_it_could_not_check(fixtures):
    """fixtures/vm-73-tx-twins-clean.txt: the same options on 7.3, with the fix."""
    doc = analyze_path(str(fixtures / "vm-73-tx-twins-clean.txt")).to_json()
    assert doc["verdict"] == "clean", doc["anomalies"][:1]
    events = doc["stats"]["events"]
    assert all(events.get(k, 0) > 100 for k in ("tx", "xmit", "destruct", "cq_reserve", "cq_submit")), events
    assert [n["check"] for n in doc["stats"]["checks_not_run"]] == ["cq_cross_publish"]


def _early_reads_one_by_one(events: list[tuple[int, str, int]]) -> list[tuple[int, int, int]]:
    """The early-completion rule walked event by event, as the check first did:
    (row, T|C|S, addr) in row order -> (T row, C row, S row) of each proven early read."""
    last_tx: dict[int, int] = {}
    comp: dict[int, tuple[int, int]] = {}
    sent_since: set[int] = set()
    out = []
    for row, what, a in events:
        if what == "T":
            last_tx[a] = row
            sent_since.discard(a)
            comp.pop(a, None)
        elif what == "C":
            if a in last_tx and a not in sent_since:
                comp[a] = (last_tx.pop(a), row)
        else:
            sent_since.add(a)
            got = comp.pop(a, None)
            if got is not None:
                out.append((*got, row))
    return out


def test_early_reads_in_bulk_find_what_the_walk_finds():
    """check_completion_in_flight's vectorised rule against the event-by-event walk,
    on random interleavings of TX puts, COMPLETION reads and sends of a few frames."""
    import random

    import numpy as np

    from flightrec.checks.completion import early_reads

    found = 0
    for seed in range(40):
        rng = random.Random(seed)
        events = [(row, rng.choice("TTCCCS"), rng.choice((0x1000, 0x2000, 0x3000))) for row in range(300)]
        addr = np.array([a for _, _, a in events], dtype=np.uint64)
        rows = {w: [r for r, what, _ in events if what == w] for w in "TCS"}
        want = _early_reads_one_by_one(events)
        assert early_reads(rows["T"], rows["C"], rows["S"], addr) == want, seed
        found += len(want)
    assert found > 100, found  # the interleavings do hold early reads
