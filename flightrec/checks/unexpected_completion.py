"""A COMPLETION entry for a frame not in TX: completed twice, or never sent."""

from __future__ import annotations

from typing import Optional

from flightrec.checks.anomaly import APPLICATION, KERNEL, UNDETERMINED, Anomaly, Evidence
from flightrec.checks.attribution import ev, transition_claims
from flightrec.checks.completion import SENT
from flightrec.hexaddr import hexa
from flightrec.model.history import KERNEL_HISTORY, MARKERS, Claim, absent, seen
from flightrec.model.replay import BadTransition, Replay
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds

KIND = "unexpected_completion"
# the kernel writing an address into a COMPLETION slot: at submit (6.1, 6.18+) or reserve (6.6..6.17)
WRITES = (kinds.CQ_SUBMIT, kinds.CQ_RESERVE)
MISSING_WRITES = (
    "COMPLETION events with the address written (kprobes: cq_submit on 6.1, cq_reserve on "
    "6.6..6.17; `flightrec vm record`)"
)


def check_unexpected_completion(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """The application reads ADDR from COMPLETION (`TX -> COMP`) while its history
    says ADDR is not in TX (completed before, refilled, received): either the
    kernel wrote ADDR into a second COMPLETION entry, or the application read
    one entry twice (or wrote no marker for a TX insertion). The kernel's own
    COMPLETION writes of ADDR since it was last put into TX tell which: two
    writes for one send is the kernel's, one write the application's. A
    history the application's own duplicate or reuse explains is left to
    those checks.
    """
    explained = {b.addr for b in rp.bad if b.to in kinds.KERNEL_OWNED}
    found = [
        b for b in rp.bad if b.to == "COMP" and not b.claimed and b.state_before != "TX" and b.addr not in explained
    ]
    if not found:
        return []
    has_writes = any(_writes(tl, r) for r in tl.rows_of(*WRITES))
    return [_judge(tl, b, has_writes) for b in found]


def _writes(tl: Timeline, row: int) -> bool:
    """The event wrote its address into a COMPLETION slot: a submit with an address (6.1), or a
    reserve with address and slot (6.6..6.17 write at reserve; 6.1's reserve has no slot and
    writes nothing)."""
    k = tl.kind[row]
    return tl.addr[row] is not None and (k == kinds.CQ_SUBMIT or (k == kinds.CQ_RESERVE and tl.slot[row] is not None))


def _last_tx(tl: Timeline, addr: int, before: int) -> Optional[int]:
    for row in range(before - 1, -1, -1):
        if tl.kind[row] == kinds.MARKER and tl.addr[row] == addr and tl.to[row] == "TX":
            return row
    return None


def _judge(tl: Timeline, b: BadTransition, has_writes: bool) -> Anomaly:
    a, row = b.addr, b.row
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    tx = _last_tx(tl, a, row)
    start = tx if tx is not None else -1
    writes = [r for r in range(start + 1, row) if tl.kind[r] in WRITES and tl.addr[r] == a and _writes(tl, r)]
    sends = [r for r in range(start + 1, row) if tl.kind[r] in SENT and tl.addr[r] == a]
    evidence: list[Evidence] = [ev(tl, b.state_row, f"{hexa(a)} enters {b.state_before}")]
    if tx is not None:
        evidence.insert(0, ev(tl, tx, f"{tl.sock[tx]} put {hexa(a)} into TX"))
    evidence += [ev(tl, r, f"the kernel wrote {hexa(a)} into a COMPLETION entry") for r in writes[:3]]
    evidence += [ev(tl, r, f"the kernel sent {hexa(a)}") for r in sends[:2]]
    evidence.append(ev(tl, row, f"{b.sock} read {hexa(a)} from COMPLETION while it was in {b.state_before}"))
    symptom = (
        f"{b.sock} read {hexa(a)} from COMPLETION (line {line[row]}) while its history says "
        f"{b.state_before} (line {line[b.state_row]})"
        + (
            f", completed already since its TX at line {line[tx]}"
            if tx is not None
            else ", and no marker put it into TX"
        )
    )
    base = dict(
        kind=KIND,
        line=line[row],
        ts=ts[row],
        addr=a,
        sock=b.sock,
        queue=b.queue,
        read_cpu=cpu[row],
        evidence=tuple(evidence),
        row=row,
    )
    history = transition_claims(tl, b)
    lost = tuple(dict.fromkeys(g.describe() for c in history for g in c.gaps))
    if lost:
        # the markers in between may be missing: its history itself is not proven
        return Anomaly(
            verdict=UNDETERMINED,
            explanation=f"{symptom}; events may be missing in between: " + "; ".join(lost),
            missing=lost,
            claims=tuple(history),
            **base,
        )
    if tx is None or not has_writes:
        why = (
            "the trace has no COMPLETION events with addresses to tell a second entry written by the kernel "
            "from one entry read twice"
            if not has_writes
            else "no marker put it into TX in the trace, so which COMPLETION entries belong to it cannot be told"
        )
        return Anomaly(
            verdict=UNDETERMINED,
            explanation=f"{symptom}; {why}",
            missing=(MISSING_WRITES,) if not has_writes else (),
            **base,
        )
    t0, t1 = ts[tx], ts[row]
    claims: list[Claim] = [
        absent(
            tl.history,
            f"no marker put {hexa(a)} into TX again between line {line[tx]} and line {line[row]}",
            t0,
            t1,
            MARKERS,
        ),
        absent(
            tl.history,
            f"the kernel's COMPLETION writes and sends of {hexa(a)} between line {line[tx]} and "
            f"line {line[row]} are all in the trace",
            t0,
            t1,
            KERNEL_HISTORY,
        ),
    ]
    if writes:
        claims.insert(
            0,
            seen(
                f"the kernel wrote {hexa(a)} into {len(writes)} COMPLETION entr"
                f"{'y' if len(writes) == 1 else 'ies'} (line{'s' if len(writes) > 1 else ''} "
                f"{', '.join(str(line[r]) for r in writes)})",
                [cpu[r] for r in writes],
                [ts[r] for r in writes],
                [line[r] for r in writes],
            ),
        )
    gaps = tuple(dict.fromkeys(g.describe() for c in claims for g in c.gaps))
    if gaps:
        return Anomaly(
            verdict=UNDETERMINED,
            explanation=f"{symptom}; the trace lacks what the verdict needs: " + "; ".join(gaps),
            missing=gaps,
            claims=tuple(claims),
            **base,
        )
    if len(writes) >= 2 and len(sends) <= 1:
        return Anomaly(
            verdict=KERNEL,
            claims=tuple(claims),
            explanation=(
                f"{symptom}: the kernel wrote {hexa(a)} into {len(writes)} COMPLETION entries for "
                f"{'one send' if sends else 'a frame put into TX once'}, so the application was handed it twice "
                "(a wrong count of COMPLETION entries, as 0ebc27a4c67d fixed)"
            ),
            **base,
        )
    if len(writes) == 1:
        return Anomaly(
            verdict=APPLICATION,
            claims=tuple(claims),
            explanation=(
                f"{symptom}: the kernel wrote {hexa(a)} into one COMPLETION entry only, which the application had "
                "read already: it read one entry twice"
            ),
            **base,
        )
    return Anomaly(
        verdict=UNDETERMINED,
        claims=tuple(claims),
        explanation=(
            f"{symptom}; the kernel's COMPLETION writes of {hexa(a)} ({len(writes)}) and sends ({len(sends)}) since "
            "its TX do not tell who"
        ),
        missing=(MISSING_WRITES,),
        **base,
    )
