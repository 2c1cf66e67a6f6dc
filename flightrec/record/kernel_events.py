"""Which kernel events go beside the markers, and why.

The analyzer reads three kernel events (docs/markers.md): the RX reserve in
``__xsk_rcv_zc``, the flush in ``xsk_flush`` and the TX read in
``xp_raw_get_data``. They need kprobes. This module only decides the backend
and says why; installing and removing the probes belongs to
``flightrec.probes``, called from :func:`install` and :func:`remove` below —
the only two places the recording touches probes.
"""

from __future__ import annotations

import gzip
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from flightrec.errors import FlightrecError

BACKENDS = ("auto", "kprobes", "none")

# name in the trace -> kernel function it probes (docs/markers.md).
KERNEL_EVENTS = {
    "rx_reserve": "__xsk_rcv_zc",
    "flush": "xsk_flush",
    "tx_get_data": "xp_raw_get_data",
}


@dataclass(frozen=True)
class Choice:
    """The backend chosen, why, and which kernel events the trace will lack."""

    backend: str  # "kprobes" or "none"
    reason: str
    missing: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "reason": self.reason, "missing": list(self.missing)}


def _probes_api() -> Optional[Any]:
    """flightrec.probes if it offers install/remove, else None."""
    try:
        probes = importlib.import_module("flightrec.probes")
    except ImportError:
        return None
    if callable(getattr(probes, "install", None)) and callable(getattr(probes, "remove", None)):
        return probes
    return None


def kprobes_unavailable(tracefs_root: Path) -> Optional[str]:
    """Why kprobes cannot be used here, or None."""
    if not (tracefs_root / "kprobe_events").exists():
        config = _kernel_config("CONFIG_KPROBES")
        why = "CONFIG_KPROBES is not set" if config == "n" else "kprobe events are not enabled"
        return f"no kprobe_events in {tracefs_root} ({why} in this kernel)"
    probes = _probes_api()
    if probes is None:
        return "flightrec.probes offers no install/remove API"
    reason = getattr(probes, "kprobes_unavailable_reason", None)
    return reason(tracefs_root) if callable(reason) else None


def _kernel_config(option: str) -> Optional[str]:
    """'y', 'm', 'n' for a kernel config option from /proc/config.gz, None if unknown."""
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            for line in config:
                if line.startswith(f"{option}="):
                    return line.strip().split("=", 1)[1]
                if line.startswith(f"# {option} is not set"):
                    return "n"
    except OSError:
        return None
    return "n"


def _missing_events() -> tuple[str, ...]:
    return tuple(f"{name} ({func})" for name, func in KERNEL_EVENTS.items())


def choose_backend(requested: str, tracefs_root: Path) -> Choice:
    """Pick the kernel-event backend for ``--kernel-events``.

    :raises FlightrecError: ``kprobes`` was asked for and cannot be had.
    """
    if requested not in BACKENDS:
        raise FlightrecError(f"--kernel-events must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "none":
        return Choice("none", "not requested (--kernel-events none)", _missing_events())
    why_not = kprobes_unavailable(tracefs_root)
    if why_not is None:
        return Choice("kprobes", "kprobes available", ())
    if requested == "kprobes":
        raise FlightrecError(f"--kernel-events kprobes: {why_not}; use --kernel-events auto to record markers alone")
    return Choice("none", f"recording markers alone: {why_not}", _missing_events())


def install(choice: Choice, instance_dir: Path) -> tuple[Any, list[str]]:
    """Install the kernel probes, enabled in the instance only.

    The one call site of ``flightrec.probes.install``. Returns the handle for
    :func:`remove` (a JSON-able dict, kept in the crash registry) and one
    line per probe that could not be had: those are warnings, the
    recording goes on with the rest.
    """
    if choice.backend != "kprobes":
        return None, []
    probes = _probes_api()
    if probes is None:  # choose_backend already checked; keep the error clear anyway
        raise FlightrecError("kprobes chosen but flightrec.probes has no install API")
    handle = probes.install(instance_dir)
    problems = list(handle.get("problems", [])) if isinstance(handle, dict) else []
    return handle, problems


def installed_events(handle: Any) -> list[str]:
    return list(handle.get("events", [])) if isinstance(handle, dict) else []


def remove(handle: Any) -> list[str]:
    """Remove exactly what :func:`install` added; the one call site of
    ``flightrec.probes.remove``. Returns problems (empty when clean)."""
    if handle is None:
        return []
    probes = _probes_api()
    if probes is None:
        return ["flightrec.probes is gone; cannot remove kernel probes"]
    return list(probes.remove(handle) or [])


def remove_all_flightrec_probes(tracefs_root: Path) -> list[str]:
    """After a crash mid-install (no handle saved): remove flightrec's whole probe group."""
    probes = _probes_api()
    remove_group = getattr(probes, "remove_group", None) if probes else None
    if remove_group is None or not (tracefs_root / "kprobe_events").exists():
        return []
    _removed, problems = remove_group(tracefs_root)
    return list(problems)
