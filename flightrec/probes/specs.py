"""Probe specs: the data in flightrec/probes/specs/*.toml, loaded into frozen dataclasses.

A spec says what a probe shows and where in the kernel's source it belongs
(a function, or a call inside one), never a line number or an offset: those
differ between kernels and are found in the DWARF by :mod:`.dwarf`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from flightrec import locate
from flightrec.errors import FlightrecError

SPECS_DIR = locate.PROBE_SPECS_DIR  # package data: installed with flightrec

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# perf probe's argument syntax, the subset flightrec uses: var, var->m->m, var.m, each
# optionally named (NAME=var->m: the event's field is NAME, not the last member)
_ARG = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*=)?[A-Za-z_][A-Za-z0-9_]*(?:(?:->|\.)[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as asked for: ``name`` is the event name the analyzer reads."""

    name: str
    function: str
    args: tuple[str, ...]
    shows: str = ""
    at_call: str | None = None
    units_of: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    # another form of the probe named just before, for kernels where the earlier
    # forms do not resolve (helpers are renamed and inlined between kernels)
    or_else: bool = False

    def arg_name(self, arg: str) -> str:
        """The field name perf probe gives ``arg``: its NAME= or its last member (xs->pool->fq -> fq)."""
        name, _, expr = arg.rpartition("=")
        return name or re.split(r"->|\.", expr)[-1]


def _strings(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FlightrecError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def _spec(table: dict, where: str) -> ProbeSpec:
    for key in ("name", "function"):
        if not isinstance(table.get(key), str) or not _IDENT.fullmatch(table[key]):
            raise FlightrecError(f"{where}: '{key}' must be a C identifier")
    at_call = table.get("at_call")
    if at_call is not None and not (isinstance(at_call, str) and _IDENT.fullmatch(at_call)):
        raise FlightrecError(f"{where}: 'at_call' must be a C identifier")
    args = _strings(table, "args", where)
    for arg in args:
        if not _ARG.fullmatch(arg):
            raise FlightrecError(f"{where}: argument '{arg}' is not var, var->member or var.member")
    optional = _strings(table, "optional", where)
    if not set(optional) <= set(args):
        raise FlightrecError(f"{where}: 'optional' names arguments that are not in 'args'")
    spec = ProbeSpec(
        name=table["name"],
        function=table["function"],
        args=args,
        shows=str(table.get("shows", "")),
        at_call=at_call,
        units_of=_strings(table, "units_of", where),
        optional=optional,
        or_else=table.get("or_else") is True,
    )
    names = [spec.arg_name(a) for a in args]
    if len(set(names)) != len(names):
        raise FlightrecError(f"{where}: two arguments would get the same field name")
    return spec


def load_specs(paths: list[Path] | None = None) -> list[ProbeSpec]:
    """Load probe specs from TOML files (default: every flightrec/probes/specs/*.toml).

    :raises FlightrecError: a file is missing, not TOML, or a spec is malformed.
    """
    if paths is None:
        paths = sorted(SPECS_DIR.glob("*.toml"))
        if not paths:
            raise FlightrecError(f"no probe specs in {SPECS_DIR}")
    specs: list[ProbeSpec] = []
    for path in paths:
        data = load_toml(path)
        tables = data.get("probe")
        if not isinstance(tables, list) or not tables:
            raise FlightrecError(f"{path}: no [[probe]] tables")
        for i, table in enumerate(tables):
            specs.append(_spec(table, f"{path}: probe {i + 1}"))
    names = [s.name for s in specs if not s.or_else]
    dup = {n for n in names if names.count(n) > 1}
    dup |= {s.name for i, s in enumerate(specs) if s.or_else and (i == 0 or specs[i - 1].name != s.name)}
    if dup:
        raise FlightrecError(f"probe name used twice: {', '.join(sorted(dup))}")
    return specs


def load_toml(path: Path) -> dict:
    """A spec file's data.

    :raises FlightrecError: missing, unreadable, or not TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise FlightrecError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise FlightrecError(f"{path}: not valid TOML: {e}") from None
