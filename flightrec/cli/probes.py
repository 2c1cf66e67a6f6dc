"""`flightrec probes`: show, install and remove flightrec's kernel probes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from flightrec import probes as lib

# `probes install` without --instance enables the events in this instance.
CLI_INSTANCE = "flightrec-probes"


def _fail(message: str) -> None:
    click.echo(f"flightrec: {message}", err=True)
    sys.exit(2)


def _specs(paths: tuple[str, ...]) -> list[lib.ProbeSpec]:
    return lib.load_specs([Path(p) for p in paths] if paths else None)


def _vmlinux(given: Optional[str], specs: list[lib.ProbeSpec]) -> Path:
    if given:
        return Path(given)
    found = lib.find_vmlinux()
    if found is None:
        for s in specs:
            click.echo(
                f"flightrec: probe {s.name}: no debug vmlinux for this kernel "
                f"(looked in {lib.vmlinux_candidates()[0].parent} and the usual places): {lib.ADVICE}",
                err=True,
            )
        sys.exit(2)
    return found


@click.group(
    epilog="""\b
Examples:
  flightrec probes show
  flightrec probes show --vmlinux /usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64
  flightrec probes install --instance /sys/kernel/tracing/instances/mine
  flightrec probes remove
"""
)
def probes() -> None:
    """Find, install and remove the AF_XDP kernel probes.

    The probes (flightrec/probes/specs/*.toml) are named for what they show: rx_reserve (the
    kernel reserved an RX slot for ADDR in __xsk_rcv_zc), flush (xsk_flush,
    every inlined copy) and tx_get_data (xp_raw_get_data). Their sites are
    found in the kernel's DWARF, one address per source place so that each
    event is counted once.
    """


@probes.command(
    epilog="""\b
Examples:
  flightrec probes show
  flightrec probes show --vmlinux /var/cache/flightrec/kernels/linux-image-6.1.0-56-cloud-amd64-dbg/vmlinux
  flightrec probes show --json --no-perf --vmlinux vmlinux-6.12

\b
Exit codes: 0 every probe resolved, 2 bad input or a probe that cannot be had.
"""
)
@click.option(
    "--vmlinux",
    metavar="PATH",
    help="Kernel image with DWARF (default: the running kernel's, e.g. /usr/lib/debug/boot/vmlinux-$(uname -r)).",
)
@click.option(
    "--specs", multiple=True, metavar="TOML", help="Probe spec file (default: flightrec/probes/specs/*.toml)."
)
@click.option("--no-perf", is_flag=True, help="Write the kprobe_events definitions from DWARF, not with perf probe -D.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(vmlinux: Optional[str], specs: tuple[str, ...], no_perf: bool, as_json: bool) -> None:
    """Print each probe's sites (function+offset, file:line, why) and definitions.

    The vmlinux may be any kernel's: nothing is installed.
    """
    spec_list = _specs(specs)
    path = _vmlinux(vmlinux, spec_list)
    resolved = lib.resolve(path, spec_list)
    defs, problems = lib.definitions(resolved, path, use_perf=not no_perf)
    if as_json:
        json.dump(
            {"vmlinux": str(path), "probes": [_probe_json(r, defs) for r in resolved], "problems": problems},
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        click.echo(f"vmlinux {path}")
        for r in resolved:
            click.echo(f"\n{r.spec.name}: {r.spec.shows}")
            click.echo(f"  asked     {r.request}")
            for event, site in zip(r.event_names(), r.sites):
                click.echo(f"  site      {site.location}  {site.file}:{site.line}  (event {event})")
                click.echo(f"  why       {site.why}")
            for note in r.notes:
                click.echo(f"  note      {note}")
            for d in defs:
                if d.probe == r.spec.name:
                    click.echo(f"  {d.source:<9} {d.text}")
    for p in problems:
        click.echo(f"flightrec: {p}", err=True)
    sys.exit(2 if problems else 0)


def _probe_json(r: lib.ResolvedProbe, defs: list[lib.Definition]) -> dict:
    return {
        "name": r.spec.name,
        "request": r.request,
        "problem": r.problem,
        "notes": list(r.notes),
        "sites": [
            {
                "event": ev,
                "symbol": s.symbol,
                "offset": s.offset,
                "address": hex(s.address),
                "file": s.file,
                "line": s.line,
                "rel_line": s.rel_line,
                "inlined_into": s.inlined_into,
                "why": s.why,
                "args": {a.name: a.fetch for a in s.args},
            }
            for ev, s in zip(r.event_names(), r.sites)
        ],
        "definitions": [d.text for d in defs if d.probe == r.spec.name],
    }


@probes.command(
    epilog="""\b
Examples:
  flightrec probes install
  flightrec probes install --vmlinux /usr/lib/debug/boot/vmlinux-$(uname -r)
  flightrec probes install --instance /sys/kernel/tracing/instances/mine

\b
Exit codes: 0 every probe installed, 2 some or all could not be (one line each says why).
"""
)
@click.option("--vmlinux", metavar="PATH", help="The running kernel's image with DWARF (default: found).")
@click.option(
    "--instance",
    metavar="DIR",
    help=f"tracefs instance to enable the events in (default: {lib.TRACEFS}/instances/{CLI_INSTANCE}, created).",
)
def install(vmlinux: Optional[str], instance: Optional[str]) -> None:
    """Put the probes into kprobe_events (group flightrec) and enable them in an instance."""
    why = lib.kprobes_unavailable_reason()
    if why:
        _fail(why)
    inst = Path(instance) if instance else lib.TRACEFS / "instances" / CLI_INSTANCE
    if not instance:
        try:
            inst.mkdir(exist_ok=True)
        except OSError as e:
            _fail(f"cannot create tracefs instance {inst}: {e.strerror}")
    done = lib.install(inst, Path(vmlinux) if vmlinux else None)
    for event in done["events"]:
        click.echo(f"installed {done['group']}/{event} (enabled in {inst})")
    for p in done["problems"]:
        click.echo(f"flightrec: {p}", err=True)
    sys.exit(2 if done["problems"] else 0)


@probes.command(
    epilog="""\b
Examples:
  flightrec probes remove
"""
)
def remove() -> None:
    """Delete every event of flightrec's kprobe group (nobody else's)."""
    why = lib.kprobes_unavailable_reason()
    if why:
        _fail(why)
    removed, problems = lib.remove_group(lib.TRACEFS)
    for event in removed:
        click.echo(f"removed {lib.GROUP}/{event}")
    inst = lib.TRACEFS / "instances" / CLI_INSTANCE
    if inst.is_dir():
        try:
            inst.rmdir()
        except OSError as e:
            problems.append(f"cannot remove instance {inst}: {e.strerror}")
    for p in problems:
        click.echo(f"flightrec: {p}", err=True)
    sys.exit(2 if problems else 0)
