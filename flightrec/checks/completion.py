"""A COMPLETION entry for a frame the kernel had not sent yet (immature completion)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from flightrec.checks.anomaly import KERNEL, UNDETERMINED, Anomaly
from flightrec.checks.attribution import ev
from flightrec.hexaddr import hexa
from flightrec.model.history import KERNEL_HISTORY, MARKERS, absent, seen
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds

KIND = "completion_in_flight"
# the kernel's own account of sending a frame: its read of the frame (copy mode),
# the skb handed to the driver
SENT = (kinds.TX, kinds.XMIT)


def check_completion_in_flight(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """The application read ADDR from COMPLETION (`TX -> COMP`), and the kernel
    transmitted ADDR only afterwards, with no transmission of it between the
    application's `-> TX` and that read and no new `-> TX` of it before the
    late one: the COMPLETION entry was published while the kernel still had
    the frame to send (30f241fcf52a: in copy mode, another socket's skb
    destructor publishing a slot this socket had only reserved). The
    application, trusting it, reuses a frame in flight and its data goes out
    corrupt. Needs the kernel's TX events (`tx_get_data`, `tx_xmit`): without
    them nothing is claimed.
    """
    sent = tl.rows_of(*SENT)
    if not sent:
        return []  # no TX events: nothing is claimed (zero-copy, markers only)
    to_tx, read = _tx_markers(tl)
    addr, present = tl.field_array("addr")
    sent_rows = np.asarray(sent, dtype=np.int64)
    sent_rows = sent_rows[present[sent_rows]]  # a TX event without its address says nothing
    return [in_flight_anomaly(tl, tx, comp, late) for tx, comp, late in early_reads(to_tx, read, sent_rows, addr)]


def early_reads(
    to_tx: Sequence[int], read: Sequence[int], sent: Sequence[int], addr: np.ndarray
) -> list[tuple[int, int, int]]:
    """(T, C, S) rows, by S: per frame (`addr[row]`), in row order, T puts it into TX,
    C reads it from COMPLETION, S is the kernel sending it. The first C after a T is
    early unless an S came between; an S whose last event other than a C is a T, with
    a C after that T, proves it."""
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in (to_tx, read, sent)])
    what = np.repeat(np.array([0, 1, 2], dtype=np.int8), [len(to_tx), len(read), len(sent)])
    order = np.lexsort((rows, addr[rows]))
    rows, what, frame = rows[order], what[order], addr[rows[order]]
    # the position of the last T or S at or before each position (-1: none)
    last_t_or_s = np.maximum.accumulate(np.where(what != 1, np.arange(len(what)), -1))
    s = np.flatnonzero(what[1:] == 2) + 1
    t = last_t_or_s[s - 1]
    keep = (t >= 0) & (t < s - 1)  # a T or S before, and a C between it and this S
    s, t = s[keep], t[keep]
    keep = (what[t] == 0) & (frame[t] == frame[s])  # ... and it is a T of the same frame
    s, t = s[keep], t[keep]
    return sorted(zip(rows[t].tolist(), rows[t + 1].tolist(), rows[s].tolist()), key=lambda e: e[2])


def _tx_markers(tl: Timeline) -> tuple[list[int], list[int]]:
    """The markers that put a frame into TX, and those that read it from COMPLETION
    (on the scanner's codes where there)."""
    codes, to_codes, frm_codes = tl.arrays.get("kind"), tl.arrays.get("to"), tl.arrays.get("frm")
    if codes is None or to_codes is None or frm_codes is None:
        markers = tl.rows_of(kinds.MARKER)
        return (
            [r for r in markers if tl.to[r] == "TX"],
            [r for r in markers if tl.frm[r] == "TX" and tl.to[r] == "COMP"],
        )
    tx, comp = kinds.STATES.index("TX"), kinds.STATES.index("COMP")
    marker = codes == tl.arrays["kinds"].index(kinds.MARKER)
    return (
        np.flatnonzero(marker & (to_codes == tx)).tolist(),
        np.flatnonzero(marker & (frm_codes == tx) & (to_codes == comp)).tolist(),
    )


def in_flight_anomaly(tl: Timeline, tx: int, read: int, late: int) -> Anomaly:
    """The frame put into TX at row `tx`, read from COMPLETION at `read`, sent by the kernel at `late`."""
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    a = tl.addr[read]
    claims = [
        seen(
            f"{tl.sock[tx]} put {hexa(a)} into TX (line {line[tx]}) and read it from COMPLETION (line {line[read]}); "
            f"the kernel sent it at line {line[late]}",
            (cpu[tx], cpu[read], cpu[late]),
            (ts[tx], ts[read], ts[late]),
            (line[tx], line[read], line[late]),
        ),
        # every transmission of the frame before the read would be in the trace
        absent(
            tl.history,
            f"the kernel did not send {hexa(a)} between line {line[tx]} and line {line[read]}",
            ts[tx],
            ts[read],
            KERNEL_HISTORY,
        ),
        absent(
            tl.history,
            f"no marker put {hexa(a)} into TX again between line {line[read]} and line {line[late]}",
            ts[read],
            ts[late],
            MARKERS,
        ),
    ]
    evidence = (
        ev(tl, tx, f"{tl.sock[tx]} put {hexa(a)} into its TX ring"),
        ev(tl, read, f"the application read {hexa(a)} from COMPLETION, before the kernel had sent it"),
        ev(tl, late, f"the kernel sent {hexa(a)} only now, after its COMPLETION entry was read"),
    )
    base = dict(
        kind=KIND,
        line=tl.line[late],
        ts=tl.ts[late],
        addr=a,
        sock=tl.sock[read],
        queue=tl.queue[read],
        read_cpu=cpu[read],
        evidence=evidence,
        claims=tuple(claims),
        row=late,
    )
    gaps = [g for c in claims for g in c.gaps]
    symptom = (
        f"{tl.sock[read]} read {hexa(a)} from COMPLETION (line {line[read]}) before the kernel sent it "
        f"(line {line[late]})"
    )
    if gaps:
        missing: tuple[str, ...] = tuple(dict.fromkeys(g.describe() for g in gaps))
        return Anomaly(
            verdict=UNDETERMINED,
            explanation=f"{symptom}; the trace lacks what the verdict needs: " + "; ".join(missing),
            missing=missing,
            **base,
        )
    xs: Optional[int] = tl.xs[late]
    who = f" (xs {hexa(xs)})" if xs is not None else ""
    return Anomaly(
        verdict=KERNEL,
        xs=xs,
        explanation=(
            f"{symptom}: the kernel published the COMPLETION entry of a frame it still had to send{who}, so the "
            "application may reuse it in flight (as the copy-mode cross-socket completion fixed by 30f241fcf52a)"
        ),
        **base,
    )
