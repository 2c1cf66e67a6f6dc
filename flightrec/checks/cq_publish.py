"""Cross-socket publish of the COMPLETION ring: one socket's skb destructor publishes a slot another
socket reserved while that socket's skb is still in flight (30f241fcf52a)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Optional

from flightrec.checks.anomaly import KERNEL, UNDETERMINED, Anomaly
from flightrec.checks.attribution import ev
from flightrec.hexaddr import hexa
from flightrec.model.history import KERNEL_HISTORY, absent, seen
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds

KIND = "cq_cross_publish"


def check_cq_cross_publish(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """Sockets sharing a UMEM's COMPLETION ring (`cq`) reserve its slots in turn; a
    kernel that writes the address at reserve and publishes by count (6.6..6.17:
    xsk_cq_reserve_addr_locked, xsk_cq_submit_locked) lets the skb destructor of
    socket Y publish the slot socket X reserved. Where X had then reserved more
    slots up to that one than its own destructors had published, one of X's
    published slots holds a frame whose skb is still in flight: the application
    is handed it back and reuses it while it is being sent. Needs `cq_reserve`
    with `xs cq slot` and `cq_submit` with `xs cq slot` (Debian 6.12's probes);
    counts start with the trace, every CPU's kernel history whole from there. A
    reserve event is an attempt (the probe fires before a full ring refuses it)
    and a reservation may be cancelled (xsk_cq_cancel_locked has no probe): both
    leave the slot to the next reserve, which replaces them.
    """
    if not _has_slots(tl):
        # only 6.6..6.17 reserve for a socket (cannot_run says so); and the columns
        # below are made on first use: not for a trace without them
        return []
    rows = tl.rows_of(kinds.CQ_RESERVE, kinds.CQ_SUBMIT)
    kind, xs_col, cq_col, slot_col, n_col = tl.kind, tl.xs, tl.cq, tl.slot, tl.n
    out = []
    reserved: dict[int, dict[int, int]] = defaultdict(dict)  # cq -> slot -> reserve row
    slots: dict[tuple[int, int], list[int]] = defaultdict(list)  # (cq, xs) -> slots reserved, in order
    submitted: dict[tuple[int, int], int] = defaultdict(int)  # (cq, xs) -> entries its destructors published
    for row in rows:
        k = kind[row]
        cq, x, slot = cq_col[row], xs_col[row], slot_col[row]
        if cq is None or x is None or slot is None:
            continue
        if k == kinds.CQ_RESERVE:
            prev = reserved[cq].get(slot)
            if prev is not None:
                # the slot reserved again: the earlier attempt failed (a full ring) or was
                # cancelled (xsk_cq_cancel_locked: the skb could not be built or sent)
                taken = slots[(cq, xs_col[prev])]
                del taken[len(taken) - 1 - taken[::-1].index(slot)]
            reserved[cq][slot] = row
            slots[(cq, x)].append(slot)
            continue
        n = n_col[row] if n_col[row] is not None else 1
        submitted[(cq, x)] += n
        for s in range(slot, slot + n):
            r = reserved[cq].pop(s, None)
            if r is None or xs_col[r] == x:
                continue
            other = xs_col[r]
            upto = bisect.bisect_right(slots[(cq, other)], s)
            if upto > submitted[(cq, other)]:
                out.append(_anomaly(tl, r, row, upto, submitted[(cq, other)]))
    return out


def _has_slots(tl: Timeline) -> bool:
    """Whether some COMPLETION reserve names its socket and ring (its slot comes with the ring)."""
    (_, has_cq), (_, has_xs) = tl.field_array("cq"), tl.field_array("xs")
    return any(has_cq[r] and has_xs[r] for r in tl.rows_of(kinds.CQ_RESERVE))


def cannot_run(tl: Timeline) -> Optional[str]:
    """Why a trace with COMPLETION reserves cannot feed the check (None: it can, or has none)."""
    if len(tl.rows_of(kinds.CQ_RESERVE)) == 0 or _has_slots(tl):
        return None
    return (
        "its cq_reserve events name no socket: kernels with 30f241fcf52a (6.18 on) reserve for the "
        "pool and write each address at submit, which leaves no cross-socket publish to see"
    )


def _anomaly(tl: Timeline, r: int, row: int, upto: int, done: int) -> Anomaly:
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    x, y, a, s = tl.xs[r], tl.xs[row], tl.addr[r], tl.slot[r]
    claims = (
        seen(
            f"xs {hexa(x)} reserved COMPLETION slot {s} of cq {hexa(tl.cq[r])} for {hexa(a)} (line {line[r]}); "
            f"xs {hexa(y)}'s skb destructor published it (line {line[row]})",
            (cpu[r], cpu[row]),
            (ts[r], ts[row]),
            (line[r], line[row]),
        ),
        absent(
            tl.history,
            f"every COMPLETION reserve and submit of xs {hexa(x)} since the trace began is in it "
            f"({upto} slots reserved up to slot {s}, {done} published by its own destructors)",
            tl.window.start,
            ts[row],
            KERNEL_HISTORY,
        ),
    )
    evidence = [
        ev(tl, r, f"xs {hexa(x)} reserved slot {s} for {hexa(a)}"),
        ev(tl, row, f"xs {hexa(y)}'s destructor published slots from {tl.slot[row]} on"),
    ]
    read = next(
        (
            i
            for i in range(row + 1, len(tl.kind))
            if tl.kind[i] == kinds.MARKER and tl.addr[i] == a and tl.frm[i] == "TX" and tl.to[i] == "COMP"
        ),
        None,
    )
    if read is not None:
        evidence.append(ev(tl, read, f"the application read {hexa(a)} from COMPLETION"))
    base = dict(
        kind=KIND,
        line=line[row],
        ts=ts[row],
        addr=a,
        xs=x,
        reserve_cpu=cpu[r],
        flush_cpu=cpu[row],
        evidence=tuple(evidence),
        claims=claims,
        row=row,
    )
    symptom = (
        f"the skb destructor of xs {hexa(y)} published COMPLETION slot {s}, which xs {hexa(x)} had reserved "
        f"for {hexa(a)} (line {line[r]}), while {upto - done} of xs {hexa(x)}'s reserved slots up to it had "
        "no destroyed skb"
    )
    gaps = tuple(dict.fromkeys(g.describe() for c in claims for g in c.gaps))
    if gaps:
        return Anomaly(
            verdict=UNDETERMINED,
            explanation=f"{symptom}; the trace lacks what the verdict needs: " + "; ".join(gaps),
            missing=gaps,
            **base,
        )
    return Anomaly(
        verdict=KERNEL,
        explanation=(
            f"{symptom}: one socket published another's COMPLETION slot before that socket's frame was sent, so the "
            "application may reuse a frame in flight (the immature COMPLETION production fixed by 30f241fcf52a)"
        ),
        **base,
    )
