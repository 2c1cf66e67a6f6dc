"""What mode each AF_XDP socket really got, from the forwarder's own words.

The forwarder reads the mode back from the kernel after bind
(``getsockopt(XDP_OPTIONS)`` -> ``XDP_OPTIONS_ZEROCOPY``) and prints it per
socket in its ``ready`` line, with the device, driver, queue, XDP attach mode
and ring sizes; its ``--stats`` file repeats those with ``XDP_STATISTICS`` at
the end of the run (and, after an anomaly, right after tracing stopped). This
module turns them into meta.json's ``af_xdp`` section and one line for the
terminal.
"""

from __future__ import annotations

from typing import Optional

STAT_KEYS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
             "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
FACT_KEYS = ("sock", "ifname", "ifindex", "driver", "queue", "mode", "mode_requested", "xdp_attach", "ring_sizes")
MODES = ("copy", "zerocopy", "auto")


def sockets(ready: Optional[dict], stats_file: Optional[dict]) -> list[dict]:
    """One row per socket: the facts from ``ready``, the kernel's counters from the stats file."""
    by_sock: dict[str, dict] = {}
    order: list[str] = []
    for source in ((ready or {}).get("sockets") or [], (stats_file or {}).get("ports") or []):
        for entry in source:
            if not isinstance(entry, dict) or "sock" not in entry:
                continue
            name = str(entry["sock"])
            if name not in by_sock:
                by_sock[name] = {}
                order.append(name)
            row = by_sock[name]
            for key in FACT_KEYS:
                if key in entry and key not in row:
                    row[key] = entry[key]
            for key in ("xdp_statistics", "xdp_statistics_at_anomaly"):
                if isinstance(entry.get(key), dict):
                    row[key] = {k: entry[key].get(k) for k in STAT_KEYS}
    return [by_sock[n] for n in order]


def bind_summary(rows: list[dict]) -> str:
    """zerocopy or copy when all sockets read the same back, mixed, or unknown."""
    modes = {r.get("mode") for r in rows}
    if not rows or None in modes:
        return "unknown"
    return modes.pop() if len(modes) == 1 else "mixed"


def summary(requested: str, nic: str, ready: Optional[dict], stats_file: Optional[dict],
            nics: Optional[list[dict]] = None) -> dict:
    """meta.json's ``af_xdp`` section."""
    rows = sockets(ready, stats_file)
    return {"mode_requested": requested, "bind": bind_summary(rows), "nic": nic,
            "read_back_with": "getsockopt(SOL_XDP, XDP_OPTIONS) after bind", "sockets": rows,
            "nics": nics or []}


def describe(requested: str, ready: Optional[dict]) -> str:
    """One line for the terminal: what each socket got, and what was asked."""
    rows = sockets(ready, None)
    if not rows:
        return f"AF_XDP mode: unknown (asked {requested}; the forwarder said nothing per socket)"
    got = bind_summary(rows)
    drivers = ", ".join(sorted({str(r.get("driver") or "?") for r in rows}))
    attach = ", ".join(sorted({str(r.get("xdp_attach") or "?") for r in rows}))
    names = ", ".join(str(r["sock"]) for r in rows)
    line = (f"AF_XDP mode read back from the kernel (XDP_OPTIONS): {got} on {names} "
            f"(asked {requested}; driver {drivers}; XDP {attach})")
    if requested == "auto":
        line += "; auto took zero-copy" if got == "zerocopy" else "; auto fell back to copy: no zero-copy here"
    return line
