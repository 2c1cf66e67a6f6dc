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

A loss of events inside the causal window makes any of these undetermined.
"""

from __future__ import annotations

import bisect
from typing import Optional

from flightrec.checks.anomaly import APPLICATION, KERNEL, UNDETERMINED, Anomaly, Evidence
from flightrec.model.replay import KERNEL_OWNED, POISON, BadTransition, Replay, RxRead
from flightrec.model.timeline import Timeline

MISSING_RESERVE = "reserve events (kprobe __xsk_rcv_zc at xskq_prod_reserve_desc)"
MISSING_FLUSH = "flush events (kprobe xsk_flush)"


def hexa(v: Optional[int]) -> str:
    return "?" if v is None else f"{v:#x}"


def ev(tl: Timeline, row: int, why: str) -> Evidence:
    return Evidence(tl.line[row], tl.text(row), why, row)


def root_duplicate(rp: Replay, before_row: int, addrs: tuple[Optional[int], ...]) -> Optional[BadTransition]:
    """The application's duplicate insertion that explains a later symptom."""
    dups = [b for b in rp.bad if b.row < before_row and b.to in KERNEL_OWNED and b.state_before in KERNEL_OWNED]
    for b in reversed(dups):
        if b.addr in addrs:
            return b
    return dups[0] if dups else None


def find_race(tl: Timeline, rp: Replay, xs: int, reserve_row: int, until_row: int) -> tuple[Optional[int], Optional[int]]:
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


def kernel_reserves(tl: Timeline, rp: Replay, addr: int, after_row: int, limit: int = 4) -> list[Evidence]:
    """The kernel's own reserve events for a descriptor since a row: what it
    did with the buffer the application gave it twice."""
    rows = sorted(r for xs_rows in rp.reserves.values()
                  for r in xs_rows[bisect.bisect_right(xs_rows, after_row):] if tl.addr[r] == addr)
    return [ev(tl, r, f"the kernel took {hexa(addr)} from FILL on CPU {tl.cpu[r]}") for r in rows[:limit]]


def dup_anomaly(tl: Timeline, b: BadTransition, kind: str, rp: Optional[Replay] = None) -> Anomaly:
    """An insertion into FILL or TX of a descriptor already in FILL or TX."""
    base = dict(kind=kind, line=tl.line[b.row], ts=tl.ts[b.row], sock=b.sock, queue=b.queue, read_cpu=tl.cpu[b.row])
    where = "FILL and TX at once" if {b.state_before, b.to} == {"FILL", "TX"} else f"{b.to} twice"
    if b.claimed:
        # The marker itself says FILL -> TX (or the like): no lost history can excuse it.
        text = (
            f"the application wrote {hexa(b.addr)} {b.state_before} -> {b.to} ({b.sock}): by its own account "
            f"it put a descriptor that was in {b.state_before} into {b.to}, one buffer in {where} (AF_XDP FAQ)"
        )
        kernel = tuple(kernel_reserves(tl, rp, b.addr, b.row)) if rp is not None else ()
        return Anomaly(verdict=APPLICATION, addr=b.addr, explanation=text,
                       evidence=(ev(tl, b.row, "the application's own marker"),) + kernel, **base)
    evidence = (ev(tl, b.state_row, f"{hexa(b.addr)} enters {b.state_before}"), ev(tl, b.row, f"and {b.to} again"))
    losses = causal_losses(tl, (b.state_row,), b.row)
    if losses:
        return _lossy(base, b.addr, list(evidence), losses)
    text = (
        f"the application put {hexa(b.addr)} into {b.to} ({b.sock}) while it was still in "
        f"{b.state_before} (line {tl.line[b.state_row]}), with no RX in between: one buffer in "
        f"{where}, which corrupts packets (AF_XDP FAQ)"
    )
    if rp is not None:
        evidence += tuple(kernel_reserves(tl, rp, b.addr, b.state_row))
    return Anomaly(verdict=APPLICATION, addr=b.addr, explanation=text, evidence=evidence, **base)


def causal_losses(tl: Timeline, rows: tuple[Optional[int], ...], end_row: int):
    """Losses between the oldest fact a verdict rests on and the moment it is given."""
    known = [r for r in rows if r is not None]
    if not tl.losses or not known:
        return []
    return tl.losses_between(tl.ts[min(known)], tl.ts[end_row])


def attribute_read(tl: Timeline, rp: Replay, r: RxRead, kind: str, symptom: str) -> Anomaly:
    """The verdict on a symptom seen when the application read `r.addr` from RX."""
    det = r.detection
    app_expected = det.expected if det is not None and det.kind == "fill_order" else None
    expected = app_expected if app_expected is not None else (
        r.slot.addr if r.slot_mismatch and r.slot else r.fill_expected
    )
    row = r.row
    base = dict(
        kind=kind, line=tl.line[row], ts=tl.ts[row], expected=expected, xs=r.xs, sock=r.sock,
        queue=r.queue, read_cpu=tl.cpu[row],
    )
    evidence = [ev(tl, row, symptom)]
    if r.state_row is not None and r.state_before not in (None, "FILL"):
        evidence.append(ev(tl, r.state_row, f"{hexa(r.addr)} was in {r.state_before}, not FILL"))

    if r.slot_mismatch and r.slot is not None:
        s = r.slot
        evidence.append(ev(tl, s.row, f"CPU {s.cpu} reserved the slot for {hexa(s.addr)}"))
        other, own = find_race(tl, rp, s.xs, s.row, row)
        losses = causal_losses(tl, (s.row, r.state_row, r.expected_row), row)
        if losses:
            return _lossy(base, r.addr, evidence, losses)
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
        elif not rp.flushes:
            missing = (MISSING_FLUSH,)
            text += "; the kernel published a slot it had not written (no flush events: the publishing CPU is unknown)"
        else:
            text += "; the kernel published a slot it had not written"
        return Anomaly(
            verdict=KERNEL, addr=r.addr, reserve_cpu=s.cpu, flush_cpu=flush_cpu, explanation=text,
            evidence=tuple(evidence), missing=missing, **base,
        )

    dup = root_duplicate(rp, row, (r.addr, expected))
    if dup is not None:
        losses = causal_losses(tl, (dup.state_row, r.state_row, r.expected_row), row)
        if losses:
            return _lossy(base, dup.addr, evidence, losses)
        evidence[:0] = [ev(tl, dup.state_row, f"{hexa(dup.addr)} enters {dup.state_before}"),
                        ev(tl, dup.row, f"{hexa(dup.addr)} enters {dup.to} again")]
        evidence += kernel_reserves(tl, rp, dup.addr, dup.state_row)
        text = (
            f"{symptom}; root cause: the application put {hexa(dup.addr)} into {dup.to} at line "
            f"{tl.line[dup.row]} while it was still in {dup.state_before} (line {tl.line[dup.state_row]})"
        )
        return Anomaly(verdict=APPLICATION, addr=dup.addr, read_addr=r.addr, explanation=text,
                       evidence=tuple(evidence), **base)

    if r.slot is not None and not r.slot_mismatch and r.addr != POISON:
        s = r.slot
        evidence.append(ev(tl, s.row, f"CPU {s.cpu} took {hexa(s.addr)} from FILL for this slot"))
        losses = causal_losses(tl, (s.row, r.state_row, r.expected_row), row)
        if losses:
            return _lossy(base, r.addr, evidence, losses)
        text = (
            f"{symptom}; the kernel took {hexa(r.addr)} from the FILL ring for this slot (CPU {s.cpu}, "
            f"line {tl.line[s.row]}) and delivered it as reserved: the FILL ring held it where the "
            f"application's own order expected {hexa(expected)}, so the application put it there"
        )
        return Anomaly(verdict=APPLICATION, addr=r.addr, reserve_cpu=s.cpu, explanation=text,
                       evidence=tuple(evidence), **base)

    losses = causal_losses(tl, (r.state_row, r.expected_row), row)
    if losses:
        return _lossy(base, r.addr, evidence, losses)
    if not rp.kernel_events.get("reserve"):
        missing = (MISSING_RESERVE, MISSING_FLUSH) if not rp.flushes else (MISSING_RESERVE,)
        why = "the trace has no kernel reserve events to tell what the kernel put in that slot"
    elif r.xs is None:
        missing = (MISSING_RESERVE,)
        why = f"no kernel reserve event could be tied to socket {r.sock}"
    else:
        missing = ()
        why = "the trace starts too late to align the kernel's reserves with the application's reads"
    return Anomaly(verdict=UNDETERMINED, addr=r.addr, explanation=f"{symptom}; {why}",
                   evidence=tuple(evidence), missing=missing, **base)


def _order_held(tl: Timeline, rp: Replay, r: RxRead, s) -> str:
    """What the reserves around the slot add: FILL was consumed in the
    application's order, and whether the reserving softirq changed CPU."""
    said = ""
    rows = rp.reserves.get(s.xs, [])
    pos = bisect.bisect_right(rows, s.row)
    det = r.detection
    if det is not None and det.remaining:
        nxt = [tl.addr[row] for row in rows[pos:pos + len(det.remaining)] if row < r.row]
        agree = 0
        for got, want in zip(nxt, det.remaining):
            if got != want:
                break
            agree += 1
        if agree:
            said += (f"; the kernel's next {agree} reserve(s) ({', '.join(hexa(a) for a in nxt[:agree])}) "
                     "follow the application's FILL order, so FILL itself was in order")
    if pos >= 2 and tl.cpu[rows[pos - 2]] != s.cpu:
        said += f"; the softirq had moved from CPU {tl.cpu[rows[pos - 2]]} to CPU {s.cpu} for this slot"
    return said


def _lossy(base: dict, addr: Optional[int], evidence: list[Evidence], losses) -> Anomaly:
    said = "; ".join(
        f"CPU {loss.cpu} lost {loss.count if loss.count is not None else 'some'} events "
        f"(line {loss.line}, between {loss.after:.6f} and {loss.before:.6f})"
        for loss in losses
    )
    return Anomaly(verdict=UNDETERMINED, addr=addr, explanation=f"events were lost inside the causal window: {said}",
                   evidence=tuple(evidence), missing=("lost events",), **base)
