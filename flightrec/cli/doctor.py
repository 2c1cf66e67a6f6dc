"""`flightrec doctor`: what this machine can do, one line each, with the fix.

The probing is flightrec.capabilities'; this module only prints.
"""

from __future__ import annotations

import sys

import click

from flightrec.capabilities import probe_all

EPILOG = """\b
Examples:
  flightrec doctor
  flightrec doctor && flightrec record

\b
Exit codes: 0 record can run here; 1 a required piece is missing.
"""


@click.command("doctor", epilog=EPILOG)
def doctor() -> None:
    """Check what this machine can do for flightrec, one line per capability.

    Each missing piece comes with its fix. Optional pieces (kprobes, BTF,
    perf, clang, libxdp, bpffs, the C helpers) only limit what is recorded
    or built, or how fast traces are read. The AF_XDP modes are measured:
    the forwarder binds on scratch veths in copy and in zero-copy mode, and
    the cached VM kernels' virtio_net is read for zero-copy support.
    """
    found = probe_all()
    width = max(len(c.name) for c in found)
    for c in found:
        status = "ok" if c.ok else ("MISSING" if c.required else "missing (optional)")
        line = f"{c.name:<{width}}  {status:<18}  {c.detail}"
        if not c.ok and c.fix:
            line += f"; fix: {c.fix}"
        click.echo(line)
    blocking = [c.name for c in found if c.required and not c.ok]
    if blocking:
        click.echo(f"record cannot run: missing {', '.join(blocking)}")
        sys.exit(1)
    click.echo("record can run")
