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

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Optional

from flightrec.errors import FlightrecError

AF_XDP = getattr(socket, "AF_XDP", 44)  # the address family, where Python does not name it
STAT_KEYS = (
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
)
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


def summary(
    requested: str, nic: str, ready: Optional[dict], stats_file: Optional[dict], nics: Optional[list[dict]] = None
) -> dict:
    """meta.json's ``af_xdp`` section."""
    rows = sockets(ready, stats_file)
    return {
        "mode_requested": requested,
        "bind": bind_summary(rows),
        "nic": nic,
        "read_back_with": "getsockopt(SOL_XDP, XDP_OPTIONS) after bind",
        # XDP_USE_NEED_WAKEUP: the zerocopy and auto binds ask for it (c/README.md, Mode)
        "need_wakeup": (ready or {}).get("need_wakeup"),
        "sockets": rows,
        "nics": nics or [],
    }


def describe(requested: str, ready: Optional[dict]) -> str:
    """One line for the terminal: what each socket got, and what was asked."""
    rows = sockets(ready, None)
    if not rows:
        return f"AF_XDP mode: unknown (asked {requested}; the forwarder said nothing per socket)"
    got = bind_summary(rows)
    drivers = ", ".join(sorted({str(r.get("driver") or "?") for r in rows}))
    attach = ", ".join(sorted({str(r.get("xdp_attach") or "?") for r in rows}))
    names = ", ".join(str(r["sock"]) for r in rows)
    line = (
        f"AF_XDP mode read back from the kernel (XDP_OPTIONS): {got} on {names} "
        f"(asked {requested}; driver {drivers}; XDP {attach})"
    )
    if requested == "auto":
        line += "; auto took zero-copy" if got == "zerocopy" else "; auto fell back to copy: no zero-copy here"
    return line


def _run(argv: list[str], timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class ModeProbe:
    """What one bind on a scratch veth pair gave: ``mode`` read back, or ``error`` (one line)."""

    asked: str
    mode: Optional[str]
    xdp_attach: Optional[str]
    error: Optional[str]


def probe_veth_modes(modes: tuple[str, ...] = ("copy", "zerocopy")) -> list[ModeProbe]:
    """Bind the forwarder in each mode on two scratch veth pairs in a scratch namespace
    (removed again), and say what the kernel gave: `flightrec doctor`'s modes.

    :raises FlightrecError: not root, or the namespace or veths cannot be made.
    """
    from flightrec.record.forwarder import child_guard, forwarder_missing, forwarder_path

    missing = forwarder_missing()
    if missing:
        raise FlightrecError(missing)
    ns = f"flightrec-doctor-xdp-{os.getpid()}"
    made = _run(["ip", "netns", "add", ns])
    if made.returncode != 0:
        raise FlightrecError(f"cannot create a namespace to bind in: {made.stderr.strip() or 'ip netns add failed'}")
    try:
        out = []
        for i, mode in enumerate(modes):
            # Fresh devices for each bind: a closed socket frees its queue later,
            # in a work item (xp_release_deferred), and a rebind meanwhile gets EBUSY.
            for a, b in ((f"fr{i}o", f"fr{i}p"), (f"fr{i}i", f"fr{i}q")):
                link = _run(["ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b])
                if link.returncode != 0:
                    raise FlightrecError(f"cannot create veth pairs: {link.stderr.strip()}")
                for dev in (a, b):
                    _run(["ip", "-n", ns, "link", "set", dev, "up"])
            argv = [
                *child_guard(),
                str(forwarder_path()),
                "--outer",
                f"/run/netns/{ns}:fr{i}o",
                "--inner",
                f"/run/netns/{ns}:fr{i}i",
                "--mode",
                mode,
                "--no-markers",
                "--duration",
                "0.1",
                "--frames",
                "256",
                "--batch",
                "16",
            ]
            proc = _run(argv)
            ready = next((json.loads(line) for line in proc.stdout.splitlines() if '"event":"ready"' in line), None)
            if ready is not None:
                rows = sockets(ready, None)
                out.append(ModeProbe(mode, bind_summary(rows), (rows[0].get("xdp_attach") if rows else None), None))
            else:
                lines = [ln.removeprefix("forwarder: ") for ln in proc.stderr.splitlines() if ln.strip()]
                out.append(ModeProbe(mode, None, None, lines[-1] if lines else f"exit {proc.returncode}"))
        return out
    finally:
        _run(["ip", "netns", "delete", ns])
