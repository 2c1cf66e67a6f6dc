"""One pass over the timeline that replays the rings as the trace tells them.

It keeps, per application socket, the order descriptors went into FILL (the
post's deque) and, per kernel socket (`xs`), the RX slots the kernel reserved
and not yet seen read; per descriptor, the state its last marker left it in.
It records only what is out of the ordinary; the checks judge it.

The trace is a window on a longer run, so every structure starts unknown:
a descriptor read from RX that was put into FILL before the window is fine
until the first in-window FILL entry has come out of RX (from then on the
pre-window prefix of the ring is used up). Slots reserved before the window
are handled the same way.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Optional

from flightrec.model import kinds
from flightrec.model.timeline import Timeline
from flightrec.parse.fields import Detection, parse_detection

POISON = 0xDEADBEEFDEADBEEF

KERNEL_OWNED = ("FILL", "TX")
# state a descriptor must be in (by its history) before entering each state
VALID_BEFORE = {
    "FILL": ("FREE", "RX", "COMP"),
    "TX": ("FREE", "RX", "COMP"),
    "RX": ("FILL",),
    "COMP": ("TX",),
    "FREE": ("FREE", "RX", "COMP"),
}


@dataclass(frozen=True)
class Reserve:
    """A kernel reserve event: addr taken from FILL into an RX slot of xs."""

    row: int
    addr: int
    xs: int
    cpu: int
    ts: float


@dataclass(frozen=True)
class RxRead:
    """An application read from RX that something is wrong with."""

    row: int
    sock: str
    queue: Optional[int]
    addr: int
    state_before: Optional[str]
    state_row: Optional[int]  # the marker that left it in state_before
    fill_expected: Optional[int]  # head of the FILL-order deque, when it disagrees
    expected_row: Optional[int]  # the marker that put fill_expected into FILL
    fill_mismatch: bool
    xs: Optional[int]
    slot: Optional[Reserve]  # what the kernel reserved for the slot read, when aligned
    slot_mismatch: bool  # the slot held another address than the kernel reserved
    detection: Optional[Detection]
    remaining: tuple[int, ...]  # the analyzer's own deque after the head (first entries)


@dataclass(frozen=True)
class BadTransition:
    """A marker transition the descriptor's history does not allow."""

    row: int
    sock: str
    queue: Optional[int]
    addr: int
    state_before: str
    state_row: int
    to: str
    detection: Optional[Detection]
    claimed: bool = False  # the marker's own FROM -> TO is invalid: the application said so itself


@dataclass
class Replay:
    reads: list[RxRead] = field(default_factory=list)
    bad: list[BadTransition] = field(default_factory=list)
    detections: list[tuple[int, Detection]] = field(default_factory=list)
    sock_xs: dict[str, int] = field(default_factory=dict)
    flushes: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # xs -> rows
    reserves: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # xs -> rows, in order
    kernel_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_row: int = 0


def replay(tl: Timeline) -> Replay:
    """Walk the complete window of the timeline once; see the module doc."""
    out = Replay()
    kind, addr, xs_col, sock_col = tl.kind, tl.addr, tl.xs, tl.sock
    to_col, detail_col, queue_col, frm_col = tl.to, tl.detail, tl.queue, tl.frm
    cpu_col, ts_col = tl.cpu, tl.ts

    state: dict[int, tuple[str, int]] = {}
    fill: dict[str, deque[int]] = defaultdict(deque)
    fill_count: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    fill_started: set[str] = set()
    fill_row: dict[str, dict[int, int]] = defaultdict(dict)  # sock -> addr -> row of its last FILL entry
    pending: dict[int, deque[Reserve]] = defaultdict(deque)
    pending_count: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    aligned: set[int] = set()
    xs_sock: dict[int, str] = {}

    first = tl.row_at_or_after(tl.window.complete_from)
    out.first_row = first
    for i in range(first, len(kind)):
        k = kind[i]
        if k == kinds.MARKER:
            a = addr[i]
            s = sock_col[i]
            to = to_col[i]
            prev = state.get(a)
            det = parse_detection(detail_col[i]) if detail_col[i] is not None else None
            if det is not None:
                out.detections.append((i, det))
            if to == "RX":
                # -- FILL order (the post's deque) --
                dq = fill[s]
                counts = fill_count[s]
                expected: Optional[int] = None
                mismatch = False
                if dq and dq[0] == a:
                    dq.popleft()
                    counts[a] -= 1
                    fill_started.add(s)
                elif counts.get(a, 0) > 0:
                    expected, mismatch = dq[0], True
                    dq.remove(a)
                    counts[a] -= 1
                    fill_started.add(s)
                elif s in fill_started:
                    expected, mismatch = (dq[0] if dq else None), True
                # -- which kernel socket, and which slot --
                x = out.sock_xs.get(s)
                if x is None:
                    x = _learn_socket(a, s, pending, pending_count, out.sock_xs, xs_sock)
                slot: Optional[Reserve] = None
                slot_mismatch = False
                if x is not None:
                    pq = pending[x]
                    pc = pending_count[x]
                    if pq and pq[0].addr == a:
                        slot = pq.popleft()
                        pc[a] -= 1
                        aligned.add(x)
                    elif pc.get(a, 0) > 0:
                        # Read out of reserve order: slots before it were skipped.
                        slot, slot_mismatch = pq[0], x in aligned
                        while pq and pq[0].addr != a:
                            pc[pq.popleft().addr] -= 1
                        pq.popleft()
                        pc[a] -= 1
                        aligned.add(x)
                    elif x in aligned and pq:
                        slot, slot_mismatch = pq.popleft(), True
                        pc[slot.addr] -= 1
                bad_state = prev is not None and prev[0] != "FILL"
                if mismatch or slot_mismatch or bad_state or det is not None or a == POISON:
                    rem = tuple(list(dq)[:8]) if mismatch else ()
                    out.reads.append(
                        RxRead(
                            i, s, queue_col[i], a,
                            prev[0] if prev else None, prev[1] if prev else None,
                            expected, fill_row[s].get(expected) if expected is not None else None,
                            mismatch, x, slot, slot_mismatch, det, rem,
                        )
                    )
                if a != POISON:
                    state[a] = ("RX", i)
            else:
                frm = frm_col[i]
                if frm not in VALID_BEFORE[to]:
                    out.bad.append(BadTransition(i, s, queue_col[i], a, frm, i, to, det, claimed=True))
                elif prev is not None and prev[0] not in VALID_BEFORE[to]:
                    out.bad.append(BadTransition(i, s, queue_col[i], a, prev[0], prev[1], to, det))
                if to == "FILL":
                    fill[s].append(a)
                    fill_count[s][a] += 1
                    fill_row[s][a] = i
                state[a] = (to, i)
        elif k == kinds.RESERVE:
            x = xs_col[i]
            r = Reserve(i, addr[i], x, cpu_col[i], ts_col[i])
            pending[x].append(r)
            pending_count[x][r.addr] += 1
            out.reserves[x].append(i)
            out.kernel_events[k] += 1
        elif k == kinds.FLUSH:
            out.flushes[xs_col[i]].append(i)
            out.kernel_events[k] += 1
        elif k == kinds.TX:
            out.kernel_events[k] += 1
    return out


def _learn_socket(
    a: int,
    s: str,
    pending: dict[int, deque[Reserve]],
    pending_count: dict[int, dict[int, int]],
    sock_xs: dict[str, int],
    xs_sock: dict[int, str],
) -> Optional[int]:
    """Tie an application socket to the kernel's xs by the first address both saw.

    Only an xs whose oldest pending reserve is that address, and that is tied
    to no other socket, qualifies: one match is enough, as sockets live for
    the whole run.
    """
    for x, pq in pending.items():
        if x in xs_sock or not pq:
            continue
        if pending_count[x].get(a, 0) > 0 and any(r.addr == a for r in list(pq)[:64]):
            sock_xs[s] = x
            xs_sock[x] = s
            return x
    return None
