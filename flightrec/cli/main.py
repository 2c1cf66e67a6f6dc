"""The `flightrec` command: a thin click layer over the library.

Each command group lives in its own module under flightrec/cli/ and is listed
in COMMANDS; this module only assembles them and maps errors to exit codes.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Optional

import click

from flightrec import __version__
from flightrec.errors import FlightrecError

# module name -> attribute holding the click command; one line per command.
COMMANDS = {
    "analyze": "analyze",
    "attach": "attach_cmd",
    "record": "record_cmd",
    "doctor": "doctor",
    "cleanup": "cleanup",
    "probes": "probes",
    "simulate": "simulate_cmd",
    "vm": "vm",
    "export": "export",
    "report": "report",
    "markers": "markers",
}

EPILOG = """\b
Examples:
  flightrec record                       # as root: record a forwarder for 20 s, then analyze
  flightrec doctor
  flightrec analyze fixtures/seed-fill-order.txt
  flightrec analyze --json trace.txt
  cat /sys/kernel/tracing/trace | flightrec analyze -

Exit codes: 0 no anomaly, 1 anomaly found, 2 bad input, usage or environment.
"""


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists
    it): `flightrec analyze` should not pay for recording's imports."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"flightrec.cli.{name}"), COMMANDS[name])

    def invoke(self, ctx: click.Context) -> object:
        # Bad input or environment, said by the library: one line, exit 2, for
        # every command (a command catches FlightrecError only to do more).
        try:
            return super().invoke(ctx)
        except FlightrecError as e:
            click.echo(f"flightrec: {e}", err=True)
            sys.exit(2)


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flightrec")
def cli() -> None:
    """An ftrace flight recorder for AF_XDP.

    flightrec records every AF_XDP descriptor transition of a forwarder,
    together with kernel probes, into the ftrace ring buffer, stops on the
    first anomaly, and tells from the saved trace what went wrong and whether
    the kernel or the application did it.
    """


def main() -> None:
    """Entry point: click's own usage errors already exit 2."""
    # Before numpy is first imported (the commands import it lazily): OpenBLAS would
    # start a thread per CPU for the matrix work flightrec never does, ~60 ms of CPU.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        try:
            cli.main(prog_name="flightrec", standalone_mode=True)
        finally:
            sys.stdout.flush()  # a full disk fails here, not in the interpreter's exit
    except KeyboardInterrupt:
        click.echo("flightrec: interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        # Commands turn the errors they expect into one line; what reaches here
        # is mostly standard output failing (a full disk). Exit 1 would read as
        # "anomaly found" to `analyze`'s callers.
        where = f"{e.filename}: " if e.filename else "writing standard output: " if e.errno == errno.ENOSPC else ""
        click.echo(f"flightrec: {where}{e.strerror or e}", err=True)
        sys.exit(2)
