"""What a check reports: one anomaly, its verdict and the lines that prove it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from flightrec.model.history import Claim

KERNEL = "kernel"
APPLICATION = "application"
UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class Evidence:
    line: int
    text: str
    why: str = ""
    row: int = -1  # index on the timeline, for the reports' context views


@dataclass(frozen=True)
class Anomaly:
    """One thing that went wrong, and who did it.

    `addr` is the root-cause descriptor (for a descriptor the application put
    into FILL twice, that descriptor even when the symptom was read on another
    address); `read_addr` is what the application read when that differs.
    `claims` say which CPU's history each step of the verdict leans on; an
    undetermined verdict's claims include the ones that do not hold.
    """

    kind: str
    verdict: str
    line: int
    ts: float
    explanation: str
    addr: Optional[int] = None
    expected: Optional[int] = None
    read_addr: Optional[int] = None
    xs: Optional[int] = None
    sock: Optional[str] = None
    queue: Optional[int] = None
    reserve_cpu: Optional[int] = None
    flush_cpu: Optional[int] = None  # the CPU whose xsk_flush (RX) or cq submit (COMPLETION) published the slot
    read_cpu: Optional[int] = None
    evidence: tuple[Evidence, ...] = ()
    missing: tuple[str, ...] = field(default=())
    claims: tuple[Claim, ...] = ()  # the steps of the argument and whose history each leans on
    # the event it was found at: a batched line (docs/markers.md) holds several
    row: Optional[int] = field(default=None, compare=False, repr=False)

    @property
    def cpus(self) -> tuple[int, ...]:
        """The CPUs the story happens on, for the side-by-side view."""
        seen = []
        for c in (self.reserve_cpu, self.flush_cpu, self.read_cpu):
            if c is not None and c not in seen:
                seen.append(c)
        return tuple(seen)
