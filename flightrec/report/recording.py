"""What the recording said about itself (meta.json beside the trace), for the reports.

The analysis reads the trace and, for the kernel-event source's end, meta.json
(flightrec.parse.meta); a report must still say plainly when the run it
explains was not a plain run: a race-window widener (flightrec vm record
--widen) is a fault amplifier, and a verdict from such a run must carry that.
And which AF_XDP mode each socket really ran in (copy or zero-copy, read back
from the kernel) changes what the kernel did: the reports show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from flightrec import runfolder
from flightrec.parse.meta import widened_summary


def widened(source: str, meta: Optional[dict] = None) -> Optional[str]:
    """The widener's summary from DIR/meta.json when the trace is DIR/trace.txt
    (or from `meta`, already read), else None."""
    return widened_summary(meta if meta is not None else runfolder.meta_beside(source))


STAT_LABELS = (
    ("rx_dropped", "rx dropped"),
    ("rx_invalid_descs", "rx invalid"),
    ("tx_invalid_descs", "tx invalid"),
    ("rx_ring_full", "RX full"),
    ("rx_fill_ring_empty_descs", "FILL empty"),
    ("tx_ring_empty_descs", "TX empty"),
)


@dataclass(frozen=True)
class SocketRow:
    """One AF_XDP socket as the recording saw it (meta.json's af_xdp), in words for a table cell each."""

    sock: str
    device: str  # "outer (virtio_net)"
    queue: str
    mode: str  # read back from the kernel (XDP_OPTIONS); "?" when the recording did not say
    asked: str
    xdp: str  # XDP attach mode
    rings: str  # rx/tx/fill/comp sizes: "8192/8192/8192/8192"
    stats: str  # XDP_STATISTICS at the end, non-zero counters only
    at_anomaly: str  # XDP_STATISTICS right after the anomaly stopped tracing, or ""


def _counters(stats: object) -> str:
    if not isinstance(stats, dict):
        return ""
    shown = [f"{label} {stats[key]}" for key, label in STAT_LABELS if stats.get(key)]
    return ", ".join(shown) or "all 0"


def sockets(source: str, meta: Optional[dict] = None) -> list[SocketRow]:
    """The recording's AF_XDP sockets and the mode each really got (which changes what
    the kernel did: copy or zero-copy), [] when meta.json has none."""
    data = meta if meta is not None else runfolder.meta_beside(source)
    section = data.get("af_xdp") if data else None
    rows = section.get("sockets") if isinstance(section, dict) else None
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        rings = r.get("ring_sizes") if isinstance(r.get("ring_sizes"), dict) else {}
        out.append(
            SocketRow(
                sock=str(r.get("sock", "?")),
                device=f"{r.get('ifname', '?')} ({r.get('driver') or '?'})",
                queue=str(r.get("queue", "?")),
                mode=str(r.get("mode") or "?"),
                asked=str(r.get("mode_requested") or "?"),
                xdp=str(r.get("xdp_attach") or "?"),
                rings="/".join(str(rings.get(k, "?")) for k in ("rx", "tx", "fill", "comp")),
                stats=_counters(r.get("xdp_statistics")) or "?",
                at_anomaly=_counters(r.get("xdp_statistics_at_anomaly")),
            )
        )
    return out
