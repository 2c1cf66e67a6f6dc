"""The checks: each `check_x(timeline, replay) -> list[Anomaly]`, one module each.

Several checks may see the same moment (a poisoned read that is also a FILL
order break and a publish race); `run_checks` keeps one anomaly per event, the
most specific: per line, and on a batched line (docs/markers.md), which holds
several events, per event of it.
"""

from __future__ import annotations

from typing import Callable

from flightrec.checks.anomaly import Anomaly
from flightrec.checks.completion import check_completion_in_flight
from flightrec.checks.cq_publish import check_cq_cross_publish
from flightrec.checks.duplicates import check_duplicate_insertion
from flightrec.checks.fill_order import check_fill_order
from flightrec.checks.kernel_publish import check_kernel_publish
from flightrec.checks.payload import check_payload
from flightrec.checks.poison import check_poison
from flightrec.checks.publish_race import check_publish_race
from flightrec.checks.reported import check_reported
from flightrec.checks.reuse import check_reuse_before_completion
from flightrec.checks.transitions import check_transitions
from flightrec.checks.unexpected_completion import check_unexpected_completion
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline

Check = Callable[[Timeline, Replay], list[Anomaly]]

# Most specific first: on one line the first check's anomaly is kept.
CHECKS: tuple[Check, ...] = (
    check_publish_race,
    check_kernel_publish,
    check_completion_in_flight,
    check_cq_cross_publish,
    check_reuse_before_completion,
    check_duplicate_insertion,
    check_poison,
    check_fill_order,
    check_payload,
    check_unexpected_completion,
    check_transitions,
    check_reported,
)


def run_checks(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """All anomalies, one per event, in trace order."""
    lines = tl.parsed.array("line")
    shared = set(lines[1:][lines[1:] == lines[:-1]].tolist())  # lines holding several events (batched)
    kept: dict[tuple[int, int], Anomaly] = {}
    for check in CHECKS:
        for a in check(tl, rp):
            kept.setdefault((a.line, a.row if a.line in shared and a.row is not None else -1), a)
    return [kept[key] for key in sorted(kept)]
