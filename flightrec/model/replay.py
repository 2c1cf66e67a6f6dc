"""One pass over the timeline that replays the rings as the trace tells them.

It keeps, per application socket, the order descriptors went into FILL (the
post's deque) and, per kernel socket (`xs`), the RX slots the kernel reserved
and not yet seen read; per descriptor, the state its last marker left it in.
It records only what is out of the ordinary; the checks judge it.

What the trace proves is decided per CPU and per claim (flightrec.model.history):

- events are facts wherever they are, so kernel reserves and flushes, the
  tie of an application socket to its `xs`, poison reads, detection lines and
  transitions the application itself calls invalid count from the first line;
- a descriptor's state and the FILL-order deque say that no other marker came
  in between, on any CPU: they start where every CPU is recording
  (`History.all_since`), earlier history is unknown, as a window's start is;
  the deque starts over after events were lost on any CPU (a state that
  spans a loss is kept: the checks find its claim broken and say so);
- which RX slot a read came from says no read and no reserve of that socket
  came in between the previous read and this one (`alignment`): where a CPU's
  history does not cover that, the read's slot is unknown, nothing is
  concluded from it and the next read that matches a reserve aligns again.

The trace is a window on a longer run, so every structure starts unknown:
a descriptor read from RX that was put into FILL before the window is fine
until the first in-window FILL entry has come out of RX (from then on the
pre-window prefix of the ring is used up). Slots reserved before a socket's
first aligned read were read before it.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from flightrec.model import replay_native
from flightrec.model.history import KERNEL_HISTORY, MARKERS, Claim, Gap, absent, seen
from flightrec.model.timeline import Timeline
from flightrec.parse.format import FLUSH, MARKER, POISON, RESERVE, STATES, TX, VALID_BEFORE, Detection


class Reserve(NamedTuple):
    """A kernel reserve event: addr taken from FILL into an RX slot of xs (a tuple: one per
    reserve event, made in the replay's hot loop)."""

    row: int
    addr: int
    xs: int
    cpu: int
    ts: float


# An RX ring holds at most its size of reserved, unread slots (AF_XDP ring sizes
# are powers of two; 2**16 is far above any libxdp or flightrec default), so an
# older reserve was read whether the trace shows it or not.
MAX_PENDING = 1 << 16


class _Pending:
    """One xs's reserved slots not yet seen read, oldest first."""

    __slots__ = ("queue", "count", "latest")

    def __init__(self) -> None:
        self.queue: deque[Reserve] = deque()
        self.count: dict[int, int] = defaultdict(int)
        self.latest: dict[int, Reserve] = {}  # addr -> its most recent pending reserve

    def pop(self) -> Reserve:
        r = self.queue.popleft()
        self.count[r.addr] -= 1
        if self.latest.get(r.addr) is r:
            del self.latest[r.addr]
        return r

    def has(self, a: int) -> bool:
        return self.count.get(a, 0) > 0

    def take_first(self, a: int) -> None:
        """Pop up to and including the oldest reserve of `a`."""
        while self.pop().addr != a:
            pass

    def take_latest(self, a: int) -> tuple[Reserve, int]:
        """Pop up to and including the most recent reserve of `a`: (it, how many went before it).

        A descriptor is not reserved again before it was read and given back,
        so the read of `a` is the read of its latest reserve, and every slot
        reserved before that one was read before it (RX is read in order).
        """
        target = self.latest[a]
        skipped = 0
        while True:
            r = self.pop()
            if r is target:
                return r, skipped
            skipped += 1


@dataclass(frozen=True)
class Link:
    """The read before this one on the same socket, and the reserve whose slot it read."""

    read_row: int
    slot: Reserve
    matched: bool  # it read the very address reserved (not a slot told by the order alone)
    reads_between: bool  # reads of the socket came after it with no reserve in the trace to pair with


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
    slot: Optional[Reserve]  # what the kernel reserved for the slot read, when known
    slot_mismatch: bool  # the slot held another address than the kernel reserved
    detection: Optional[Detection]
    remaining: tuple[int, ...]  # the analyzer's own deque after the head (first entries)
    prev: Optional[Link] = None  # the socket's read before, when its slot is known
    skipped: int = 0  # older reserves passed over to pair this read with its address
    alignment: tuple[Claim, ...] = ()  # why `slot` is the slot read (or, failing, why it cannot be told)


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
    ties: dict[str, tuple[int, int]] = field(default_factory=dict)  # sock -> (read row, reserve row) that tied it
    flushes: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # xs -> rows
    reserves: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # xs -> rows, in order
    kernel_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    states_from: float = float("-inf")  # descriptor states and the FILL-order deque count from here
    unordered: frozenset[str] = frozenset()  # sockets whose FILL order was not checked (zero-copy)


def replay(tl: Timeline, unordered: frozenset[str] = frozenset()) -> Replay:
    """Walk the timeline once; see the module doc. `unordered`: the sockets
    whose RX order is not their FILL order (zero-copy: the driver takes FILL
    ahead and recycles the buffers it drops first), for which only a read's
    ownership (its state) is checked, not its place in the deque.

    The walk runs in C (flightrec/_replay.c) when it is built and the
    timeline has the C scanner's columns; `replay_python` is its reference."""
    cols = _native_columns(tl, unordered) if replay_native.available() else None
    if cols is None:
        return replay_python(tl, unordered)
    return _replay_native(tl, unordered, cols)


def _lost(tl: Timeline) -> list[tuple[float, float]]:
    """Where events were lost, (after, before), in order: the FILL-order deque starts over after each."""
    return sorted((g.after, g.before) for g in tl.history.gaps if g.why == "lost")


# Long by nature: one pass over the timeline, a branch per event kind, the rings' state in locals all branches update.
def replay_python(tl: Timeline, unordered: frozenset[str] = frozenset()) -> Replay:
    """`replay`'s walk in Python: the reference the C walk is held equal to."""
    out = Replay(unordered=unordered)
    kind, addr, xs_col, sock_col = tl.kind, tl.addr, tl.xs, tl.sock
    to_col, det_col, frm_col = tl.to, tl.detection, tl.frm
    cpu_col, ts_col = tl.cpu, tl.ts
    # Markers say "nothing else happened to it" only where every CPU is recording.
    states_from = tl.history.all_since
    out.states_from = states_from
    deque_from = states_from
    losses = _lost(tl)
    next_loss = 0
    loss_at = losses[0][0] if losses else float("inf")

    state: dict[int, tuple[str, int]] = {}
    fill: dict[str, deque[tuple[int, int]]] = defaultdict(deque)  # sock -> (addr, row of its FILL entry)
    fill_count: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    fill_started: set[str] = set()
    pending: dict[int, _Pending] = defaultdict(_Pending)
    aligned: set[int] = set()
    xs_sock: dict[int, str] = {}
    last: dict[int, tuple[int, Reserve, bool]] = {}  # xs -> (read row, reserve, matched) of its last paired read
    last_read: dict[str, int] = {}  # sock -> its last FILL -> RX read
    broken: dict[int, tuple[Claim, ...]] = {}  # xs -> the claims that failed to align it, until it aligns again

    states_cut = states_from > float("-inf")
    new_reserve = tuple.__new__
    for i, k in enumerate(kind):
        while ts_col[i] > loss_at:
            # Lost events may have held FILL entries and reads: the deque starts over after them.
            fill.clear()
            fill_count.clear()
            fill_started.clear()
            deque_from = max(deque_from, losses[next_loss][1])
            next_loss += 1
            loss_at = losses[next_loss][0] if next_loss < len(losses) else float("inf")
        if k == MARKER:
            a = addr[i]
            s = sock_col[i]
            to = to_col[i]
            prev = state.get(a)
            if states_cut and prev is not None and ts_col[prev[1]] < states_from:
                prev = None  # a CPU not yet recording may have moved it since
            det = det_col[i]
            if det is not None:
                out.detections.append((i, det))
            if to == "RX":
                # -- FILL order (the post's deque) --
                expected: Optional[int] = None
                expected_row: Optional[int] = None
                mismatch = False
                dq = fill[s]
                if ts_col[i] >= deque_from and s not in unordered:
                    counts = fill_count[s]
                    if dq and dq[0][0] == a:
                        dq.popleft()
                        counts[a] -= 1
                        fill_started.add(s)
                    elif counts.get(a, 0) > 0:
                        (expected, expected_row), mismatch = dq[0], True
                        del dq[next(j for j, e in enumerate(dq) if e[0] == a)]
                        counts[a] -= 1
                        fill_started.add(s)
                    elif s in fill_started:
                        mismatch = True
                        if dq:
                            expected, expected_row = dq[0]
                # -- which kernel socket, and which slot --
                x = out.sock_xs.get(s)
                if x is None:
                    x = _learn_socket(a, s, pending, out.sock_xs, xs_sock)
                    if x is not None:
                        out.ties[s] = (i, pending[x].latest[a].row)
                slot: Optional[Reserve] = None
                slot_mismatch = False
                lp: Optional[tuple[int, Reserve, bool]] = None
                skipped = 0
                alignment: tuple[Claim, ...] = ()
                if x is not None:
                    pend = pending[x]
                    pq = pend.queue
                    lp = last.get(x)
                    if pq and pq[0].addr == a:
                        # pend.pop(), inline: the read of every in-order slot comes here
                        slot = pq.popleft()
                        pend.count[a] -= 1
                        if pend.latest.get(a) is slot:
                            del pend.latest[a]
                        aligned.add(x)
                        if broken:
                            broken.pop(x, None)
                        last[x] = (i, slot, True)
                    elif x in aligned and pq:
                        # The read disagrees with the slot order: if the history shows the
                        # order, the slot read is the next one reserved.
                        alignment = slot_alignment(tl, s, i, pq[0], _link(lp, last_read.get(s)), det)
                        if all(c.holds for c in alignment):
                            slot, slot_mismatch = pq[0], True
                            if pend.has(a):
                                pend.take_first(a)  # read out of reserve order: slots before it were skipped
                            else:
                                pend.pop()
                            last[x] = (i, slot, False)
                        else:
                            # The trace cannot tell which slot this was: align again on an address.
                            aligned.discard(x)
                            broken[x] = alignment
                            if pend.has(a):
                                slot, skipped = pend.take_latest(a)
                                aligned.add(x)
                                last[x] = (i, slot, True)
                    elif pend.has(a):
                        # The first aligned read: older slots were read before it.
                        slot, skipped = pend.take_latest(a)
                        aligned.add(x)
                        last[x] = (i, slot, True)
                    elif x in broken:
                        alignment = broken[x]  # still unaligned since those claims failed
                prev_read = last_read.get(s)
                last_read[s] = i
                bad_state = prev is not None and prev[0] != "FILL"
                if mismatch or slot_mismatch or bad_state or det is not None or a == POISON:
                    link = _link(lp, prev_read)
                    rem = tuple(e[0] for e in list(dq)[:8]) if mismatch else ()
                    out.reads.append(
                        RxRead(
                            i,
                            s,
                            tl.queue[i],
                            a,
                            prev[0] if prev else None,
                            prev[1] if prev else None,
                            expected,
                            expected_row,
                            mismatch,
                            x,
                            slot,
                            slot_mismatch,
                            det,
                            rem,
                            link,
                            skipped,
                            alignment,
                        )
                    )
                if a != POISON:
                    state[a] = ("RX", i)
            else:
                frm = frm_col[i]
                if frm not in VALID_BEFORE[to]:
                    # the application's own word: a fact wherever it stands
                    out.bad.append(BadTransition(i, s, tl.queue[i], a, frm, i, to, det, claimed=True))
                elif prev is not None and prev[0] not in VALID_BEFORE[to]:
                    out.bad.append(BadTransition(i, s, tl.queue[i], a, prev[0], prev[1], to, det))
                if to == "FILL" and ts_col[i] >= deque_from and s not in unordered:
                    fill[s].append((a, i))
                    fill_count[s][a] += 1
                state[a] = (to, i)
        elif k == RESERVE:
            x = xs_col[i]
            pend = pending[x]
            a = addr[i]
            r = new_reserve(Reserve, (i, a, x, cpu_col[i], ts_col[i]))  # Reserve(...) without its Python __new__
            # _Pending.push, inline: one call fewer per reserve event
            pend.queue.append(r)
            pend.count[a] += 1
            pend.latest[a] = r
            if len(pend.queue) > MAX_PENDING:
                pend.pop()
            out.reserves[x].append(i)
            out.kernel_events[k] += 1
        elif k == FLUSH:
            out.flushes[xs_col[i]].append(i)
            out.kernel_events[k] += 1
        elif k == TX:
            out.kernel_events[k] += 1
    return out


def _native_columns(tl: Timeline, unordered: frozenset[str]) -> Optional[replay_native.Columns]:
    """The C walk's columns, from the C scanner's arrays; None where the timeline has
    none (the Python parser's, or rows re-sorted by time) or a marker lacks its
    socket or address (the Python walk handles that)."""
    a = tl.arrays
    if not all(name in a for name in ("kind", "kinds", "sock", "socks", "frm", "to", "addr", "xs", "detail")):
        return None
    kinds = list(a["kinds"])
    if MARKER not in kinds or RESERVE not in kinds:
        return None
    kind = np.ascontiguousarray(a["kind"], dtype=np.int8)
    markers = kind == kinds.index(MARKER)
    reserves = kind == kinds.index(RESERVE)
    (addr, addr_in), (xs, xs_in) = a["addr"], a["xs"]
    sock = np.ascontiguousarray(a["sock"], dtype=np.int32)
    to = np.ascontiguousarray(a["to"], dtype=np.int8)
    if (sock[markers] < 0).any() or (to[markers] < 0).any():
        return None
    if not addr_in[markers | reserves].all() or not xs_in[reserves].all():
        return None
    det = np.zeros(len(kind), dtype=np.uint8)
    detections = tl.detection
    maybe = np.flatnonzero(markers & (a["detail"][2] >= 0)).tolist()
    det[[i for i in maybe if detections[i] is not None]] = 1
    socks = list(a["socks"])
    return replay_native.Columns(
        kind=kind,
        addr=np.ascontiguousarray(addr, dtype=np.uint64),
        xs=np.ascontiguousarray(xs, dtype=np.uint64),
        sock=sock,
        frm=np.ascontiguousarray(a["frm"], dtype=np.int8),
        to=to,
        det=det,
        ts=np.ascontiguousarray(tl.parsed.array("ts"), dtype=np.float64),
        nsocks=len(socks),
        unordered=np.array([s in unordered for s in socks], dtype=np.uint8),
    )


def _native_codes(kinds: list[str]) -> replay_native.Codes:
    # valid[to, 1 + before]: the state `before` may precede `to` (column 0: no state given)
    valid = np.zeros((len(STATES), len(STATES) + 1), dtype=np.uint8)
    for to, before in VALID_BEFORE.items():
        for b in before:
            valid[STATES.index(to), 1 + STATES.index(b)] = 1
    return replay_native.Codes(
        marker=kinds.index(MARKER),
        reserve=kinds.index(RESERVE),
        fill=STATES.index("FILL"),
        rx=STATES.index("RX"),
        valid=valid,
        poison=POISON,
    )


def _replay_native(tl: Timeline, unordered: frozenset[str], cols: replay_native.Columns) -> Replay:
    """`replay` with the walk in C: the same Replay as `replay_python`'s."""
    out = Replay(unordered=unordered)
    out.states_from = tl.history.all_since
    socks = list(tl.arrays["socks"])
    queue = tl.arrays["queue"]
    det_col = tl.detection
    addr, xs, ts = cols.addr, cols.xs, cols.ts
    cpu = tl.parsed.array("cpu")

    def reserve(row: int) -> Reserve:
        return Reserve(row, int(addr[row]), int(xs[row]), int(cpu[row]), float(ts[row]))

    def link(read: int, slot: int, matched: bool, prev_read: int) -> Optional[Link]:
        return None if read < 0 else Link(read, reserve(slot), matched, prev_read != read)

    def q(row: int) -> Optional[int]:
        return int(queue[row]) if queue[row] >= 0 else None

    claims_at: dict[int, tuple[Claim, ...]] = {}  # read row -> the alignment claims asked there

    def align(sock: int, row: int, slot: int, link_read: int, link_slot: int, matched: bool, prev: int) -> bool:
        claims = slot_alignment(
            tl, socks[sock], row, reserve(slot), link(link_read, link_slot, matched, prev), det_col[row]
        )
        claims_at[row] = claims
        return all(c.holds for c in claims)

    kinds = list(tl.arrays["kinds"])
    w = replay_native.walk(cols, _native_codes(kinds), out.states_from, _lost(tl), align)

    for values in w.reads.tolist():
        r = dict(zip(replay_native.READ.names, values))
        row, before, expected = r["row"], r["state_before"], r["has_expected"]
        out.reads.append(
            RxRead(
                row,
                socks[cols.sock[row]],
                q(row),
                int(addr[row]),
                STATES[before] if before >= 0 else None,
                r["state_row"] if before >= 0 else None,
                r["expected"] if expected else None,
                r["expected_row"] if expected else None,
                bool(r["mismatch"]),
                w.xs_values[r["xs"]] if r["xs"] >= 0 else None,
                reserve(r["slot_row"]) if r["slot_row"] >= 0 else None,
                bool(r["slot_mismatch"]),
                det_col[row],
                tuple(r["rem"][: r["nrem"]]),
                link(r["link_read"], r["link_slot"], bool(r["matched_link"]), r["prev_read"]),
                r["skipped"],
                claims_at[r["alignment_row"]] if r["alignment_row"] >= 0 else (),
            )
        )
    for row, state_row, before, claimed in w.bad.tolist():
        out.bad.append(
            BadTransition(
                row,
                socks[cols.sock[row]],
                q(row),
                int(addr[row]),
                STATES[before] if before >= 0 else None,  # type: ignore[arg-type]  # a claimed FROM may be absent
                state_row,
                STATES[cols.to[row]],
                det_col[row],
                claimed=bool(claimed),
            )
        )
    out.detections.extend((i, det_col[i]) for i in np.flatnonzero(cols.det).tolist())
    for s in sorted(np.flatnonzero(w.tie_read[: cols.nsocks] >= 0).tolist(), key=lambda s: w.tie_read[s]):
        out.sock_xs[socks[s]] = w.xs_values[w.sock_xs[s]]
        out.ties[socks[s]] = (int(w.tie_read[s]), int(w.tie_reserve[s]))
    firsts = []
    for name, rows_of in ((RESERVE, out.reserves), (FLUSH, out.flushes), (TX, None)):
        if name not in kinds:
            continue
        rows = np.flatnonzero(cols.kind == kinds.index(name))
        if len(rows):
            firsts.append((int(rows[0]), name, len(rows)))
        if rows_of is not None and len(rows):
            _group_rows(rows, xs[rows], rows_of)
    for _, name, count in sorted(firsts):
        out.kernel_events[name] = count
    return out


def _group_rows(rows: np.ndarray, keys: np.ndarray, into: dict[int, list[int]]) -> None:
    """into[key] = its rows in order, keys in order of first appearance."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    by_key = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))
    starts = np.concatenate(([0], bounds[:-1]))
    for u in np.argsort(first, kind="stable").tolist():
        into[int(uniq[u])] = rows[by_key[starts[u] : bounds[u]]].tolist()


def _link(lp: Optional[tuple[int, Reserve, bool]], last_read: Optional[int]) -> Optional[Link]:
    """The socket's previous paired read as a Link (made only where a claim needs it)."""
    return None if lp is None else Link(lp[0], lp[1], lp[2], last_read != lp[0])


def slot_alignment(
    tl: Timeline,
    sock: str,
    row: int,
    slot: Reserve,
    link: Optional[Link],
    det: Optional[Detection],
    fill_order: bool = True,
) -> tuple[Claim, ...]:
    """Why the read at `row` came from the RX slot reserved at `slot`, as claims.

    The application reads RX slots in order and the kernel reserves them in
    order, so the slot after the previous read's is the next one reserved
    after the previous read's reserve, provided no read of the socket and no
    reserve of its xs is missing in between. For a poisoned slot the reserves
    in between may also be vouched for by the FILL order (`fill_order`): the
    kernel takes FILL in order, one entry per reserve, and the application's
    detection line names the entry right after the one it read last. Only
    for the poison: an entry the application put into FILL without a marker
    would also explain a stale address read there (its own fault, which the
    kernel's reserves alone can rule out), while a slot read back unwritten
    is the kernel's fault whichever entry it was reserved for.
    """
    h = tl.history
    ts, cpu, line = tl.ts, tl.cpu, tl.line
    xs = slot.xs
    if link is None:
        # No read of this socket was paired before: only a history with no gap
        # at all before this read vouches for the order.
        start = tl.window.start
        return (
            absent(h, f"{sock} read RX in the trace from its start on", start, ts[row], MARKERS),
            absent(
                h,
                f"the kernel's reserves of xs {xs:#x} are in the trace from its start on",
                start,
                slot.ts,
                KERNEL_HISTORY,
            ),
        )
    prev, before = link.read_row, link.slot
    claims = [
        seen(
            f"{sock} read {tl.addr[prev]:#x} (line {line[prev]}) from the slot CPU {before.cpu} "
            f"reserved for {before.addr:#x} (line {line[before.row]})",
            (cpu[prev], before.cpu),
            (ts[prev], before.ts),
            (line[before.row], line[prev]),
        )
    ]
    reads = absent(
        h,
        f"{sock} read nothing else from RX between line {line[prev]} and line {line[row]}",
        ts[prev],
        ts[row],
        MARKERS,
    )
    if link.reads_between and reads.holds:
        # reads came in between whose reserves are not in the trace at all
        reads = Claim(
            reads.text,
            reads.cpus,
            reads.start,
            reads.end,
            absence=True,
            every_cpu=True,
            events=MARKERS,
            gaps=(_unpaired_gap(tl, sock, prev, row),),
        )
    claims.append(reads)
    reserves = absent(
        h,
        f"the kernel reserved no other RX slot of xs {xs:#x} between line {line[before.row]} and line {line[slot.row]}",
        before.ts,
        slot.ts,
        KERNEL_HISTORY,
    )
    if not reserves.holds and fill_order and _fill_adjacent(tl, row, link, det, slot):
        reserves = seen(
            f"{slot.addr:#x} comes right after {before.addr:#x} in {sock}'s FILL order (the "
            f"application read {before.addr:#x} at line {line[prev]} as its deque's head, then "
            f"expected {slot.addr:#x} at line {line[row]}); the kernel takes FILL in order, one "
            f"entry per reserve, so no slot came between",
            (cpu[prev], cpu[row]),
            (ts[prev], ts[row]),
            (line[prev], line[row]),
        )
    claims.append(reserves)
    return tuple(claims)


def _fill_adjacent(tl: Timeline, row: int, link: Link, det: Optional[Detection], slot: Reserve) -> bool:
    """The poison read at `row`, and the application's own deque puts `slot.addr` right after
    the previous read's address."""
    prev = link.read_row
    return (
        link.matched
        and not link.reads_between
        and tl.detection[prev] is None
        and tl.addr[prev] == link.slot.addr
        and det is not None
        and det.kind == "fill_order"
        and det.expected == slot.addr
        and tl.addr[row] == POISON
    )


def _unpaired_gap(tl: Timeline, sock: str, prev: int, row: int) -> Gap:
    return Gap(None, tl.ts[prev], tl.ts[row], "unpaired", events=MARKERS, line=tl.line[prev])


def _learn_socket(
    a: int, s: str, pending: dict[int, _Pending], sock_xs: dict[str, int], xs_sock: dict[int, str]
) -> Optional[int]:
    """Tie an application socket to the kernel's xs by the first address both saw.

    Of the xs tied to no other socket with `a` reserved and not yet read, the
    one that reserved it last qualifies: one match is enough, as sockets live
    for the whole run. Both events are facts on their own CPUs: what other
    CPUs lost before their buffers began does not undo them.
    """
    best: Optional[Reserve] = None
    for x, pend in pending.items():
        if x in xs_sock:
            continue
        r = pend.latest.get(a)
        if r is not None and (best is None or r.row > best.row):
            best = r
    if best is None:
        return None
    sock_xs[s] = best.xs
    xs_sock[best.xs] = s
    return best.xs
