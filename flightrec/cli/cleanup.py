"""`flightrec cleanup`: remove what a killed `flightrec record` or `vm record` left behind."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from flightrec.record import state
from flightrec.record.session import remove_leftover_probes

EPILOG = """\b
Examples:
  flightrec cleanup            # after `kill -9` of a flightrec record or vm record
  flightrec cleanup --dry-run  # only list what would be removed

\b
Exit codes: 0 nothing left behind (or all of it removed); 1 something could
not be removed; 2 a recording is running (stop it first; VM scratch folders
of dead runs are removed all the same) or not root.
"""


def stale_vm_folders() -> list[Path]:
    """Scratch folders of `flightrec vm` runs whose process is dead ($TMPDIR/flightrec-vm-<pid>-*).

    A SIGKILLed vm run leaves only this folder: its QEMU and virtiofsd die
    with it (parent-death signal). A live pid's folder belongs to a running VM.
    """
    from flightrec.vm.runner import WORK_PREFIX

    stale = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*")):
        pid = path.name[len(WORK_PREFIX) :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not state.process_start_time(int(pid)):
            stale.append(path)
    return stale


@click.command("cleanup", epilog=EPILOG)
@click.option("--dry-run", is_flag=True, help="List the leftovers without removing them.")
def cleanup(dry_run: bool) -> None:
    """Remove leftovers of a killed recording.

    Finds flightrec's network namespaces (with their veth links, XDP programs
    and processes), its tracefs instances, the processes it started and the
    tracing setting it changes, from /run/flightrec/session.json and from
    flightrec's own name patterns; and the scratch folders of killed `vm`
    runs. Refuses to touch the host's recording state while a recording runs.
    """
    failed: list[str] = []
    folders = stale_vm_folders()
    for path in folders:
        click.echo(f"VM scratch folder {path}")
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                failed.append(str(path))
    with state.Lock():
        left = state.find_leftovers()
        if not left:
            state.clear_registry()
            if not folders:
                click.echo("nothing to clean up")
        for name in left.netns:
            click.echo(f"netns {name}")
        for name in left.instances:
            click.echo(f"tracefs instance {name}")
        for proc in left.processes:
            click.echo(f"process {proc.pid} ({proc.what})")
        if left.extra:
            click.echo(f"kernel events {left.extra}")
        if dry_run:
            if left or folders:
                click.echo("(dry run: nothing removed)")
            return
        if left:
            failed += state.remove_leftovers(left)
            failed += remove_leftover_probes(left.extra)
            if not failed:
                state.clear_registry()
    if failed:
        click.echo(f"could not remove: {', '.join(failed)}", err=True)
        sys.exit(1)
    if left or folders:
        click.echo("removed")
