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
    out = []
    slot, prod, cpu, ts = tl.slot, tl.prod, tl.cpu, tl.ts
    for xs, reserves in rp.reserves.items():
        flushes = rp.flushes.get(xs, [])
        best = -1  # the row of the flush with the furthest producer so far
        i = 0
        for r in reserves:
            while i < len(flushes) and flushes[i] < r:
                f = flushes[i]
                if prod[f] is not None and (best < 0 or _ahead(prod[f], prod[best]) or prod[f] == prod[best]):
                    best = f
                i += 1
            s = slot[r]
            if s is None or best < 0 or cpu[best] == cpu[r] or ts[r] - ts[best] > MAX_DELAY:
                continue
            if not _ahead(prod[best], s):
                continue
            out.append(_race(tl, rp, xs, r, best))
            break
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
