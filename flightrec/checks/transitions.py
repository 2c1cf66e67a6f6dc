"""Invalid transitions: the post's state machine over each descriptor's markers."""

from __future__ import annotations

from flightrec.checks.anomaly import APPLICATION, UNDETERMINED, Anomaly
from flightrec.checks.attribution import attribute_read, ev, root_duplicate, transition_claims
from flightrec.checks.fill_order import reports as fill_order_reports
from flightrec.hexaddr import hexa
from flightrec.model.history import failed
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse.format import KERNEL_OWNED, POISON


def check_transitions(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """Each descriptor moves FREE/COMP/RX → FILL/TX → RX/COMP → …; a move its
    history does not allow is reported (insertions into a kernel ring twice are
    the duplicates check's). A descriptor read from RX that was last in TX or
    COMP (the post's "Tx to Rx", "Comp to Rx") was not in FILL: the
    attribution decides whether the kernel published it or the application
    had put it in FILL unseen. Completions of what was never in TX and
    releases of what is still in a kernel ring are the application's unless a
    duplicate explains them.
    """
    out = []
    for r in rp.reads:
        if r.addr == POISON or r.state_before in (None, "FILL"):
            continue
        if fill_order_reports(r):
            # run_checks keeps one anomaly per line, the FILL order's (an earlier check):
            # attributing the read again here would be thrown away.
            continue
        symptom = (
            f"{r.sock} read {hexa(r.addr)} from RX while it was in {r.state_before} (invalid {r.state_before} -> RX)"
        )
        out.append(attribute_read(tl, rp, r, "invalid_transition", symptom))
    for b in rp.bad:
        if b.to in KERNEL_OWNED and b.state_before in KERNEL_OWNED:
            continue
        evidence = (
            ev(tl, b.state_row, f"{hexa(b.addr)} enters {b.state_before}"),
            ev(tl, b.row, f"invalid {b.state_before} -> {b.to}"),
        )
        text = f"{b.sock} moved {hexa(b.addr)} {b.state_before} -> {b.to}, which its history does not allow"
        verdict = UNDETERMINED
        missing: tuple[str, ...] = ()
        claims = tuple(transition_claims(tl, b))
        gaps = [g for c in claims for g in c.gaps]
        if b.claimed:
            text = f"{b.sock} wrote {hexa(b.addr)} {b.state_before} -> {b.to}, not a valid transition"
            verdict = APPLICATION if b.to == "FREE" or b.state_before in KERNEL_OWNED else UNDETERMINED
        elif gaps:
            text += "; events may be missing in between, so the history may be incomplete: " + "; ".join(
                dict.fromkeys(g.describe() for g in gaps)
            )
        elif b.to == "FREE":
            verdict = APPLICATION
            text += ": the application released a descriptor the kernel still holds"
        else:
            dup = root_duplicate(rp, b.row, (b.addr,))
            unproven = failed(transition_claims(tl, dup)) if dup is not None else ()
            if dup is not None and not unproven:
                verdict = APPLICATION
                text += (
                    f"; explained by the application's duplicate insertion of {hexa(dup.addr)} "
                    f"at line {tl.line[dup.row]}"
                )
            elif dup is not None:
                # the insertion that would explain it is itself not proven
                missing = tuple(dict.fromkeys(g.describe() for g in unproven))
                text += (
                    f"; the application's insertion of {hexa(dup.addr)} at line {tl.line[dup.row]} would explain "
                    "it, but the trace lacks: " + "; ".join(missing)
                )
        out.append(
            Anomaly(
                "invalid_transition",
                verdict,
                tl.line[b.row],
                tl.ts[b.row],
                text,
                addr=b.addr,
                sock=b.sock,
                queue=b.queue,
                read_cpu=tl.cpu[b.row],
                evidence=evidence,
                claims=claims,
                missing=missing,
                row=b.row,
            )
        )
    return out
