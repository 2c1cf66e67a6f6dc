"""Who did it: the kernel, the application, or the trace cannot tell.

Shared by the checks that see a symptom at an RX read. The order of the
arguments is the order of their strength:

1. the kernel reserved one address for the RX slot and the application read
   another from it: the kernel published a slot it had not written (kernel);
2. the application's own markers show it put a descriptor into a ring while
   that descriptor was already in FILL or TX (application, that descriptor);
3. the kernel delivered exactly what it took from FILL, in that order, so the
   FILL ring held what the application's order did not expect (application);
4. otherwise the events needed are missing (undetermined, saying which).

Each argument is a list of claims (flightrec.model.history): events seen in
the trace, and claims that something did not happen, which need the CPUs
they speak of to have been recording over their span (their buffers begun,
no events lost, the kernel-event source still running). A verdict stands
only when all its claims hold; otherwise it is undetermined, naming what the
trace lacks.
"""

from __future__ import annotations

import bisect
from typing import Optional

from flightrec.checks.anomaly import APPLICATION, KERNEL, UNDETERMINED, Anomaly, Evidence
from flightrec.hexaddr import hexa
from flightrec.model.history import KERNEL_HISTORY, MARKERS, Claim, Gap, absent, failed, seen
from flightrec.model.replay import BadTransition, Replay, Reserve, RxRead, slot_alignment
from flightrec.model.timeline import Timeline
from flightrec.parse.format import KERNEL_OWNED, POISON

MISSING_RESERVE = "reserve events (kprobe __xsk_rcv_zc at xskq_prod_reserve_desc)"
MISSING_FLUSH = "flush events (kprobe xsk_flush)"


def ev(tl: Timeline, row: int, why: str) -> Evidence:
    return Evidence(tl.line[row], tl.text(row), why, row)


def root_duplicate(rp: Replay, before_row: int, addrs: tuple[Optional[int], ...]) -> Optional[BadTransition]:
    """The application's duplicate insertion that explains a later symptom."""
    dups = [b for b in rp.bad if b.row < before_row and b.to in KERNEL_OWNED and b.state_before in KERNEL_OWNED]
    for b in reversed(dups):
        if b.addr in addrs:
            return b
    return dups[0] if dups else None


def find_race(
    tl: Timeline, rp: Replay, xs: int, reserve_row: int, until_row: int
) -> tuple[Optional[int], Optional[int]]:
    """(flush row on another CPU that published the slot early, the reserving CPU's own flush row).

    With kprobes the reserve fires before the descriptor write: the first
    flush of `xs` after it decides; on another CPU, before the reserving CPU's
    own flush, it published a slot still being written. With the BPF backend
    the reserve fires after the write and carries the slot index, and each
    flush the producer: a flush on another CPU whose producer was already past
    the slot before the reserve event is the publication of an unwritten slot.
    """
    rows = rp.flushes.get(xs, [])
    pos = bisect.bisect_right(rows, reserve_row)
    cpu = tl.cpu[reserve_row]
    own = next((fr for fr in rows[pos:] if tl.cpu[fr] == cpu), None)
    slot = tl.slot[reserve_row]
    if slot is not None:
        early = None
        for fr in reversed(rows[:pos]):
            prod = tl.prod[fr]
            if prod is None or prod <= slot:
                break
            if tl.cpu[fr] != cpu:
                early = fr
        if early is not None:
            return early, own
    other = None
    for fr in rows[pos:]:
        if tl.cpu[fr] == cpu or fr > until_row:
            break
        other = fr
        break
    return other, own


def race_claims(tl: Timeline, s: Reserve, other: int) -> list[Claim]:
    """Why the flush at `other` published CPU s.cpu's slot before it was written."""
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    b = cpu[other]
    if tl.slot[s.row] is not None and other < s.row:
        return [
            seen(
                f"CPU {b}'s flush of xs {s.xs:#x} (line {line[other]}) had the producer at {tl.prod[other]}, "
                f"past slot {tl.slot[s.row]}, before CPU {s.cpu} reported writing that slot (line {line[s.row]})",
                (b, s.cpu),
                (ts[other], s.ts),
                (line[other], line[s.row]),
            )
        ]
    return [
        seen(
            f"CPU {b} flushed xs {s.xs:#x} (line {line[other]}) after CPU {s.cpu} reserved the slot "
            f"(line {line[s.row]})",
            (s.cpu, b),
            (s.ts, ts[other]),
            (line[s.row], line[other]),
        ),
        absent(
            tl.history,
            f"CPU {s.cpu} did not flush xs {s.xs:#x} itself between line {line[s.row]} and line {line[other]}",
            s.ts,
            ts[other],
            KERNEL_HISTORY,
            cpus=(s.cpu,),
        ),
    ]


def kernel_reserves(tl: Timeline, rp: Replay, addr: int, after_row: int, limit: int = 4) -> list[Evidence]:
    """The kernel's own reserve events for a descriptor since a row: what it
    did with the buffer the application gave it twice."""
    rows = sorted(
        r
        for xs_rows in rp.reserves.values()
        for r in xs_rows[bisect.bisect_right(xs_rows, after_row) :]
        if tl.addr[r] == addr
    )
    return [ev(tl, r, f"the kernel took {hexa(addr)} from FILL on CPU {tl.cpu[r]}") for r in rows[:limit]]


def earlier_copy(tl: Timeline, rp: Replay, r: RxRead, s: Reserve) -> list[Evidence]:
    """The kernel's previous reserve of the same address on the same socket, when the
    application read that copy and still held it (in RX) as the kernel took it again:
    two copies of one buffer in FILL, seen from the kernel's side."""
    if r.state_before != "RX" or r.state_row is None:
        return []
    rows = rp.reserves.get(s.xs, [])
    for row in reversed(rows[: bisect.bisect_left(rows, min(r.state_row, s.row))]):
        if tl.addr[row] == r.addr:
            slot = f" (slot {hexa(tl.slot[row])})" if tl.slot[row] is not None else ""
            return [
                ev(
                    tl,
                    row,
                    f"CPU {tl.cpu[row]} took {hexa(r.addr)} from FILL before{slot}: "
                    f"the copy the application read at line {tl.line[r.state_row]}",
                )
            ]
    return []


def transition_claims(tl: Timeline, b: BadTransition) -> list[Claim]:
    """A marker history that does not allow b: both markers, and no marker of it in between on any CPU."""
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    if b.claimed:
        return [
            seen(
                f"the application wrote {hexa(b.addr)} {b.state_before} -> {b.to} itself (line {line[b.row]})",
                (cpu[b.row],),
                (ts[b.row],),
                (line[b.row],),
            )
        ]
    return [
        seen(
            f"{hexa(b.addr)} entered {b.state_before} (line {line[b.state_row]}) and {b.to} (line {line[b.row]})",
            (cpu[b.state_row], cpu[b.row]),
            (ts[b.state_row], ts[b.row]),
            (line[b.state_row], line[b.row]),
        ),
        absent(
            tl.history,
            f"no marker moved {hexa(b.addr)} between line {line[b.state_row]} and line {line[b.row]}",
            ts[b.state_row],
            ts[b.row],
            MARKERS,
        ),
    ]


def dup_anomaly(tl: Timeline, b: BadTransition, kind: str, rp: Optional[Replay] = None) -> Anomaly:
    """An insertion into FILL or TX of a descriptor already in FILL or TX."""
    base = dict(
        kind=kind, line=tl.line[b.row], ts=tl.ts[b.row], sock=b.sock, queue=b.queue, read_cpu=tl.cpu[b.row], row=b.row
    )
    where = "FILL and TX at once" if {b.state_before, b.to} == {"FILL", "TX"} else f"{b.to} twice"
    claims = transition_claims(tl, b)
    if b.claimed:
        # The marker itself says FILL -> TX (or the like): no lost history can excuse it.
        text = (
            f"the application wrote {hexa(b.addr)} {b.state_before} -> {b.to} ({b.sock}): by its own account "
            f"it put a descriptor that was in {b.state_before} into {b.to}, one buffer in {where} (AF_XDP FAQ)"
        )
        kernel = tuple(kernel_reserves(tl, rp, b.addr, b.row)) if rp is not None else ()
        return Anomaly(
            verdict=APPLICATION,
            addr=b.addr,
            explanation=text,
            evidence=(ev(tl, b.row, "the application's own marker"),) + kernel,
            claims=tuple(claims),
            **base,
        )
    evidence = (ev(tl, b.state_row, f"{hexa(b.addr)} enters {b.state_before}"), ev(tl, b.row, f"and {b.to} again"))
    if not all(c.holds for c in claims):
        return _unproven(base, b.addr, list(evidence), claims, "")
    text = (
        f"the application put {hexa(b.addr)} into {b.to} ({b.sock}) while it was still in "
        f"{b.state_before} (line {tl.line[b.state_row]}), with no RX in between: one buffer in "
        f"{where}, which corrupts packets (AF_XDP FAQ)"
    )
    if rp is not None:
        evidence += tuple(kernel_reserves(tl, rp, b.addr, b.state_row))
    return Anomaly(verdict=APPLICATION, addr=b.addr, explanation=text, evidence=evidence, claims=tuple(claims), **base)


def symptom_claims(tl: Timeline, r: RxRead) -> list[Claim]:
    """What the symptom itself leans on: the application's word, or the analyzer's own deque and states."""
    h, ts, cpu, line = tl.history, tl.ts, tl.cpu, tl.line
    row = r.row
    out: list[Claim] = []
    if r.detection is not None:
        out.append(
            seen(f"the application reported it itself (line {line[row]})", (cpu[row],), (ts[row],), (line[row],))
        )
    elif r.fill_mismatch and r.expected_row is not None:
        e = r.expected_row
        out.append(
            absent(
                h,
                f"{hexa(r.fill_expected)} went into {r.sock}'s FILL at line {line[e]} and was not read "
                f"from RX before line {line[row]}",
                ts[e],
                ts[row],
                MARKERS,
            )
        )
    if r.state_row is not None and r.state_before not in (None, "FILL"):
        out.append(
            absent(
                h,
                f"no marker moved {hexa(r.addr)} between line {line[r.state_row]} ({r.state_before}) "
                f"and line {line[row]}",
                ts[r.state_row],
                ts[row],
                MARKERS,
            )
        )
    return out


def merged(*parts: list[Claim]) -> tuple[Claim, ...]:
    """The claims in order, a seen claim on the very lines of an earlier one left out."""
    out: list[Claim] = []
    said: set[tuple[int, ...]] = set()
    for part in parts:
        for c in part:
            if not c.absence and c.lines:
                key = tuple(sorted(c.lines))
                if key in said:
                    continue
                said.add(key)
            out.append(c)
    return tuple(out)


def tie_claim(tl: Timeline, rp: Replay, sock: str) -> list[Claim]:
    t = rp.ties.get(sock)
    if t is None:
        return []
    read, res = t
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    return [
        seen(
            f"xs {hexa(tl.xs[res])} is {sock}: CPU {cpu[res]} reserved {hexa(tl.addr[res])} (line {line[res]}) "
            f"and {sock} read it (line {line[read]})",
            (cpu[res], cpu[read]),
            (ts[res], ts[read]),
            (line[res], line[read]),
        )
    ]


def attribute_read(tl: Timeline, rp: Replay, r: RxRead, kind: str, symptom: str) -> Anomaly:
    """The verdict on a symptom seen when the application read `r.addr` from RX."""
    det = r.detection
    app_expected = det.expected if det is not None and det.kind == "fill_order" else None
    expected = (
        app_expected if app_expected is not None else (r.slot.addr if r.slot_mismatch and r.slot else r.fill_expected)
    )
    row = r.row
    base = dict(
        kind=kind,
        line=tl.line[row],
        ts=tl.ts[row],
        expected=expected,
        xs=r.xs,
        sock=r.sock,
        queue=r.queue,
        read_cpu=tl.cpu[row],
        row=row,
    )
    evidence = [ev(tl, row, symptom)]
    if r.state_row is not None and r.state_before not in (None, "FILL"):
        evidence.append(ev(tl, r.state_row, f"{hexa(r.addr)} was in {r.state_before}, not FILL"))

    if r.slot_mismatch and r.slot is not None:
        return _read_kernel_wrote(tl, rp, r, base, evidence)
    dup = root_duplicate(rp, row, (r.addr, expected))
    if dup is not None:
        return _read_duplicate(tl, rp, r, dup, base, evidence, symptom)
    if r.slot is not None and not r.slot_mismatch and r.addr != POISON and not r.skipped:
        return _read_fill_order(tl, rp, r, expected, base, evidence, symptom)
    return _read_undetermined(tl, rp, r, base, evidence, symptom)


def _read_kernel_wrote(tl: Timeline, rp: Replay, r: RxRead, base: dict, evidence: list[Evidence]) -> Anomaly:
    """The slot was reserved for another descriptor: the kernel published a slot it had not written."""
    assert r.slot is not None
    row, h = r.row, tl.history
    s = r.slot
    evidence.append(ev(tl, s.row, f"CPU {s.cpu} reserved the slot for {hexa(s.addr)}"))
    claims = list(merged(tie_claim(tl, rp, r.sock), list(r.alignment)))
    other, own = find_race(tl, rp, s.xs, s.row, row)
    unnamed: tuple[Gap, ...] = ()
    if other is not None:
        race = race_claims(tl, s, other)
        if all(c.holds for c in race):
            claims += race
        else:
            unnamed, other = failed(race), None
    flush_cpu = None
    if other is not None:
        slot_said = f", producer {tl.prod[other]} past slot {tl.slot[s.row]}" if tl.slot[s.row] is not None else ""
        evidence.append(ev(tl, other, f"CPU {tl.cpu[other]} flushed {hexa(s.xs)} first{slot_said}"))
        flush_cpu = tl.cpu[other]
    if own is not None:
        evidence.append(ev(tl, own, f"CPU {s.cpu}'s own flush, later"))
    read = "the poison" if r.addr == POISON else hexa(r.addr)
    text = (
        f"CPU {s.cpu} reserved RX slot of xs {hexa(s.xs)} for {hexa(s.addr)} "
        f"(line {tl.line[s.row]}), yet the application read {read} from that slot"
    )
    text += _order_held(tl, rp, r, s)
    missing: tuple[str, ...] = ()
    if other is not None:
        base["kind"] = "publish_race"
        text += (
            f": xsk_flush on CPU {flush_cpu} (line {tl.line[other]}) published the slot before "
            f"CPU {s.cpu} had written it (cross-CPU publish race, as in the veth NAPI race fixed by "
            f"fa349e396e48)"
        )
    elif unnamed:
        missing = tuple(g.describe() for g in unnamed)
        text += (
            "; the kernel published a slot it had not written (which CPU's flush did cannot be told: "
            + "; ".join(missing)
            + ")"
        )
    elif not rp.flushes:
        missing = (MISSING_FLUSH,)
        text += "; the kernel published a slot it had not written (no flush events: the publishing CPU is unknown)"
    elif h.kernel_until < tl.ts[row] and own is None:
        gaps = h.missing(s.ts, tl.ts[row], KERNEL_HISTORY)
        missing = tuple(g.describe() for g in gaps if g.why == "kernel-ended")
        text += (
            "; the kernel published a slot it had not written (the publishing flush may be after the "
            "kernel-event source stopped)"
        )
    else:
        text += "; the kernel published a slot it had not written"
    return Anomaly(
        verdict=KERNEL,
        addr=r.addr,
        reserve_cpu=s.cpu,
        flush_cpu=flush_cpu,
        explanation=text,
        evidence=tuple(evidence),
        missing=missing,
        claims=tuple(claims),
        **base,
    )


def _read_duplicate(
    tl: Timeline, rp: Replay, r: RxRead, dup: BadTransition, base: dict, evidence: list[Evidence], symptom: str
) -> Anomaly:
    """The application put a descriptor into a ring twice: the root cause of what the read saw."""
    claims = transition_claims(tl, dup) + symptom_claims(tl, r)
    if not all(c.holds for c in claims):
        # the duplicate may be the trace's own gap: no root cause is named
        return _unproven(base, r.addr, evidence, claims, symptom)
    evidence[:0] = [
        ev(tl, dup.state_row, f"{hexa(dup.addr)} enters {dup.state_before}"),
        ev(tl, dup.row, f"{hexa(dup.addr)} enters {dup.to} again"),
    ]
    evidence += kernel_reserves(tl, rp, dup.addr, dup.state_row)
    text = (
        f"{symptom}; root cause: the application put {hexa(dup.addr)} into {dup.to} at line "
        f"{tl.line[dup.row]} while it was still in {dup.state_before} (line {tl.line[dup.state_row]})"
    )
    return Anomaly(
        verdict=APPLICATION,
        addr=dup.addr,
        read_addr=r.addr,
        explanation=text,
        evidence=tuple(evidence),
        claims=tuple(claims),
        **base,
    )


def _read_fill_order(
    tl: Timeline, rp: Replay, r: RxRead, expected: Optional[int], base: dict, evidence: list[Evidence], symptom: str
) -> Anomaly:
    """The kernel delivered the slot as reserved: the FILL ring held what the application read."""
    assert r.slot is not None
    row, det = r.row, r.detection
    s = r.slot
    evidence.append(ev(tl, s.row, f"CPU {s.cpu} took {hexa(s.addr)} from FILL for this slot"))
    evidence += earlier_copy(tl, rp, r, s)
    # The FILL order is in question here: only the kernel's own events may vouch for the slot.
    claims = list(
        merged(
            tie_claim(tl, rp, r.sock),
            list(slot_alignment(tl, r.sock, row, s, r.prev, det, fill_order=False)),
            symptom_claims(tl, r),
        )
    )
    if not all(c.holds for c in claims):
        return _unproven(base, r.addr, evidence, claims, symptom)
    text = (
        f"{symptom}; the kernel took {hexa(r.addr)} from the FILL ring for this slot (CPU {s.cpu}, "
        f"line {tl.line[s.row]}) and delivered it as reserved: the FILL ring held it where the "
        f"application's own order expected {hexa(expected)}, so the application put it there"
    )
    return Anomaly(
        verdict=APPLICATION,
        addr=r.addr,
        reserve_cpu=s.cpu,
        explanation=text,
        evidence=tuple(evidence),
        claims=tuple(claims),
        **base,
    )


def _read_undetermined(
    tl: Timeline, rp: Replay, r: RxRead, base: dict, evidence: list[Evidence], symptom: str
) -> Anomaly:
    """No argument holds: undetermined, or the events the trace lacks to make one."""
    row, h = r.row, tl.history
    if r.alignment and not all(c.holds for c in r.alignment):
        return _unproven(
            base,
            r.addr,
            evidence,
            list(r.alignment),
            symptom,
            "the trace cannot tell which RX slot this read came from",
        )
    claims = symptom_claims(tl, r)
    if not all(c.holds for c in claims):
        return _unproven(base, r.addr, evidence, claims, symptom)
    if not rp.kernel_events.get("reserve"):
        missing = (MISSING_RESERVE, MISSING_FLUSH) if not rp.flushes else (MISSING_RESERVE,)
        why = "the trace has no kernel reserve events to tell what the kernel put in that slot"
    elif r.xs is None:
        missing = (MISSING_RESERVE,) + _late(tl, row)
        why = f"no kernel reserve event could be tied to socket {r.sock}"
    elif r.slot is not None and r.skipped:
        missing = _late(tl, row)
        why = (
            f"the read is paired with CPU {r.slot.cpu}'s reserve of {hexa(r.slot.addr)} (line "
            f"{tl.line[r.slot.row]}) by its address alone, passing over {r.skipped} older reserve(s), so "
            "which slot it came from cannot be told"
        )
    elif h.kernel_until < tl.ts[row]:
        missing = tuple(g.describe() for g in h.gaps if g.why == "kernel-ended")
        why = f"the kernel-event source stopped at {h.kernel_until:.6f}: no reserve in the trace pairs with this read"
    else:
        missing = _late(tl, row)
        why = "the trace starts too late to align the kernel's reserves with the application's reads"
    # no argument was made: the missing events say it all
    return Anomaly(
        verdict=UNDETERMINED,
        addr=r.addr,
        explanation=f"{symptom}; {why}",
        evidence=tuple(evidence),
        missing=missing,
        **base,
    )


def _late(tl: Timeline, row: int) -> tuple[str, ...]:
    """The CPUs whose history begins late, up to this row (what an overrun trace lacks)."""
    return tuple(
        g.describe()
        for g in tl.history.gaps
        if g.why == "buffer" and g.before > tl.window.start and g.before <= tl.ts[row]
    )


def _order_held(tl: Timeline, rp: Replay, r: RxRead, s) -> str:
    """What the reserves around the slot add: FILL was consumed in the
    application's order, and whether the reserving softirq changed CPU."""
    said = ""
    rows = rp.reserves.get(s.xs, [])
    pos = bisect.bisect_right(rows, s.row)
    det = r.detection
    if det is not None and det.remaining:
        nxt = [tl.addr[row] for row in rows[pos : pos + len(det.remaining)] if row < r.row]
        agree = 0
        for got, want in zip(nxt, det.remaining):
            if got != want:
                break
            agree += 1
        if agree:
            said += (
                f"; the kernel's next {agree} reserve(s) ({', '.join(hexa(a) for a in nxt[:agree])}) "
                "follow the application's FILL order, so FILL itself was in order"
            )
    if r.prev is not None and r.prev.slot.cpu != s.cpu and pos >= 2 and rows[pos - 2] == r.prev.slot.row:
        said += f"; the softirq had moved from CPU {r.prev.slot.cpu} to CPU {s.cpu} for this slot"
    return said


def _unproven(
    base: dict, addr: Optional[int], evidence: list[Evidence], claims: list[Claim], symptom: str, what: str = ""
) -> Anomaly:
    """Undetermined: the argument needs history the trace does not hold."""
    gaps = failed(claims)
    lost = [g for g in gaps if g.why == "lost"]
    said = "; ".join(g.describe() for g in gaps)
    if what:
        why = f"{what}: {said}"
    elif lost and len(lost) == len(gaps):
        why = f"events were lost inside the causal window: {said}"
    else:
        why = f"the trace lacks what the verdict needs: {said}"
    text = f"{symptom}; {why}" if symptom else why
    missing = tuple(dict.fromkeys("lost events" if g.why == "lost" else g.describe() for g in gaps))
    return Anomaly(
        verdict=UNDETERMINED,
        addr=addr,
        explanation=text,
        evidence=tuple(evidence),
        missing=missing,
        claims=tuple(claims),
        **base,
    )
