"""What an ftrace event means for flightrec: the one table of kernel event names.

The names are those of the probe specs (flightrec/probes/specs/xsk.toml: rx_reserve, flush,
tx_get_data) and of the post's `perf probe` defaults (__xsk_rcv_zc_L7,
xsk_flush, xp_raw_get_data); a suffix such as `_L7` or `_1` (perf numbers the
inlined copies of a function) is ignored.
"""

from __future__ import annotations

from typing import Optional

RESERVE = "reserve"  # kernel took addr from FILL and reserved an RX slot of xs
FLUSH = "flush"  # kernel published the reserved RX slots of xs
TX = "tx"  # kernel read the packet at addr to transmit it
MARKER = "marker"  # an application transition line
NOTE = "note"  # an application note about one descriptor
OTHER = "other"  # any other event, kept on the timeline

# semantic kind -> (event name bases, fields that must be present)
KERNEL_EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RESERVE: (("rx_reserve", "__xsk_rcv_zc", "xsk_rcv_zc"), ("addr", "xs")),
    FLUSH: (("flush", "xsk_flush"), ("xs",)),
    TX: (("tx_get_data", "xp_raw_get_data"), ("addr",)),
}

MARKER_EVENTS = ("tracing_mark_write", "print")


def kernel_kind(event: str) -> Optional[str]:
    """The semantic kind of a kernel probe event name, or None."""
    for kind, (bases, _) in KERNEL_EVENTS.items():
        for base in bases:
            if event == base or (event.startswith(base) and event[len(base)] == "_"):
                return kind
    return None


def required_fields(kind: str) -> tuple[str, ...]:
    return KERNEL_EVENTS[kind][1]


# The C scanner's kind codes (flightrec/_scan.c); index = code.
SCAN_KINDS = (OTHER, MARKER, NOTE, RESERVE, FLUSH, TX)


def scanner_table() -> list[tuple[str, int, int]]:
    """KERNEL_EVENTS for the C scanner: (name base, kind code, needed-field bits)."""
    bits = {"addr": 1, "xs": 2}
    return [
        (base, SCAN_KINDS.index(kind), sum(bits[f] for f in need))
        for kind, (bases, need) in KERNEL_EVENTS.items()
        for base in bases
    ]
