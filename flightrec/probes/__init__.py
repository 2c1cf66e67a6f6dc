"""Kernel probes for AF_XDP: specs as data, sites from DWARF, kprobe_events in and out.

The API a recording uses (it never raises for a missing capability: each
probe that cannot be had gets one line in ``problems`` and the rest goes on)::

    reason = kprobes_unavailable_reason()          # str | None
    handle = install(instance_dir)                 # Installed (a JSON-able dict)
    for line in handle["problems"]: warn(line)     # one line per missing probe
    ...
    remove(handle)                                 # only what install added

and the parts beneath, for ``flightrec probes`` and tests::

    resolved = resolve(vmlinux)                    # list[ResolvedProbe]; raises on a bad file
    defs, problems = definitions(resolved, vmlinux)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from flightrec.errors import FlightrecError
from flightrec.probes import kprobe_events as _kprobe_events
from flightrec.probes.dwarf import ADVICE, FetchArg, ResolvedProbe, Site, Vmlinux, gnu_build_id, resolve_specs
from flightrec.probes.kprobe_events import (
    TRACEFS,
    Installed,
    group_events,
    kprobes_unavailable_reason,
    remove_group,
    tracefs_of,
)
from flightrec.probes.perfprobe import GROUP, Definition, definitions
from flightrec.probes.specs import ProbeSpec, load_specs

__all__ = [
    "ADVICE",
    "GROUP",
    "TRACEFS",
    "Definition",
    "FetchArg",
    "Installed",
    "Prepared",
    "ProbeSpec",
    "ResolvedProbe",
    "Site",
    "definitions",
    "find_vmlinux",
    "group_events",
    "install",
    "kprobes_unavailable_reason",
    "load_specs",
    "prepare",
    "remove",
    "remove_group",
    "resolve",
    "running_build_id",
    "vmlinux_candidates",
]

KERNEL_CACHE = Path(os.environ.get("FLIGHTREC_KERNEL_CACHE", "/var/cache/flightrec/kernels"))


def vmlinux_candidates(release: str | None = None) -> list[Path]:
    """Where a debug vmlinux of ``release`` (default: the running kernel) usually is."""
    r = release or os.uname().release
    paths = [
        Path(f"/usr/lib/debug/boot/vmlinux-{r}"),
        Path(f"/usr/lib/debug/lib/modules/{r}/vmlinux"),
        Path(f"/usr/lib/debug/vmlinux-{r}"),
        Path(f"/boot/vmlinux-{r}"),
        Path(f"/lib/modules/{r}/build/vmlinux"),
    ]
    # scripts/fetch-debug-kernel.sh leaves <cache>/<package>/{vmlinux,release}.
    for rel in sorted(KERNEL_CACHE.glob("*/release")):
        try:
            if rel.read_text().strip() == f"vmlinux-{r}":
                paths.append(rel.parent / "vmlinux")
        except OSError:
            pass
    return paths


def find_vmlinux(release: str | None = None) -> Path | None:
    """The first existing debug vmlinux for ``release``, or None."""
    return next((p for p in vmlinux_candidates(release) if p.is_file()), None)


def running_build_id() -> str | None:
    """The running kernel's GNU build ID from /sys/kernel/notes (None if unreadable)."""
    try:
        data = Path("/sys/kernel/notes").read_bytes()
    except OSError:
        return None
    i = 0
    while i + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, i)
        name_end = i + 12 + ((namesz + 3) & ~3)
        if ntype == 3 and data[i + 12 : i + 12 + namesz].rstrip(b"\0") == b"GNU":  # NT_GNU_BUILD_ID
            return data[name_end : name_end + descsz].hex()
        i = name_end + ((descsz + 3) & ~3)
    return None


def resolve(vmlinux: Path, specs: list[ProbeSpec] | None = None) -> list[ResolvedProbe]:
    """Resolve the probe specs (default: flightrec/probes/specs/*.toml) in a vmlinux with DWARF.

    :raises FlightrecError: not an ELF, truncated, no DWARF, or no AF_XDP in the kernel.
    """
    specs = load_specs() if specs is None else specs
    with Vmlinux(Path(vmlinux)) as vm:
        return resolve_specs(vm, specs)


@dataclass(frozen=True)
class Prepared:
    """Everything known before installing: definitions to write and one line per missing probe."""

    vmlinux: Path | None
    resolved: tuple[ResolvedProbe, ...]
    definitions: tuple[Definition, ...]
    problems: tuple[str, ...]


def prepare(
    vmlinux: Path | None = None, specs: list[ProbeSpec] | None = None, for_running_kernel: bool = True
) -> Prepared:
    """Find the vmlinux, resolve and write definitions; never raises for a missing capability.

    With ``for_running_kernel`` a vmlinux whose build ID differs from the
    running kernel's is refused (its offsets would be wrong).
    """
    try:
        specs = load_specs() if specs is None else specs
    except FlightrecError as e:
        return Prepared(vmlinux, (), (), (f"probes: {e}",))

    def every(why: str) -> Prepared:
        return Prepared(vmlinux, (), (), tuple(f"probe {s.name}: {why}" for s in specs))

    if vmlinux is None:
        vmlinux = find_vmlinux()
        if vmlinux is None:
            return every(
                f"no debug vmlinux for {os.uname().release} (looked in /usr/lib/debug/boot and "
                f"the usual places): {ADVICE}"
            )
    if for_running_kernel:
        want, have = running_build_id(), gnu_build_id(vmlinux)
        if want and have and want != have:
            return every(f"{vmlinux} is not the running kernel's (build ID {have[:12]} != {want[:12]}): {ADVICE}")
    try:
        resolved = resolve(vmlinux, specs)
    except FlightrecError as e:
        return every(str(e))
    defs, problems = definitions(resolved, vmlinux)
    return Prepared(vmlinux, tuple(resolved), tuple(defs), tuple(problems))


def install(
    instance_dir: Path,
    vmlinux: Path | None = None,
    specs: list[ProbeSpec] | None = None,
    prepared: Prepared | None = None,
) -> Installed:
    """Install every probe that can be had, enabled in the tracefs instance ``instance_dir``.

    Never raises for a missing capability (no kprobes, no debug vmlinux, a
    variable optimised out): ``Installed["problems"]`` has one line per
    probe that is missing and what the user can do; the rest is installed.
    """
    tracefs = tracefs_of(Path(instance_dir))
    empty = Installed(tracefs=str(tracefs), instance=str(instance_dir), group=GROUP, events=[], problems=[])
    why = kprobes_unavailable_reason(tracefs)
    if why:
        names = [s.name for s in (specs or _specs_or_empty())]
        empty["problems"] = [f"probe {n}: {why}" for n in names] or [f"probes: {why}"]
        return empty
    prepared = prepared or prepare(vmlinux, specs)
    if not prepared.definitions:
        empty["problems"] = list(prepared.problems)
        return empty
    try:
        installed = _kprobe_events.install(list(prepared.definitions), Path(instance_dir))
    except FlightrecError as e:
        empty["problems"] = list(prepared.problems) + [f"probes: {e}"]
        return empty
    installed["problems"] = list(prepared.problems) + installed["problems"]
    return installed


def remove(installed: Installed | dict) -> list[str]:
    """Remove exactly what :func:`install` added; returns problems (empty when clean)."""
    return _kprobe_events.remove(installed)


def _specs_or_empty() -> list[ProbeSpec]:
    try:
        return load_specs()
    except FlightrecError:
        return []
