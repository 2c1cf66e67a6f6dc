"""Duplicate insertion: one descriptor in two kernel rings (or twice in one) at once."""

from __future__ import annotations

from flightrec.checks.anomaly import Anomaly
from flightrec.checks.attribution import dup_anomaly
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse.format import KERNEL_OWNED


def check_duplicate_insertion(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """A marker putting a descriptor into FILL or TX while its history says it
    is still in FILL or TX (FILL→FILL, FILL→TX, TX→FILL, TX→TX) is the
    application giving one buffer to the kernel twice: the application's own
    lines prove it, whatever the kernel did afterwards.
    """
    return [
        dup_anomaly(tl, b, "duplicate_insertion", rp)
        for b in rp.bad
        if b.to in KERNEL_OWNED and b.state_before in KERNEL_OWNED
    ]
