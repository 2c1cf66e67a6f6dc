"""meta.json beside a trace: what the recording said about itself.

`flightrec record` saves DIR/trace.txt with DIR/meta.json. Two things in it
change what a trace can prove or how a verdict must be read:

- `kernel_events.ended_at`: the moment (seconds on the trace's own clock, the
  numbers of its timestamps) the kernel-event source (BPF loader or kprobes)
  stopped mid-run; after it the trace holds no kernel events, so their
  absence proves nothing;
- `widened.summary`: the run's race windows were widened on purpose;
- `af_xdp.sockets[].mode`: the mode each socket read back after bind; a
  zero-copy socket's RX order is not its FILL order (docs/markers.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from flightrec import runfolder
from flightrec.errors import FlightrecError

META_NAME = runfolder.META


def meta_path(source: str) -> Optional[Path]:
    """DIR/meta.json for the trace DIR/NAME (None for standard input)."""
    return runfolder.meta_path_beside(source)


def read_meta(source: str) -> Optional[dict]:
    """The meta.json beside the trace `source`, or None when there is none or
    it is not a JSON object (a side file never stops an analysis)."""
    return runfolder.meta_beside(source)


def kernel_events_ended_at(meta: Optional[dict], source: str = "meta.json") -> Optional[float]:
    """`kernel_events.ended_at` as seconds, None when absent; raises
    FlightrecError when present but not a finite number: verdicts depend on it."""
    if not meta:
        return None
    ke = meta.get("kernel_events")
    if not isinstance(ke, dict) or ke.get("ended_at") is None:
        return None
    value = ke["ended_at"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FlightrecError(f"{source}: kernel_events.ended_at is {value!r}, not seconds on the trace's clock")
    return float(value)


def widened_summary(meta: Optional[dict]) -> Optional[str]:
    """The race-window widener's one-line summary, when the run was widened."""
    w = meta.get("widened") if meta else None
    if isinstance(w, dict) and w.get("summary"):
        return str(w["summary"])
    return None


def zerocopy_sockets(meta: Optional[dict]) -> frozenset[str]:
    """The sockets (`SOCK q:QUEUE`, as in the markers) the kernel bound in
    zero-copy mode, by meta.json's `af_xdp` section."""
    section = meta.get("af_xdp") if meta else None
    rows = section.get("sockets") if isinstance(section, dict) else None
    if not isinstance(rows, list):
        return frozenset()
    return frozenset(
        str(r["sock"]) for r in rows if isinstance(r, dict) and r.get("sock") and r.get("mode") == "zerocopy"
    )
