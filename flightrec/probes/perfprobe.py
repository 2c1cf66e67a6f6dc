"""kprobe_events definitions for resolved sites: from `perf probe -D`, else from DWARF.

perf probe is the reference: it reads the same DWARF with libdw and knows
every location form. When perf is absent flightrec writes the definitions
itself from the locations the resolver found (registers, memory at
register+offset, member chains); a site it cannot translate is reported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import ResolvedProbe

GROUP = "flightrec"
PERF_TIMEOUT = 300  # seconds; perf reads the whole vmlinux symbol table first

_DEF = re.compile(r"^[pr]:(?P<group>[^/\s]+)/(?P<event>\S+)\s+(?P<where>\S+)(?P<args>.*)$")


@dataclass(frozen=True)
class Definition:
    """One line for kprobe_events, e.g. ``p:flightrec/flush __xsk_map_flush+50 xs=%bx:x64``."""

    probe: str  # spec name (rx_reserve)
    event: str  # event name in the group (flush_1)
    text: str
    source: str  # "perf" or "dwarf"


def perf_binary() -> str | None:
    """perf, if installed (Debian: linux-perf)."""
    return shutil.which("perf")


def perf_definitions(vmlinux: Path, requests: list[str], perf: str | None = None) -> list[str]:
    """Run ``perf probe -k VMLINUX -D REQUEST...`` and return its kprobe_events lines.

    :raises FlightrecError: perf is missing or refuses a request (its message is kept).
    """
    perf = perf or perf_binary()
    if perf is None:
        raise FlightrecError("perf not found (apt-get install linux-perf)")
    cmd = [perf, "--no-pager", "probe", "-k", str(vmlinux)]
    for r in requests:
        cmd += ["-D", r]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PERF_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FlightrecError(f"perf probe -D took over {PERF_TIMEOUT} s on {vmlinux}") from None
    lines = [ln.strip() for ln in out.stdout.splitlines() if _DEF.match(ln.strip())]
    if out.returncode != 0 or not lines:
        err = " ".join(ln.strip() for ln in out.stderr.splitlines() if ln.strip() and "Usage" not in ln)
        raise FlightrecError(f"perf probe -D {' '.join(requests)!r} failed: {err[:300] or 'no output'}")
    return lines


def dwarf_definitions(resolved: ResolvedProbe, group: str = GROUP) -> list[Definition]:
    """kprobe_events lines written by flightrec from the resolver's locations.

    :raises FlightrecError: an argument's location is of a form flightrec does not translate.
    """
    defs = []
    for event, site in zip(resolved.event_names(), resolved.sites):
        args = []
        for a in site.args:
            if a.fetch is None:
                raise FlightrecError(
                    f"probe {resolved.spec.name}: cannot write the location of {a.expr} "
                    f"at {site.location} without perf (apt-get install linux-perf)"
                )
            args.append(f"{a.name}={a.fetch}")
        defs.append(
            Definition(
                resolved.spec.name, event, f"p:{group}/{event} {site.location} {' '.join(args)}".rstrip(), "dwarf"
            )
        )
    return defs


def definitions(
    resolved: list[ResolvedProbe], vmlinux: Path, group: str = GROUP, use_perf: bool = True
) -> tuple[list[Definition], list[str]]:
    """Definitions for every resolved probe, and one line per probe that has none.

    perf probe -D is asked for exactly the chosen sites (``symbol+offset``) so
    that it writes one definition per site; without perf, the DWARF fallback.
    """
    perf = perf_binary() if use_perf else None
    defs: list[Definition] = []
    problems: list[str] = []
    for r in resolved:
        if r.problem:
            problems.append(r.problem)
            continue
        try:
            if perf is None:
                defs.extend(dwarf_definitions(r, group))
                continue
            try:
                lines = perf_definitions(vmlinux, r.perf_specs(group), perf)
                events = r.event_names()
                if len(lines) != len(events):
                    raise FlightrecError(f"perf made {len(lines)} definitions for {len(events)} sites")
                defs.extend(Definition(r.spec.name, ev, ln, "perf") for ev, ln in zip(events, lines))
            except FlightrecError as perf_error:
                # perf could not (an older perf, an odd location): flightrec's own, if it can.
                try:
                    defs.extend(dwarf_definitions(r, group))
                except FlightrecError:
                    raise perf_error from None
        except FlightrecError as e:
            problems.append(str(e) if str(e).startswith("probe ") else f"probe {r.spec.name}: {e}")
    return defs, problems


def parse_definition(text: str) -> tuple[str, str, str, str]:
    """(group, event, symbol+offset, args) of a kprobe_events line."""
    m = _DEF.match(text.strip())
    if m is None:
        raise FlightrecError(f"not a kprobe_events definition: {text!r}")
    return m["group"], m["event"], m["where"], m["args"].strip()
