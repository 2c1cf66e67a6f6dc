"""`flightrec simulate`: write a simulated AF_XDP trace and its ground truth."""

from __future__ import annotations

import sys
from typing import Optional

import click

from flightrec.parse.format import MARKER_FORMS
from flightrec.simulate import FAULTS, FORMATS, PROBES, SimConfig, simulate, truth_json


@click.command(
    "simulate",
    epilog="""\b
Examples:
  flightrec simulate --seed 7 --cpus 4 -o clean.txt
  flightrec simulate --fault publish-race --cpus 3 -o race.txt --truth race.json
  flightrec simulate --fault double-fill --wrap --format trace-cmd -o dup.txt
  flightrec simulate --fault publish-race --tight --cpus 8 -o late.txt --truth late.json
  flightrec simulate --fault stale-slot --probes none --loss | flightrec analyze -
  flightrec simulate --fault reuse-in-flight --cpus 2 | flightrec analyze -   # refilled before its completion
  flightrec simulate --lines 1000000 -o big.txt 2>/dev/null
  flightrec simulate --fault double-fill --markers batched -o dup-batched.txt --truth dup-batched.json
""",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed and options, same bytes.")
@click.option("--cpus", type=click.IntRange(2, 8), default=4, show_default=True, help="CPUs in the simulated machine.")
@click.option(
    "--packets",
    type=click.IntRange(50, None),
    default=2000,
    show_default=True,
    help="Packets the kernel delivers, over all sockets (about 7 trace lines each).",
)
@click.option(
    "--lines",
    type=click.IntRange(400, None),
    default=None,
    help="Aim for about this many trace lines instead of giving --packets.",
)
@click.option(
    "--pairs",
    type=click.IntRange(0, 3),
    default=0,
    show_default=True,
    help="Socket pairs (rx socket forwarding to a tx socket); 0 draws 1..3 from the seed.",
)
@click.option(
    "--fault",
    type=click.Choice(FAULTS),
    default="none",
    show_default=True,
    help="What goes wrong near the end; the application then notices and stops tracing.",
)
@click.option("--wrap", is_flag=True, help="Per-CPU ring buffers overflowed: each CPU keeps only its newest events.")
@click.option(
    "--tight",
    is_flag=True,
    help="Each CPU's buffer begins a few of its events before the fault, the racing CPU's exactly at "
    "its reserve (the end of a long recording); the truth says what the surviving events prove.",
)
@click.option("--loss", is_flag=True, help="One CPU loses a run of events (inside the fault's causal window).")
@click.option(
    "--probes",
    type=click.Choice(PROBES),
    default="all",
    show_default=True,
    help="Kernel events present: all, no xsk_flush probe, or none (markers only).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="ftrace",
    show_default=True,
    help="Text of /sys/kernel/tracing/trace, or of `trace-cmd report`.",
)
@click.option(
    "--markers",
    type=click.Choice(MARKER_FORMS),
    default="per-descriptor",
    show_default=True,
    help="The application's marker lines: one per descriptor, or one per ring operation (docs/markers.md "
    '"Batched lines"); the same run, events and ground truth (its line numbers are the text\'s).',
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the trace here instead of standard output.",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the ground truth JSON here instead of standard error.",
)
def simulate_cmd(
    seed: int,
    cpus: int,
    packets: int,
    lines: Optional[int],
    pairs: int,
    fault: str,
    wrap: bool,
    tight: bool,
    loss: bool,
    probes: str,
    fmt: str,
    markers: str,
    output: Optional[str],
    truth: Optional[str],
) -> None:
    """Write a simulated AF_XDP forwarder trace with a known answer.

    The kernel side (NAPI softirqs reserving FILL descriptors into RX slots on
    several CPUs, xsk_flush publishing them, transmits) and the application
    side (a marker per descriptor transition, or per ring operation with
    --markers batched, as docs/markers.md says, a
    FILL-order deque, poisoned RX slots, a detection line on its first
    anomaly) are simulated together and rendered as ftrace text. FAULT plants
    one root cause; the ground truth (its kind, verdict, addresses, CPUs,
    the line numbers that prove it) goes to standard error as JSON, or to
    --truth. Use it to test `flightrec analyze` on traces it has never seen.
    """
    if lines is not None:
        packets = max(50, int(lines / 7.3))
    cfg = SimConfig(
        seed=seed,
        cpus=cpus,
        packets=packets,
        fault=fault,
        wrap=wrap,
        loss=loss,
        probes=probes,
        fmt=fmt,
        pairs=pairs,
        tight=tight,
        markers=markers,
    )
    try:
        sim = simulate(cfg)
        if output is None:
            sys.stdout.write(sim.text)
        else:
            with open(output, "w", encoding="utf-8") as f:
                f.write(sim.text)
        data = truth_json(sim.truth) + "\n"
        if truth is None:
            sys.stderr.write(data)
        else:
            with open(truth, "w", encoding="utf-8") as f:
                f.write(data)
    except OSError as err:
        click.echo(f"flightrec: cannot write {err.filename}: {err.strerror}", err=True)
        sys.exit(2)
