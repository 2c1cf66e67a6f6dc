"""`flightrec report`: a saved trace as one self-contained HTML page."""

from __future__ import annotations

import click


@click.command(
    "report",
    epilog="""\b
Examples:
  flightrec report fixtures/seed-poison.txt -o poison.html
  flightrec report flightrec-out/trace.txt -o report.html && xdg-open report.html
  flightrec report --around 16 trace.txt -o report.html
  trace-cmd report | flightrec report - -o report.html

\b
Exit codes: 0 written (also when the trace holds anomalies), 2 bad input or usage.
""",
)
@click.argument("trace", metavar="TRACE")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write (- for standard output).",
)
@click.option(
    "--around",
    default=8,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Events of context per CPU around each piece of evidence.",
)
def report(trace: str, output: str, around: int) -> None:
    """Write the analysis of TRACE as one self-contained HTML page.

    TRACE is what `flightrec analyze` reads (ftrace or trace-cmd text, - for
    standard input). The page starts with the verdict, then for each anomaly
    the evidence lines, the events around it drawn side by side per CPU
    (columns CPU 2 | CPU 0 ..., rows in time order, evidence highlighted) and
    the recent life of the descriptors involved, then the trace's statistics.
    It needs no network and no script: open it in any browser. The verdict is
    printed on standard error.
    """
    from flightrec.analysis import analyze_path
    from flightrec.report.html import write_report

    result = analyze_path(trace)
    write_report(result, output, around=around)
    where = "standard output" if output == "-" else output
    n = len(result.anomalies)
    if n:
        first = result.anomalies[0]
        what = f"{n} anomal{'y' if n == 1 else 'ies'}, first: {first.kind} at line {first.line}"
    else:
        what = "no anomaly"
    click.echo(f"{where}: {result.verdict.upper()} — {what}", err=True)
