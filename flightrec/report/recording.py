"""What the recording said about itself (meta.json beside the trace), for the reports.

The analysis reads the trace alone; a report must still say plainly when the
run it explains was not a plain run: a race-window widener (flightrec vm
record --widen) is a fault amplifier, and a verdict from such a run must
carry that. And which AF_XDP mode each socket really ran in (copy or
zero-copy, read back from the kernel) changes what the kernel did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def _meta(source: str) -> Optional[dict]:
    """DIR/meta.json when the trace is DIR/trace.txt, else None."""
    try:
        data = json.loads((Path(source).parent / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def widened(source: str) -> Optional[str]:
    """The widener's summary from DIR/meta.json when the trace is DIR/trace.txt, else None."""
    data = _meta(source)
    w = data.get("widened") if data else None
    if isinstance(w, dict) and w.get("summary"):
        return str(w["summary"])
    return None


STAT_LABELS = (("rx_dropped", "rx dropped"), ("rx_invalid_descs", "rx invalid"), ("tx_invalid_descs", "tx invalid"),
               ("rx_ring_full", "RX full"), ("rx_fill_ring_empty_descs", "FILL empty"),
               ("tx_ring_empty_descs", "TX empty"))


@dataclass(frozen=True)
class SocketRow:
    """One AF_XDP socket as the recording saw it, in words for a table cell each."""

    sock: str
    device: str  # "outer (virtio_net)"
    queue: str
    mode: str  # read back from the kernel (XDP_OPTIONS); "?" when the recording did not say
    asked: str
    xdp: str  # XDP attach mode
    rings: str  # "rx/tx/fill/comp 8192/8192/8192/8192"
    stats: str  # XDP_STATISTICS at the end, non-zero counters only
    at_anomaly: str  # XDP_STATISTICS right after the anomaly stopped tracing, or ""


def _counters(stats: object) -> str:
    if not isinstance(stats, dict):
        return ""
    shown = [f"{label} {stats[key]}" for key, label in STAT_LABELS if stats.get(key)]
    return ", ".join(shown) or "all 0"


def sockets(source: str) -> list[SocketRow]:
    """The AF_XDP sockets of the recording (meta.json's af_xdp), [] when it has none."""
    data = _meta(source)
    section = data.get("af_xdp") if data else None
    rows = section.get("sockets") if isinstance(section, dict) else None
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        rings = r.get("ring_sizes") if isinstance(r.get("ring_sizes"), dict) else {}
        out.append(SocketRow(
            sock=str(r.get("sock", "?")), device=f"{r.get('ifname', '?')} ({r.get('driver') or '?'})",
            queue=str(r.get("queue", "?")), mode=str(r.get("mode") or "?"), asked=str(r.get("mode_requested") or "?"),
            xdp=str(r.get("xdp_attach") or "?"),
            rings="/".join(str(rings.get(k, "?")) for k in ("rx", "tx", "fill", "comp")),
            stats=_counters(r.get("xdp_statistics")) or "?", at_anomaly=_counters(r.get("xdp_statistics_at_anomaly"))))
    return out
