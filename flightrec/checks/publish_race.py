"""Cross-CPU publish race: a flush on one CPU publishes a slot another CPU is still writing."""

from __future__ import annotations

from flightrec.checks.anomaly import Anomaly
from flightrec.checks.attribution import attribute_read, find_race
from flightrec.hexaddr import hexa
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline


def check_publish_race(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """A reserve on CPU a for xs, then an xsk_flush of the same xs on CPU b ≠ a
    before CPU a's own flush, then the application reading from that slot an
    address other than the one reserved (the poison or a stale one): the
    kernel exposed the slot between `cached_prod++` and the descriptor write
    (the veth race of the post, fixed upstream by fa349e396e48).
    """
    out = []
    for r in rp.reads:
        if not (r.slot_mismatch and r.slot is not None):
            continue
        other, _ = find_race(tl, rp, r.slot.xs, r.slot.row, r.row)
        if other is None:
            continue
        symptom = f"{r.sock} read {hexa(r.addr)} from the RX slot CPU {r.slot.cpu} reserved for {hexa(r.slot.addr)}"
        out.append(attribute_read(tl, rp, r, "publish_race", symptom))
    return out
