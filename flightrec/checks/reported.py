"""What the application itself reported in a detection line and no other check explains."""

from __future__ import annotations

from flightrec.checks.anomaly import APPLICATION, KERNEL, UNDETERMINED, Anomaly, Evidence
from flightrec.checks.attribution import attribute_read, ev, root_duplicate, tie_claim
from flightrec.hexaddr import hexa
from flightrec.model.history import seen
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline


def check_reported(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """A detection line is the application's own word that something broke
    (length mismatch between XDP metadata and descriptor, an invalid transition
    it saw); it is reported even when the analyzer's replay saw nothing, so an
    anomaly the application caught is never silently dropped. For a length
    mismatch the kernel's reserve event, when present, tells whose length is
    wrong.
    """
    out = []
    reads = {r.row: r for r in rp.reads}
    for row, det in rp.detections:
        if det.kind in ("fill_order", "poison") and row in reads or det.kind == "payload":
            continue  # fill_order / poison / payload own these
        r = reads.get(row)
        addr = tl.addr[row]
        if det.kind == "length":
            symptom = f"{tl.sock[row]} read {hexa(addr)} with len {det.length} but XDP saw {det.xdp_length} bytes"
            out.append(_length(tl, rp, row, det, symptom, r))
            continue
        symptom = f"the application reported: {tl.detail[row]}"
        if r is not None:
            out.append(attribute_read(tl, rp, r, "app_reported", symptom))
        else:
            out.append(
                Anomaly(
                    "app_reported",
                    UNDETERMINED,
                    tl.line[row],
                    tl.ts[row],
                    symptom,
                    addr=addr,
                    row=row,
                    sock=tl.sock[row],
                    queue=tl.queue[row],
                    read_cpu=tl.cpu[row],
                    evidence=(ev(tl, row, "the application's detection line"),),
                )
            )
    return out


def _length(tl: Timeline, rp: Replay, row: int, det, symptom: str, r) -> Anomaly:
    if r is not None and (r.slot_mismatch or r.fill_mismatch or r.state_before not in (None, "FILL")):
        return attribute_read(tl, rp, r, "length_mismatch", symptom)
    addr = tl.addr[row]
    base = dict(
        line=tl.line[row],
        ts=tl.ts[row],
        addr=addr,
        sock=tl.sock[row],
        queue=tl.queue[row],
        read_cpu=tl.cpu[row],
        xs=r.xs if r is not None else None,
        row=row,
    )
    evidence: list[Evidence] = [ev(tl, row, symptom)]
    slot = r.slot if r is not None else None
    if slot is None or tl.length[slot.row] is None:
        return Anomaly(
            "length_mismatch",
            UNDETERMINED,
            explanation=f"{symptom}; no kernel reserve event with the length the kernel wrote",
            evidence=tuple(evidence),
            missing=("reserve events with len",),
            **base,
        )
    klen = tl.length[slot.row]
    evidence.append(ev(tl, slot.row, f"the kernel reserved {hexa(addr)} with len {klen}"))
    claims = tuple(tie_claim(tl, rp, tl.sock[row])) + (
        seen(
            f"CPU {slot.cpu} reserved {hexa(addr)} with len {klen} (line {tl.line[slot.row]}) and "
            f"{tl.sock[row]} read it with len {det.length} (line {tl.line[row]})",
            (slot.cpu, tl.cpu[row]),
            (slot.ts, tl.ts[row]),
            (tl.line[slot.row], tl.line[row]),
        ),
    )
    dup = root_duplicate(rp, row, (addr,))
    if dup is not None and dup.addr == addr:
        # In two kernel rings at once, the frame took two packets: the len and the
        # XDP program's metadata may be of different ones, neither side wrong.
        evidence.append(ev(tl, dup.row, f"{hexa(addr)} put into {dup.to} while in {dup.state_before}"))
        verdict, why = (
            APPLICATION,
            (
                f"the application had put {hexa(addr)} into {dup.to} while it was in "
                f"{dup.state_before} (line {tl.line[dup.row]}): two packets shared the frame"
            ),
        )
    elif klen == det.length != det.xdp_length:
        verdict, why = KERNEL, f"the kernel itself wrote len {klen} for a {det.xdp_length}-byte packet"
    elif klen == det.xdp_length != det.length:
        verdict = APPLICATION
        why = f"the kernel wrote len {klen}; the application saw {det.length}: it changed the descriptor"
    else:
        verdict, why = UNDETERMINED, f"the kernel wrote len {klen}, matching neither side"
    return Anomaly(
        "length_mismatch",
        verdict,
        explanation=f"{symptom}; {why}",
        evidence=tuple(evidence),
        reserve_cpu=slot.cpu,
        claims=claims,
        **base,
    )
