"""Put flightrec's kprobes into the kernel and take them out again.

Definitions go into ``<tracefs>/kprobe_events`` in flightrec's own event
group, so removing touches nobody else's probes; the events are enabled only
in flightrec's tracefs instance (a plain directory, ``instances/<name>``).
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import TypedDict

from flightrec import tracefs as tracefs_files
from flightrec.errors import FlightrecError
from flightrec.probes.perfprobe import GROUP, Definition, parse_definition

TRACEFS = Path("/sys/kernel/tracing")

# A kprobe_events line as the kernel lists it: p:grp/ev ..., r16:grp/ev ... (maxactive).
_LISTED = re.compile(r"^[pr]\d*:(?P<group>[^/\s]+)/(?P<event>\S+)\s")


class Installed(TypedDict):
    """What :func:`install` put in: a plain dict so a recording can save it as JSON."""

    tracefs: str
    instance: str
    group: str
    events: list[str]
    problems: list[str]


def tracefs_of(instance_dir: Path) -> Path:
    """The tracefs root of an instance directory (``<root>/instances/<name>``), or the root itself."""
    instance_dir = Path(instance_dir)
    return instance_dir.parent.parent if instance_dir.parent.name == "instances" else instance_dir


def kprobes_unavailable_reason(tracefs: Path = TRACEFS) -> str | None:
    """Why kprobes cannot be installed here, or None when they can."""
    if not (tracefs / "README").exists():
        return f"tracefs is not mounted at {tracefs} (mount -t tracefs nodev {tracefs})"
    if not (tracefs / "kprobe_events").exists():
        return (
            "this kernel has no kprobe events (CONFIG_KPROBE_EVENTS is not set): "
            "use `flightrec vm record` to record under a kernel that has them"
        )
    try:
        tracefs_files.check_appendable(tracefs / "kprobe_events")
    except PermissionError:
        return f"{tracefs / 'kprobe_events'} is not writable: run as root"
    except OSError as e:
        return f"{tracefs / 'kprobe_events'}: {e.strerror}"
    return None


def group_events(tracefs: Path, group: str = GROUP) -> list[str]:
    """Events of ``group`` currently in kprobe_events."""
    try:
        text = tracefs_files.read_control(tracefs / "kprobe_events")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = _LISTED.match(line)
        if m and m["group"] == group:
            out.append(m["event"])
    return out


def _enable(instance: Path, group: str, event: str, on: bool) -> None:
    tracefs_files.write_control(instance / "events" / group / event / "enable", "1" if on else "0")


def install(definitions: list[Definition], instance_dir: Path) -> Installed:
    """Add each definition to kprobe_events and enable it in the instance.

    A definition the kernel refuses (e.g. a symbol not in this kernel) is
    left out with one line in ``problems``; the others stay installed.

    :raises FlightrecError: kprobes unavailable, or the instance does not exist.
    """
    instance_dir = Path(instance_dir)
    tracefs = tracefs_of(instance_dir)
    why = kprobes_unavailable_reason(tracefs)
    if why:
        raise FlightrecError(why)
    if not (instance_dir / "events").is_dir():
        raise FlightrecError(f"{instance_dir} is not a tracefs instance")
    installed = Installed(tracefs=str(tracefs), instance=str(instance_dir), group=GROUP, events=[], problems=[])
    for d in definitions:
        group, event, where, _ = parse_definition(d.text)
        if group != GROUP:
            raise FlightrecError(f"refusing to install {d.text!r}: not in group {GROUP}")
        if event in group_events(tracefs, group):
            installed["problems"].append(
                f"probe {d.probe}: {group}/{event} already exists "
                f"(another flightrec? `flightrec probes remove` clears it)"
            )
            continue
        try:
            tracefs_files.append_line(tracefs / "kprobe_events", d.text)
        except OSError as e:
            hint = " (symbol not probeable on this kernel?)" if e.errno in (errno.EINVAL, errno.ENOENT) else ""
            installed["problems"].append(f"probe {d.probe}: the kernel refused {where}: {e.strerror}{hint}")
            continue
        installed["events"].append(event)
        try:
            _enable(instance_dir, group, event, True)
        except OSError as e:
            installed["problems"].append(f"probe {d.probe}: cannot enable {group}/{event}: {e.strerror}")
    return installed


def remove(installed: Installed | dict) -> list[str]:
    """Disable and delete the events :func:`install` added; returns problems (empty when clean)."""
    tracefs = Path(installed["tracefs"])
    instance = Path(installed["instance"])
    group = installed.get("group", GROUP)
    problems = []
    present = set(group_events(tracefs, group))
    for event in installed.get("events", []):
        if event not in present:
            continue
        try:
            if (instance / "events" / group / event / "enable").exists():
                _enable(instance, group, event, False)
            tracefs_files.append_line(tracefs / "kprobe_events", f"-:{group}/{event}")
        except OSError as e:
            problems.append(f"cannot remove {group}/{event}: {e.strerror} (is it enabled in another instance?)")
    return problems


def remove_group(tracefs: Path = TRACEFS, group: str = GROUP) -> tuple[list[str], list[str]]:
    """Delete every event of flightrec's group, whoever installed it: (removed, problems).

    Events still enabled in some instance cannot be deleted (EBUSY); each
    instance is disabled first.
    """
    removed, problems = [], []
    instances = [tracefs] + sorted((tracefs / "instances").glob("*")) if (tracefs / "instances").is_dir() else [tracefs]
    for event in group_events(tracefs, group):
        for inst in instances:
            enable = inst / "events" / group / event / "enable"
            try:
                if enable.exists() and tracefs_files.read_control(enable).strip() != "0":
                    tracefs_files.write_control(enable, "0")
            except OSError:
                pass
        try:
            tracefs_files.append_line(tracefs / "kprobe_events", f"-:{group}/{event}")
            removed.append(event)
        except OSError as e:
            problems.append(f"cannot remove {group}/{event}: {e.strerror}")
    return removed, problems
