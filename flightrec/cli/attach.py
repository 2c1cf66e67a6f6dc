"""`flightrec attach`: record an AF_XDP program that is already running (flightrec/record/attach.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import click

from flightrec.cli import options
from flightrec.cli.record import PlainView
from flightrec.record.attach import AttachOptions, attach
from flightrec.record.session import Interrupted

EPILOG = """\b
Examples:
  flightrec attach --iface eth1 --duration 60               # the AF_XDP sockets on eth1, for a minute
  flightrec attach --iface veth0 --netns lab --pid 4242     # until process 4242 exits, a trigger or Ctrl-C
  flightrec attach --iface eth1 -o attach-run -b 16384

\b
Exit codes: 0 clean (duration over, or the program exited); 1 a trigger
stopped tracing (a detection line, or the online race detector) or the
analysis found an anomaly; 2 bad input (one line says which) or another
recording running; 128+N stopped by signal N (trace saved, nothing left).
"""


@click.command("attach", epilog=EPILOG)
@click.option("--iface", required=True, help="The interface the program's AF_XDP sockets are bound to.")
@click.option("--netns", default=None, help="The interface's network namespace (a name under /run/netns).")
@click.option(
    "--pid",
    type=int,
    default=None,
    help="The program's pid: checked to hold AF_XDP sockets, their mode and XDP_STATISTICS saved "
    "at the start and the end, and its exit ends the capture.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to record (default: until a trigger, the program's exit or Ctrl-C).",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("flightrec-attach"),
    show_default=True,
    help="Folder for trace.txt and meta.json.",
)
@options.buffer_kb
@click.option(
    "--kernel-events",
    type=click.Choice(("auto", "kprobes", "bpf")),
    default="auto",
    show_default=True,
    help="kprobes (every socket) or bpf (scoped to --iface, with the online race detector).",
)
def attach_cmd(
    iface: str,
    netns: Optional[str],
    pid: Optional[int],
    duration: Optional[float],
    out_dir: Path,
    buffer_kb: int,
    kernel_events: str,
) -> None:
    """Record an AF_XDP program that is already running, without touching it.

    A private tracefs instance, the kernel's AF_XDP events (the BPF backend
    only for sockets bound to --iface), the triggers that stop tracing on an
    application's detection line or on the BPF backend's online race line,
    then the wait. The trace is saved and analyzed like a recording's. Markers
    the program writes go where it writes them, not into attach's private
    instance: the analysis runs on the kernel's events and says which checks
    had nothing to read.
    """
    opts = AttachOptions(
        iface=iface,
        out_dir=out_dir,
        netns=netns,
        pid=pid,
        duration=duration,
        buffer_kb=buffer_kb,
        kernel_events=kernel_events,
    )
    view = PlainView()
    try:
        result = attach(opts, view)
    except Interrupted as sig:
        click.echo(f"flightrec: interrupted by {sig}", err=True)
        sys.exit(128 + sig.signum)
    except KeyboardInterrupt:
        click.echo("flightrec: interrupted by SIGINT", err=True)
        sys.exit(128 + signal.SIGINT)
    click.echo(f"{result.outcome}: {result.message}")
    code = result.exit_code
    if result.trace_path is not None:
        from flightrec.report.summary import summarize

        click.echo(f"saved {result.trace_path} and {result.out_dir / 'meta.json'}")
        summary = summarize(result.trace_path, result.out_dir)
        click.echo(summary.line)
        click.echo(f"details: flightrec analyze {result.trace_path}")
        code = summary.exit_code(code)
    sys.exit(code)
