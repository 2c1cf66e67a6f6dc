"""The race-window widener: where to busy-wait (from DWARF), and running c/widen.

The veth/AF_XDP race (docs/veth-race.md) is two store instructions wide: a
recording at full speed never hits it. The widener is a fault amplifier:
two kprobe BPF programs (c/widen/widen.bpf.c) that busy-wait

- ``flush``: at the entry of ``xsk_flush()`` (inlined into ``__xsk_map_flush``),
  about to read ``xs->rx->cached_prod`` and publish it: ``flush_ms`` on every
  ``flush_every``-th hit, marking that queue "being flushed" meanwhile (attached
  after the recording's own flush probe there, so the delay precedes its event);
- ``reserve``: in ``__xsk_rcv_zc`` between ``cached_prod++`` and the
  descriptor writes of the inlined ``xskq_prod_reserve_desc()``: ``reserve_ms``,
  only while the same queue is being flushed on another CPU.

With the fix (fa349e396e48) a queue is never reserved in while it is being
flushed, so the reserve side never waits and the recording stays clean.

The sites come from flightrec/probes/specs/widen/veth-race.toml and the kernel's DWARF, by
source line, never from offsets copied out of one build's disassembly::

    plan = resolve_widen(vmlinux)                 # WidenPlan; raises FlightrecError
    with Widener(plan, WidenOptions()) as w:      # in the guest: loads c/widen
        ...                                       # record
    w.stats                                       # the BPF programs' counters

and in the guest, around any command (what `flightrec vm record --widen` runs)::

    python3 -m flightrec.probes.widen run [--plan FILE] -- COMMAND...
"""

from flightrec.probes.widen.guest import guest_setup, main, meta, run
from flightrec.probes.widen.loader import LOADER, READY_TIMEOUT, Widener, describe, loader_argv
from flightrec.probes.widen.plan import (
    MAX_MS,
    SPEC_PATH,
    WidenOptions,
    WidenPlan,
    WidenSite,
    WidenSpec,
    load_widen_specs,
)
from flightrec.probes.widen.sites import resolve_widen

__all__ = [
    "LOADER",
    "MAX_MS",
    "READY_TIMEOUT",
    "SPEC_PATH",
    "WidenOptions",
    "WidenPlan",
    "WidenSite",
    "WidenSpec",
    "Widener",
    "describe",
    "guest_setup",
    "load_widen_specs",
    "loader_argv",
    "main",
    "meta",
    "resolve_widen",
    "run",
]
