"""Poison: the application read back 0xdeadbeefdeadbeef, its mark of a consumed RX slot."""

from __future__ import annotations

from flightrec.checks.anomaly import Anomaly
from flightrec.checks.attribution import attribute_read
from flightrec.hexaddr import hexa
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse.format import POISON


def check_poison(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """The application writes the poison into every RX slot it has consumed;
    reading it back proves the slot was published before anything was written
    into it since. Who published it is the attribution's question.
    """
    out = []
    for r in rp.reads:
        if r.addr != POISON:
            continue
        exp = r.detection.expected if r.detection is not None and r.detection.expected is not None else r.fill_expected
        due = hexa(exp) if exp is not None else "a descriptor the kernel wrote"
        symptom = f"{r.sock} read the poison {hexa(POISON)} from RX where {due} was due"
        out.append(attribute_read(tl, rp, r, "poison_read", symptom))
    return out
