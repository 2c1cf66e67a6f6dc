"""Reasoning per CPU and per claim: each CPU's stream is whole from its own first
event on, and a claim that nothing happened needs the CPUs it speaks of to have
been recording over its span (flightrec.model.history)."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from flightrec.analysis import analyze_path, analyze_text
from flightrec.errors import FlightrecError
from flightrec.model.history import build_history

from tracegen import XS, flush, mark, reserve

OVERRUN = "# entries-in-buffer/entries-written: 918959/953688441   #P:4\n"
POISON = "0xdeadbeefdeadbeef"


def first(result):
    assert result.anomalies, "expected an anomaly"
    return result.to_json()["anomalies"][0]


def seed_lines(fixtures, name="seed-poison.txt"):
    return (fixtures / name).read_text().splitlines(keepends=True)


def test_seed_poison_saved_with_an_overrun_header_is_the_kernel_race(fixtures):
    """The post's second excerpt as the kernel saves an overrun trace: CPU 2's buffer begins
    after CPU 0's, yet CPU 0's reserve of 0xff0900 and the RX of it tie the xs, and the
    application's FILL order puts 0x1000900 right after it: the post's verdict."""
    r = analyze_path(str(fixtures / "seed-poison-overrun.txt"))
    doc = r.to_json()
    a = doc["anomalies"][0]
    assert (doc["verdict"], a["kind"], a["reserve_cpu"], a["flush_cpu"]) == ("kernel", "publish_race", 2, 0)
    assert (a["addr"], a["expected"], a["xs"]) == (POISON, "0x1000900", "0xffff90fd32693c00")
    assert {14, 15, 18} <= {e["line"] for e in a["evidence"]}
    assert r.timeline.window.complete_from == 609766.698523  # the old single cut, after CPU 0's reserve
    hist = {c["cpu"]: c for c in doc["history"]["cpus"]}
    assert (hist[0]["from"], hist[0]["line"]) == (609766.698512, 13)
    assert (hist[2]["from"], hist[2]["line"]) == (609766.698523, 14)
    assert doc["history"]["idle_cpus"] == [1, 3] and doc["history"]["overrun"]
    claims = a["claims"]
    assert all(c["holds"] for c in claims)
    # the tie rests on CPU 0's events alone, which CPU 2's late start cannot undo
    tie = next(c for c in claims if c["claim"].startswith("xs 0xffff90fd32693c00 is ingress q:1"))
    assert (tie["cpus"], tie["lines"], tie["absence"]) == ([0], [13, 16], False)
    # the race leans on CPU 2's history from its reserve to CPU 0's flush
    own = next(c for c in claims if c["absence"] and c["cpus"] == [2])
    assert (own["from"], own["to"], own["events"]) == (609766.698523, 609766.698528, "kernel")
    assert any("FILL order" in c["claim"] for c in claims)


def test_the_same_with_the_buffer_started_line_the_kernel_prints(fixtures):
    lines = seed_lines(fixtures, "seed-poison-overrun.txt")
    lines.insert(13, "##### CPU 2 buffer started ####\n")
    a = first(analyze_text("".join(lines)))
    assert (a["verdict"], a["kind"], a["reserve_cpu"], a["flush_cpu"]) == ("kernel", "publish_race", 2, 0)


def test_the_same_as_trace_cmd_reports_it(fixtures):
    """trace-cmd: no latency columns, `cpus=4`, the wrap as `CPU:2 [N EVENTS DROPPED]`."""
    out = ["cpus=4\n", "CPU:0 [1200 EVENTS DROPPED]\n"]
    for n, line in enumerate(seed_lines(fixtures)):
        task, rest = line.split("[", 1)
        cpu, rest = rest.split("]", 1)
        ts, event, body = rest.split(None, 1)[1].split(": ", 2)
        if n == 1:
            out.append("CPU:2 [700 EVENTS DROPPED]\n")
        event = "print" if event == "tracing_mark_write" else event
        body = f"tracing_mark_write: {body}" if event == "print" else body
        out.append(f"{task.strip():>16} [{cpu}] {ts}: {event + ':':<21} {body}")
    a = first(analyze_text("".join(out)))
    assert (a["verdict"], a["kind"], a["reserve_cpu"], a["flush_cpu"]) == ("kernel", "publish_race", 2, 0)


def test_the_racing_cpu_beginning_after_its_reserve_is_undetermined_naming_it(fixtures):
    """Without CPU 2's reserve the slot's owner is gone: no verdict, and CPU 2's late start is named."""
    lines = [x for n, x in enumerate(seed_lines(fixtures, "seed-poison-overrun.txt"), 1) if n != 14]
    a = first(analyze_text("".join(lines)))
    assert a["verdict"] == "undetermined" and a["reserve_cpu"] is None
    assert any(m.startswith("CPU 2's events before 609766.698545") for m in a["missing"]), a["missing"]


def test_an_absence_a_late_cpu_cannot_vouch_for_is_undetermined(fixtures):
    """The poison read without the application's detection line: nothing but the kernel's own
    events can say no slot was reserved between 0xff0900's and 0x1000900's, and CPU 2 was
    not recording then. Saved whole (nothing overran) the same lines prove the race."""
    lines = seed_lines(fixtures, "seed-poison-overrun.txt")
    lines[-1] = lines[-1].split(": expected")[0] + "\n"
    a = first(analyze_text("".join(lines)))
    assert a["verdict"] == "undetermined"
    assert "cannot tell which RX slot" in a["explanation"]
    assert any(m.startswith("CPU 2's events before 609766.698523") for m in a["missing"])
    failing = [c for c in a["claims"] if not c["holds"]]
    assert failing and all(c["absence"] and c["events"] == "kernel" for c in failing)
    whole = first(analyze_text("".join(lines[12:])))
    assert (whole["verdict"], whole["reserve_cpu"], whole["flush_cpu"]) == ("kernel", 2, 0)


def test_the_fill_order_vouches_for_a_poisoned_slot_only(fixtures):
    """Read a stale address instead of the poison: an entry the application put into FILL without a
    marker would explain it too, and only CPU 2's kernel events could rule that out; CPU 2 was not
    recording. Saved whole, the same lines are the kernel's race."""
    lines = seed_lines(fixtures, "seed-poison-overrun.txt")
    lines[-1] = lines[-1].replace(POISON, "0x1f64100")
    a = first(analyze_text("".join(lines)))
    assert (a["verdict"], a["addr"]) == ("undetermined", "0x1f64100")
    assert any(m.startswith("CPU 2's events before 609766.698523") for m in a["missing"]), a["missing"]
    whole = first(analyze_text("".join(lines[12:])))
    assert (whole["verdict"], whole["kind"], whole["reserve_cpu"], whole["flush_cpu"]) == (
        "kernel",
        "publish_race",
        2,
        0,
    )


def test_a_loss_matters_only_to_the_claims_it_overlaps(fixtures):
    """CPU 1 lost events at a moment no claim of the race speaks of: still the kernel. A loss on
    CPU 2 while the application could have read from RX unseen: undetermined (tests/unit/test_verdicts.py)."""
    lines = seed_lines(fixtures)
    extra = [
        "          sshd-10    [001] ..... 609766.698530: sched_switch: prev=a next=b\n",
        "CPU:1 [LOST 3 EVENTS]\n",
        "          sshd-10    [001] ..... 609766.698535: sched_switch: prev=b next=a\n",
    ]
    text = "".join(lines[:3] + extra + lines[3:])
    a = first(analyze_text(text))
    assert (a["verdict"], a["reserve_cpu"], a["flush_cpu"]) == ("kernel", 2, 0)


def ring(n, start=0x1000):
    return [start + 0x800 * i for i in range(n)]


def test_a_double_insertion_before_a_cpu_began_recording_is_not_claimed():
    """FILL twice with no RX between needs every CPU recording over that span: the
    application thread may have read it on a CPU whose buffer began later."""
    a, b = ring(2)
    body = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.002, 1, b)
        + mark(1.003, 0, f"ingress q:0 {a:#x} COMP -> FILL")
    )
    r = analyze_text(OVERRUN + body)
    assert r.anomalies == (), r.to_json()["anomalies"]
    # saved whole (nothing overran), the same lines are the application's duplicate
    whole = first(analyze_text(body.replace("##### CPU 1 buffer started ####\n", "")))
    assert (whole["verdict"], whole["addr"]) == ("application", f"{a:#x}")
    # once every CPU records, the same two insertions are the application's
    later = (
        OVERRUN
        + reserve(0.999, 1, b)
        + mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.003, 0, f"ingress q:0 {a:#x} COMP -> FILL")
    )
    x = first(analyze_text(later))
    assert (x["verdict"], x["kind"], x["addr"]) == ("application", "duplicate_insertion", f"{a:#x}")
    every = next(c for c in x["claims"] if c["absence"])
    assert every["every_cpu"] and every["cpus"] == [0, 1] and every["events"] == "markers"


def test_the_applications_own_invalid_marker_counts_before_every_cpu_records():
    """`FILL -> TX` written by the application is a fact on its CPU, whatever others lost."""
    a = ring(1)[0]
    text = (
        OVERRUN
        + mark(1.000, 0, f"egress q:0 {a:#x} FILL -> TX")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.100, 1, a)
    )
    x = first(analyze_text(text))
    assert (x["verdict"], x["kind"], x["line"]) == ("application", "duplicate_insertion", 2)


def test_fill_order_starts_where_every_cpu_records():
    """The analyzer's own FILL-order deque says no other insertion came in between: before CPU 1
    recorded, an insertion there could be missing, so no FILL-order break is claimed."""
    a, b, c = ring(3)
    body = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + mark(1.002, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.0025, 1, c)
        + mark(1.003, 0, f"ingress q:0 {c:#x} FILL -> RX")
    )
    assert analyze_text(OVERRUN + body).anomalies == ()
    whole = first(analyze_text(body.replace("##### CPU 1 buffer started ####\n", "")))
    assert (whole["kind"], whole["addr"], whole["expected"]) == ("fill_order", f"{c:#x}", f"{b:#x}")


def test_a_misaligned_read_the_history_cannot_explain_is_no_anomaly():
    """CPU 1 reserved b before its buffer began (gone), then c, and CPU 0's flush published both:
    the read of b disagrees with the slot order only because an event is missing. Saved whole, the
    same lines would say CPU 0 published CPU 1's slot for c while the application read b from it."""
    a, b, c = ring(3)
    body = (
        reserve(1.000, 0, a)
        + flush(1.0005, 0)
        + mark(1.001, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.003, 1, c)
        + flush(1.0035, 0)
        + mark(1.004, 0, f"ingress q:0 {b:#x} FILL -> RX")
        + flush(1.0045, 1)
        + mark(1.005, 0, f"ingress q:0 {c:#x} FILL -> RX")
    )
    assert analyze_text(OVERRUN + body).anomalies == ()
    whole = first(analyze_text(body.replace("##### CPU 1 buffer started ####\n", "")))
    assert (whole["kind"], whole["verdict"], whole["reserve_cpu"], whole["flush_cpu"]) == (
        "publish_race",
        "kernel",
        1,
        0,
    )


def test_history_unit():
    h = build_history(
        {0: (1.0, 5), 2: (2.0, 9)}, {0: 3, 2: 1}, True, [(0, 12, 4, 3.0, 4.0)], kernel_until=5.0, header_cpus=4
    )
    assert h.since(0) == 1.0 and h.since(2) == 2.0 and h.since(1) == float("-inf") and h.idle == (1, 3)
    assert h.all_since == 2.0
    assert [g.why for g in h.missing(1.5, 1.8, "markers")] == ["buffer"]  # CPU 2 began at 2.0
    assert h.missing(2.0, 2.9, "markers") == ()
    assert [g.why for g in h.missing(2.5, 3.5, "markers", cpus=(0,))] == ["lost"]
    assert h.missing(2.5, 3.5, "markers", cpus=(2,)) == ()
    assert [g.why for g in h.missing(4.5, 6.0, "kernel")] == ["kernel-ended"]
    assert h.missing(4.5, 6.0, "markers") == ()  # the application's markers go on
    whole = build_history({0: (1.0, 5), 2: (2.0, 9)}, {0: 3, 2: 1}, False, [])
    assert whole.missing(0.0, 9.0, "events") == () and whole.all_since == float("-inf")


# ---- meta.json beside the trace: the kernel-event source stopped mid-run ----------------


def with_meta(tmp_path, text, ended_at):
    (tmp_path / "trace.txt").write_text(text)
    meta = {"kernel_events": {"backend": "bpf"}}
    if ended_at is not None:
        meta["kernel_events"]["ended_at"] = ended_at
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return analyze_path(str(tmp_path / "trace.txt"))


def test_kernel_events_before_the_source_stopped_still_prove(fixtures, tmp_path):
    r = with_meta(tmp_path, (fixtures / "seed-poison.txt").read_text(), 609766.698560)
    doc = r.to_json()
    assert doc["history"]["kernel_events_ended_at"] == 609766.698560
    a = doc["anomalies"][0]
    assert (a["verdict"], a["kind"], a["reserve_cpu"], a["flush_cpu"]) == ("kernel", "publish_race", 2, 0)
    assert any(g["why"] == "kernel-ended" for g in doc["history"]["gaps"])


def test_no_verdict_leans_on_kernel_events_missing_after_the_source_stopped(tmp_path):
    """The kernel's reserves say the application got what FILL held in its own order... only if
    no reserve is missing in between: after the source stopped, the trace cannot say so."""
    a, b, c = ring(3)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + reserve(1.002, 1, a)
        + reserve(1.006, 1, c)
        + mark(1.007, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + mark(1.008, 0, f"ingress q:0 {c:#x} FILL -> RX")
    )
    assert first(analyze_text(text))["verdict"] == "application"  # the source ran throughout
    x = first(with_meta(tmp_path, text, 1.004))
    assert x["verdict"] == "undetermined"
    assert any("kernel events after 1.004000" in m for m in x["missing"]), x["missing"]
    failing = [c for c in x["claims"] if not c["holds"]]
    assert failing and failing[0]["events"] == "kernel"


def test_a_read_after_the_source_stopped_names_the_kernel_events_gone(tmp_path):
    a, b = ring(2)
    text = (
        mark(1.000, 0, f"ingress q:0 {a:#x} FREE -> FILL")
        + mark(1.001, 0, f"ingress q:0 {b:#x} FREE -> FILL")
        + reserve(1.002, 1, a)
        + flush(1.003, 1)
        + mark(1.004, 0, f"ingress q:0 {a:#x} FILL -> RX")
        # the kernel-event source stops at 1.005; CPU 1 reserves b unseen
        + mark(1.008, 0, f"ingress q:0 {POISON} FILL -> RX: expected {b:#x} remaining: []")
    )
    x = first(with_meta(tmp_path, text, 1.005))
    assert x["verdict"] == "undetermined" and "kernel-event source stopped at 1.005000" in x["explanation"]
    assert any("kernel events after 1.005000" in m for m in x["missing"])


def test_meta_without_an_end_changes_nothing(fixtures, tmp_path):
    r = with_meta(tmp_path, (fixtures / "seed-poison-overrun.txt").read_text(), None)
    assert r.to_json()["history"]["kernel_events_ended_at"] is None
    assert (first(r)["verdict"], first(r)["flush_cpu"]) == ("kernel", 0)


@pytest.mark.parametrize("bad", ["soon", True, float("nan"), [1.0]])
def test_a_bad_end_is_one_clear_error(fixtures, tmp_path, bad):
    (tmp_path / "trace.txt").write_text((fixtures / "seed-poison.txt").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({"kernel_events": {"ended_at": bad}}).replace("NaN", "NaN"))
    with pytest.raises(FlightrecError, match="kernel_events.ended_at"):
        analyze_path(str(tmp_path / "trace.txt"))


def test_xs_is_the_one_that_reserved_the_address_last():
    """From the first line on, stale reserves pile up: the tie goes to the most recent reserve."""
    other = XS + 0x1000
    a, b = ring(2)
    text = (
        reserve(1.000, 1, a, xs=other)  # long ago, on another socket's xs
        + reserve(1.100, 1, b)
        + reserve(1.101, 1, a)
        + mark(1.102, 0, f"ingress q:0 {a:#x} FILL -> RX")  # b's slot was read before the trace
    )
    r = analyze_text(text)
    assert r.anomalies == () and r.replay.sock_xs == {"ingress q:0": XS}


def test_a_read_after_an_alignment_the_history_broke_says_why():
    """Once the slot order is lost to a CPU's late start, a later symptom says so, not 'too late'."""
    a, b, c = ring(3)
    text = (
        OVERRUN
        + reserve(1.000, 0, a)
        + flush(1.0005, 0)
        + mark(1.001, 0, f"ingress q:0 {a:#x} FILL -> RX")
        + "##### CPU 1 buffer started ####\n"
        + reserve(1.003, 1, c)
        + flush(1.0035, 0)
        + mark(1.004, 0, f"ingress q:0 {b:#x} FILL -> RX")
        + mark(1.005, 0, f"ingress q:0 {POISON} FILL -> RX")
    )
    x = first(analyze_text(text))
    assert (x["kind"], x["verdict"], x["line"]) == ("poison_read", "undetermined", 9)
    assert "cannot tell which RX slot" in x["explanation"]
    assert any(m.startswith("CPU 1's events before 1.003000") for m in x["missing"]), x["missing"]


def test_a_length_verdict_names_the_events_it_rests_on():
    a = ring(1)[0]
    text = (
        reserve(1.000, 1, a)  # len=0x4e: 78 bytes
        + mark(1.001, 0, f"ingress q:0 {a:#x} FILL -> RX: len 78 xdp_len 60")
    )
    x = first(analyze_text(text))
    assert (x["kind"], x["verdict"], x["reserve_cpu"]) == ("length_mismatch", "kernel", 1)
    assert [c["lines"] for c in x["claims"]][-1] == [1, 2] and all(c["holds"] for c in x["claims"])
