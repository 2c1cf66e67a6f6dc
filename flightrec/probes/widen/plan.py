"""What a widening is: the sites a spec file asks for, the sites found, the plan, the options.

Data only: flightrec/probes/specs/widen/*.toml read into :class:`WidenSpec`;
:class:`WidenPlan` (both :class:`WidenSite` of one kernel) is what the host
resolves and the guest runs, as JSON between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import FetchArg
from flightrec.probes.specs import SPECS_DIR, load_toml

SPEC_PATH = SPECS_DIR / "widen" / "veth-race.toml"
MAX_MS = 1000.0  # c/widen/widen.h WIDEN_MAX_NS: a longer busy-wait would stall the guest


@dataclass(frozen=True)
class WidenSpec:
    """One site as flightrec/probes/specs/widen/*.toml asks for it."""

    name: str
    function: str
    inlined: tuple[str, ...]
    key: tuple[str, ...]
    at: Optional[str] = None
    after: Optional[str] = None
    before: Optional[str] = None
    queue: tuple[str, ...] = ()
    shows: str = ""


@dataclass(frozen=True)
class WidenSite:
    """Where one widener kprobe goes, why there, and what it reads there."""

    name: str
    symbol: str
    offset: int
    address: int
    file: str
    line: int
    why: str
    key: FetchArg
    queue: Optional[FetchArg] = None

    @property
    def location(self) -> str:
        return f"{self.symbol}+{self.offset}"


@dataclass(frozen=True)
class WidenPlan:
    """Both sites in one kernel; ``build_id`` ties them to it."""

    vmlinux: str
    build_id: Optional[str]
    flush: WidenSite
    reserve: WidenSite

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "WidenPlan":
        """:raises FlightrecError: not a plan written by :meth:`as_dict`."""
        try:
            sites = {}
            for name in ("flush", "reserve"):
                s = dict(data[name])
                s["key"] = FetchArg(**s["key"])
                s["queue"] = FetchArg(**s["queue"]) if s.get("queue") else None
                sites[name] = WidenSite(**s)
            return WidenPlan(str(data["vmlinux"]), data.get("build_id"), sites["flush"], sites["reserve"])
        except (KeyError, TypeError, ValueError) as e:
            raise FlightrecError(f"not a widener plan ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class WidenOptions:
    """How wide: the defaults hit the race within seconds on a 2-vCPU TCG guest."""

    flush_ms: float = 10.0
    flush_every: int = 1000
    reserve_ms: float = 50.0
    queue: Optional[int] = None  # only flushes of sockets bound to this queue id; None: any

    def check(self) -> None:
        """:raises FlightrecError: a delay out of (0, 1000] ms, a rate below 1, a negative queue."""
        for name, ms in (("flush delay", self.flush_ms), ("reserve delay", self.reserve_ms)):
            if not 0 < ms <= MAX_MS:
                raise FlightrecError(f"widener {name} must be in (0, {MAX_MS:g}] ms, got {ms:g}")
        if self.flush_every < 1:
            raise FlightrecError(f"widener flush rate must be 1 or more (every Nth flush), got {self.flush_every}")
        if self.queue is not None and self.queue < 0:
            raise FlightrecError(f"widener queue must be a queue id (0 or more), got {self.queue}")


def _strs(table: dict, key: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (required and not value):
        raise FlightrecError(f"{where}: '{key}' must be a{' non-empty' if required else ''} list of strings")
    return tuple(value)


def load_widen_specs(path: Path = SPEC_PATH) -> dict[str, WidenSpec]:
    """The ``flush`` and ``reserve`` sites of a widener spec file.

    :raises FlightrecError: missing, not TOML, or a site malformed.
    """
    data = load_toml(path)
    specs = {}
    for i, t in enumerate(data.get("site", [])):
        where = f"{path}: site {i + 1}"
        name, function = t.get("name"), t.get("function")
        if not (isinstance(name, str) and isinstance(function, str) and function.isidentifier()):
            raise FlightrecError(f"{where}: 'name' and 'function' must be given ('function' a C identifier)")
        at, after, before = t.get("at"), t.get("after"), t.get("before")
        if not (
            (at == "entry" and after is None and before is None)
            or (at is None and isinstance(after, str) and isinstance(before, str) and after and before)
        ):
            raise FlightrecError(f"{where}: give either at = \"entry\" or both 'after' and 'before'")
        specs[name] = WidenSpec(
            name,
            function,
            _strs(t, "inlined", where, True),
            _strs(t, "key", where, True),
            at,
            after,
            before,
            _strs(t, "queue", where),
            str(t.get("shows", "")),
        )
    missing = {"flush", "reserve"} - set(specs)
    if missing:
        raise FlightrecError(f"{path}: no site named {', '.join(sorted(missing))}")
    return specs
