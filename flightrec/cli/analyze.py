"""`flightrec analyze`: explain a saved trace."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Optional

import click

from flightrec.analysis import Result, analyze_path
from flightrec.cli.options import no_gc
from flightrec.errors import FlightrecError

if TYPE_CHECKING:
    from rich.console import Console


def _addr(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value, 16)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a hex address (e.g. 0x16ce900)") from None


@click.command(
    epilog="""\b
Examples:
  flightrec analyze fixtures/seed-poison.txt
  flightrec analyze --json flightrec-out/trace.txt
  flightrec analyze --descriptor 0x16ce900 fixtures/seed-fill-order.txt
  flightrec analyze run1/trace.txt run2/trace.txt     # one report each, then a summary
  trace-cmd report | flightrec analyze -

\b
Exit codes: 0 no anomaly, 1 anomaly found, 2 bad input or usage.
""",
)
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option(
    "--json", "as_json", is_flag=True, help='Print one JSON object (a list under "traces" for several files).'
)
@click.option(
    "--descriptor", callback=_addr, metavar="ADDR", help="Print this descriptor's whole life instead of the anomalies."
)
@click.option(
    "--around",
    default=8,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Events of context around each piece of evidence.",
)
@click.option("--stats", "cpu_stats", is_flag=True, help="Also print per-CPU statistics.")
def analyze(traces: tuple[str, ...], as_json: bool, descriptor: Optional[int], around: int, cpu_stats: bool) -> None:
    """Explain a saved ftrace trace of an AF_XDP program.

    TRACE is the text of /sys/kernel/tracing/trace (or of an instance's trace
    file), or the output of `trace-cmd report`, or - for standard input. The
    trace holds the application's descriptor transitions written to
    trace_marker (grammar: docs/markers.md) and, where the kernel allowed, the
    kernel's reserve (__xsk_rcv_zc), flush (xsk_flush) and tx
    (xp_raw_get_data) probe events.

    flightrec merges the per-CPU streams into one timeline, follows every
    descriptor through FILL, RX, TX and COMPLETION per socket, and checks the
    FILL order, the state machine, the poison, duplicate insertions and the
    cross-CPU publish race. Each anomaly gets a verdict, kernel, application
    or undetermined (naming the events the trace lacks), with the lines that
    prove it. The report starts with the verdict.
    """
    with no_gc():
        _analyze(traces, as_json, descriptor, around, cpu_stats)


def _analyze(traces: tuple[str, ...], as_json: bool, descriptor: Optional[int], around: int, cpu_stats: bool) -> None:
    console = None if as_json else _console()
    results: list[Result] = []
    failed = 0
    for path in traces:
        try:
            result = analyze_path(path)
        except FlightrecError as e:
            click.echo(f"flightrec: {e}", err=True)
            failed += 1
            continue
        results.append(result)
        if not as_json:
            from flightrec.report.console import print_cpu_stats, print_result

            print_result(console, result, around=around, descriptor=descriptor)
            if cpu_stats:
                print_cpu_stats(console, result)

    if as_json:
        from flightrec.report.summary import analysis_document

        docs = [analysis_document(r) for r in results]
        if descriptor is not None:
            for doc, r in zip(docs, results):
                doc["descriptor"] = _life_json(r, descriptor)
        out = docs[0] if len(traces) == 1 and docs else {"traces": docs, "summary": _summary(results, failed)}
        if docs or len(traces) > 1:
            # Indented for a terminal; one line for a pipe or file: json.dumps without indent
            # runs the C encoder, ~10x faster on a trace with many anomalies.
            sys.stdout.write(json.dumps(out, indent=1 if sys.stdout.isatty() else None) + "\n")
    elif len(traces) > 1:
        s = _summary(results, failed)
        console.print(
            f"[bold]summary:[/bold] {s['traces']} traces, {s['clean']} clean, "
            f"{s['with_anomalies']} with anomalies ({s['verdicts']}), {s['unreadable']} unreadable"
        )
    if failed:
        sys.exit(2)
    sys.exit(1 if any(r.anomalies for r in results) else 0)


def _console() -> Console:
    """The text report's console; rich is imported here, not for --json (~20 ms)."""
    from rich.console import Console

    # Piped into a CI log, a terminal's 80 columns would fold every trace line.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _summary(results: list[Result], failed: int) -> dict:
    verdicts: dict[str, int] = {}
    for r in results:
        if r.anomalies:
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    return {
        "traces": len(results) + failed,
        "clean": sum(1 for r in results if not r.anomalies),
        "with_anomalies": sum(1 for r in results if r.anomalies),
        "unreadable": failed,
        "verdicts": verdicts,
    }


def _life_json(r: Result, addr: int) -> list[dict]:
    from flightrec.model.lives import life
    from flightrec.report.console import summary

    tl = r.timeline
    return [
        {"line": tl.line[i], "ts": tl.ts[i], "cpu": tl.cpu[i], "event": summary(tl, i)} for i in life(tl, addr).index
    ]
