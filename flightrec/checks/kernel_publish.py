"""The publish race from kernel events alone: no application marker needed.

Where a reserve event comes after the kernel wrote the RX descriptor and
carries its slot, and a flush event carries the producer it published (the
BPF backend: raw_tp/xdp_redirect reads the descriptor at cached_prod - 1,
tp_btf/napi_poll the producer after xdp_do_flush), the kernel's own order
says when it published a slot before writing it:

    CPU b   flush of xs, producer P            (P > S: slot S is visible)
    CPU a   reserve of xs, slot S, written      (later)

On a sound kernel this order cannot happen: the CPU that writes slot S
prints its reserve line before its own flush publishes S, and any producer
past S is read after that publication. So a reserve line whose slot an
earlier flush on another CPU had already published is the veth race of the
post (the flush of one CPU exposing a slot another had reserved and not yet
reported written; under a preempted vCPU the write itself may have landed
just before the report, but the publish from the wrong CPU is the bug either
way), caught even in a program that writes no markers. Both facts are events
in the trace; the verdict leans on no absence. Kprobe reserve events (at the
call, before the write, no slot) do not feed this check.

Measured on the VM kernels (vm record --widen --kernel-events bpf, 60 s):
veth-race gave kernel_publish_race with the forwarder catching nothing
itself; veth-fixed ran clean under the same settings.
"""

from __future__ import annotations

import numpy as np

from flightrec.checks.anomaly import KERNEL, Anomaly
from flightrec.checks.attribution import ev
from flightrec.hexaddr import hexa
from flightrec.model.history import seen
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline

# How far a producer can run ahead of a slot still being written: at most a
# ring's entries, and a flush that far back belongs to the same socket's life
# (a socket freed and another allocated at the same address starts again at 0).
MAX_AHEAD = 1 << 16
MAX_DELAY = 1.0  # seconds between the early flush and the late write


def _ahead(prod: int, slot: int) -> bool:
    """The producer ``prod`` has published ``slot`` (32-bit ring indexes)."""
    return 0 <= (prod - slot - 1) & 0xFFFFFFFF < MAX_AHEAD


def check_kernel_publish(tl: Timeline, rp: Replay) -> list[Anomaly]:
    """One anomaly per socket: its first slot written after another CPU's flush published it."""
    # Whole columns at once: a recording holds a reserve and a flush per packet,
    # thousands of sockets, and a Python step per event cost more than the parse.
    slot, has_slot = tl.field_array("slot")
    prod, has_prod = tl.field_array("prod")
    cpu, ts = tl.parsed.array("cpu"), tl.parsed.array("ts")
    xss = list(rp.reserves)
    flushes, f_group = _grouped([rp.flushes.get(x, []) for x in xss], has_prod)
    reserves, r_group = _grouped([rp.reserves[x] for x in xss], has_slot)
    if not len(flushes) or not len(reserves):
        return []
    best = np.array(_furthest(prod[flushes].tolist(), f_group.tolist(), flushes.tolist()), dtype=np.int64)
    # the last flush of the same xs before each reserve (rows are unique: one key orders both)
    n = len(tl) + 1
    at = np.searchsorted(f_group * n + flushes, r_group * n + reserves) - 1
    same = at >= 0
    same[same] = f_group[at[same]] == r_group[same]
    b = np.where(same, best[at], -1)
    race = b >= 0
    b = np.maximum(b, 0)
    race &= cpu[b] != cpu[reserves]
    race &= ts[reserves] - ts[b] <= MAX_DELAY
    race &= (prod[b] - slot[reserves] - np.uint64(1)) & np.uint64(0xFFFFFFFF) < MAX_AHEAD
    hits = np.flatnonzero(race)
    groups, first = np.unique(r_group[hits], return_index=True)
    return [_race(tl, rp, xss[g], int(reserves[h]), int(b[h])) for g, h in zip(groups.tolist(), hits[first].tolist())]


def _grouped(rows: list[list[int]], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of every group, in order, where `keep`, and each one's group."""
    flat = np.fromiter((r for g in rows for r in g), np.int64)
    group = np.repeat(np.arange(len(rows), dtype=np.int64), [len(g) for g in rows])
    kept = keep[flat]
    return flat[kept], group[kept]


def _furthest(prods: list[int], groups: list[int], rows: list[int]) -> list[int]:
    """Per flush, the row of its group's flush with the furthest producer so far (itself included)."""
    out = []
    best, best_prod, group = -1, 0, -1
    for p, g, f in zip(prods, groups, rows):
        if g != group:
            best, group = -1, g
        if best < 0 or _ahead(p, best_prod) or p == best_prod:
            best, best_prod = f, p
        out.append(best)
    return out


def _race(tl: Timeline, rp: Replay, xs: int, r: int, f: int) -> Anomaly:
    a, b = tl.cpu[r], tl.cpu[f]
    s, p = tl.slot[r], tl.prod[f]
    sock = next((name for name, x in rp.sock_xs.items() if x == xs), None)
    delay = (tl.ts[r] - tl.ts[f]) * 1e6
    claim = seen(
        f"CPU {b}'s flush of xs {xs:#x} (line {tl.line[f]}) had published the RX producer to {p}, past "
        f"slot {s}, {delay:.0f} us before CPU {a}, which had reserved it, reported writing it "
        f"(line {tl.line[r]})",
        (b, a),
        (tl.ts[f], tl.ts[r]),
        (tl.line[f], tl.line[r]),
    )
    explanation = (
        f"the kernel published RX slot {s} of xs {xs:#x}{f' ({sock})' if sock else ''} from the wrong "
        f"CPU: CPU {b}'s flush moved the producer to {p}, and CPU {a}, which had reserved the slot, "
        f"reported writing {hexa(tl.addr[r])} into it {delay:.0f} us later, before its own flush. A "
        f"producer may publish only the slots it has written: an application reading the ring in "
        f"between reads a stale descriptor (the veth race of the post, fixed upstream by "
        f"fa349e396e48); seen from the kernel's events alone"
    )
    return Anomaly(
        kind="kernel_publish_race",
        verdict=KERNEL,
        line=tl.line[r],
        ts=tl.ts[r],
        explanation=explanation,
        row=r,
        addr=tl.addr[r],
        xs=xs,
        sock=sock,
        reserve_cpu=a,
        flush_cpu=b,
        evidence=(
            ev(tl, f, f"CPU {b} publishes the producer {p}: slot {s} is visible to the application"),
            ev(tl, r, f"CPU {a} reports writing slot {s} only now"),
        ),
        claims=(claim,),
    )
