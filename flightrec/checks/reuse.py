"""A frame reused before its completion: given to the kernel again while it is still in TX."""

from __future__ import annotations

from flightrec.checks.anomaly import APPLICATION, Anomaly, Evidence
from flightrec.checks.attribution import _unproven, ev, transition_claims
from flightrec.hexaddr import hexa
from flightrec.model.replay import BadTransition, Replay
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds

KIND = "reuse_before_completion"
# The marker's FROM: what the application believed the frame was when it reused
# it. RX -> FILL of a frame in TX is one buffer in two rings (duplicate_insertion).
BELIEVED_DONE = ("COMP", "FREE", "TX")


def check_reuse_before_completion(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """The application puts a frame into FILL or TX (`COMP -> FILL`, `COMP -> TX`,
    `FREE -> ...`) while its history says it is in TX, with no `TX -> COMP` marker
    in between: it reused the frame before reading its COMPLETION entry, so the
    kernel may still be sending it (a copy-mode sendto() copies it only when it
    gets to the descriptor; zero-copy drivers DMA from it until they complete).
    The application reads COMPLETION itself, so its markers alone prove it.
    """
    return [
        reuse_anomaly(tl, rp, b)
        for b in rp.bad
        if b.state_before == "TX" and b.to in kinds.KERNEL_OWNED and tl.frm[b.row] in BELIEVED_DONE
    ]


def reuse_anomaly(tl: Timeline, rp: Replay, b: BadTransition) -> Anomaly:
    base = dict(
        kind=KIND, line=tl.line[b.row], ts=tl.ts[b.row], sock=b.sock, queue=b.queue, read_cpu=tl.cpu[b.row], row=b.row
    )
    claims = transition_claims(tl, b)
    if b.claimed:
        evidence: list[Evidence] = [ev(tl, b.row, "the application's own marker")]
        text = (
            f"the application wrote {hexa(b.addr)} TX -> {b.to} ({b.sock}): by its own account it put a frame "
            f"the kernel had not completed into {b.to}, reusing it before its COMPLETION entry"
        )
    else:
        evidence = [
            ev(tl, b.state_row, f"{tl.sock[b.state_row]} put {hexa(b.addr)} into its TX ring"),
            ev(tl, b.row, f"and {b.sock} into {b.to} with no COMPLETION entry of it read in between"),
        ]
        if not all(c.holds for c in claims):
            return _unproven(base, b.addr, evidence, claims, "")
        text = (
            f"{b.sock} put {hexa(b.addr)} into {b.to} (line {tl.line[b.row]}, written {tl.frm[b.row]} -> {b.to}) "
            f"while it was still in TX (line {tl.line[b.state_row]}): the application reused the frame before "
            "reading its COMPLETION entry, while the kernel may still have it to send"
        )
    evidence += _kernel_after(tl, b)
    return Anomaly(
        verdict=APPLICATION, addr=b.addr, explanation=text, evidence=tuple(evidence), claims=tuple(claims), **base
    )


def _kernel_after(tl: Timeline, b: BadTransition, limit: int = 3) -> list[Evidence]:
    """What shows the frame was still in flight: the kernel reading it to transmit it, and
    the COMPLETION entry the application read, after the reuse."""
    out: list[Evidence] = []
    kind, addr, to, frm = tl.kind, tl.addr, tl.to, tl.frm
    for row in range(b.row + 1, len(kind)):
        if addr[row] != b.addr:
            continue
        if kind[row] == kinds.TX:
            out.append(ev(tl, row, f"the kernel read {hexa(b.addr)} to transmit it after the reuse"))
        elif kind[row] == kinds.MARKER and frm[row] == "TX" and to[row] == "COMP":
            out.append(ev(tl, row, f"the COMPLETION entry of {hexa(b.addr)} came only here"))
            break
        if len(out) >= limit:
            break
    return out
