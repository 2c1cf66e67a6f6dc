"""Which checks a trace lets run: the application's markers feed most of them.

A program recorded with ``record --app`` that writes no markers leaves only
the kernel's events and the stamp receiver's detection lines; the checks that
follow descriptors through the application's rings then have nothing to read,
and a clean verdict says less. Said once, by name, with the reason. So is a
kernel-event check whose events lack the fields it needs (the COMPLETION
cross-publish on a kernel that reserves by count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from flightrec.checks import cq_publish
from flightrec.model.timeline import Timeline


@dataclass(frozen=True)
class NotRun:
    """A check the trace could not feed, and why."""

    check: str
    why: str
    needs: str = "markers"  # what the trace lacks: "markers", or "fields" of its kernel events


NO_MARKERS = "the application wrote no markers"
# The checks that read the application's descriptor transitions (checks/*.py).
NEED_MARKERS = (
    ("publish_race", "it ties a kernel publish to the application's read of the slot"),
    ("duplicate_insertion", "it follows each descriptor through FILL and TX"),
    ("poison", "the poison is read back by the application"),
    ("fill_order", "it compares RX to the application's FILL order"),
    ("transitions", "it follows each descriptor's ownership"),
    ("payload (tied to a frame)", "the receiver's detection still counts, but not which frame carried it"),
)


def not_run(markers: int, tl: Optional[Timeline] = None) -> list[NotRun]:
    """The checks this trace's markers (their count) leave without input; with its
    timeline, also the kernel-event checks whose events lack what they need."""
    out = [] if markers else [NotRun(name, f"{NO_MARKERS}; {why}") for name, why in NEED_MARKERS]
    why = cq_publish.cannot_run(tl) if tl is not None else None
    if why:
        out.append(NotRun(cq_publish.KIND, why, "fields"))
    return out
