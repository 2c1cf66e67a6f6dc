"""`flightrec cleanup`: remove what a killed `flightrec record` left behind."""

from __future__ import annotations

import sys

import click

from flightrec.errors import FlightrecError
from flightrec.record import state
from flightrec.record.session import remove_leftover_probes

EPILOG = """\b
Examples:
  flightrec cleanup            # after `kill -9` of a flightrec record
  flightrec cleanup --dry-run  # only list what would be removed

\b
Exit codes: 0 nothing left behind (or all of it removed); 1 something could
not be removed; 2 a recording is running (stop it first) or not root.
"""


@click.command("cleanup", epilog=EPILOG)
@click.option("--dry-run", is_flag=True, help="List the leftovers without removing them.")
def cleanup(dry_run: bool) -> None:
    """Remove leftovers of a killed recording.

    Finds flightrec's network namespaces (with their veth links, XDP programs
    and processes), its tracefs instances and the processes it started, from
    /run/flightrec/session.json and from flightrec's own name patterns. Refuses
    while a recording is running.
    """
    try:
        with state.Lock():
            left = state.find_leftovers()
            if not left:
                state.clear_registry()
                click.echo("nothing to clean up")
                return
            for name in left.netns:
                click.echo(f"netns {name}")
            for name in left.instances:
                click.echo(f"tracefs instance {name}")
            for proc in left.processes:
                click.echo(f"process {proc.pid} ({proc.what})")
            if left.extra:
                click.echo(f"kernel events {left.extra}")
            if dry_run:
                click.echo("(dry run: nothing removed)")
                return
            failed = state.remove_leftovers(left)
            failed += remove_leftover_probes(left.extra)
            if failed:
                click.echo(f"could not remove: {', '.join(failed)}", err=True)
                sys.exit(1)
            state.clear_registry()
            click.echo("removed")
    except FlightrecError as err:
        click.echo(f"flightrec: {err}", err=True)
        sys.exit(2)
