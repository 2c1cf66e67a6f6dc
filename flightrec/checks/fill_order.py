"""FILL order: per socket, descriptors come out of RX in the order they went into FILL."""

from __future__ import annotations

from flightrec.checks.anomaly import Anomaly
from flightrec.checks.attribution import attribute_read
from flightrec.hexaddr import hexa
from flightrec.model.replay import Replay, RxRead
from flightrec.model.timeline import Timeline
from flightrec.parse.format import POISON


def check_fill_order(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """The kernel consumes FILL in order and produces RX in that order, so for
    one socket the RX reads must match the FILL entries one to one (the post's
    deque). A read that does not proves a descriptor was duplicated or a slot
    published with the wrong content; the attribution says which. The
    application's own detection line counts as evidence even where the trace
    starts too late for the analyzer's deque to know.
    """
    out = []
    for r in rp.reads:
        if not reports(r):
            continue
        app = r.detection is not None and r.detection.kind == "fill_order"
        exp = r.detection.expected if app else r.fill_expected
        symptom = f"{r.sock} read {hexa(r.addr)} from RX where the FILL order predicted {hexa(exp)}"
        out.append(attribute_read(tl, rp, r, "fill_order", symptom))
    return out


def reports(r: RxRead) -> bool:
    """Whether check_fill_order reports the read `r` (check_transitions leaves it to this check)."""
    app = r.detection is not None and r.detection.kind == "fill_order"
    return r.addr != POISON and (r.fill_mismatch or app)
