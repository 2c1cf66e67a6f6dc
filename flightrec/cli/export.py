"""`flightrec export`: a saved trace in another tool's format (Perfetto; flagged packets as pcapng)."""

from __future__ import annotations

import click

from flightrec.cli.options import no_gc, small_pages


@click.group(
    "export",
    epilog="""\b
Examples:
  flightrec export perfetto fixtures/seed-fill-order.txt -o seed.pftrace
  flightrec export perfetto flightrec-out/trace.txt -o trace.perfetto.json   # JSON, for chrome://tracing
  trace-cmd report | flightrec export perfetto - -o trace.pftrace
  flightrec export pcap flightrec-out -o flagged.pcapng
""",
)
def export() -> None:
    """Write a saved trace (or a recording's flagged packets) in another tool's format."""


@export.command(
    "perfetto",
    epilog="""\b
Examples:
  flightrec export perfetto fixtures/seed-fill-order.txt -o seed.pftrace
  flightrec export perfetto --no-threads big-trace.txt -o big.pftrace
  flightrec simulate --fault publish-race | flightrec export perfetto - -o race.json
  flightrec export perfetto --format json trace.txt -o - | jq '.traceEvents | length'

\b
Then open the file in https://ui.perfetto.dev (Open trace file; a JSON file
also in chrome://tracing); click a slice and follow its flow arrows through
the descriptor's trip.

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
    help="The file to write (- for standard output).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["proto", "json"]),
    default=None,
    help="Perfetto's protobuf trace (about a third of the JSON's size, and faster to write and to load) or "
    "Chrome's trace-event JSON (chrome://tracing reads only that).  [default: json when OUTPUT ends in .json, "
    "else proto]",
)
@click.option(
    "--threads/--no-threads",
    default=True,
    show_default=True,
    help="Also draw one track per application thread (its markers and notes again).",
)
def perfetto_cmd(trace: str, output: str, fmt: str, threads: bool) -> None:
    """Write TRACE for the Perfetto UI: its protobuf format, or trace-event JSON.

    TRACE is what `flightrec analyze` reads (ftrace or trace-cmd text, - for
    standard input). One track per CPU ("CPU N") holds every kernel probe hit,
    marker and other event as a slice with its fields as args; flow arrows
    link each descriptor's events in order (FILL, reserve, xsk_flush, RX, TX,
    tx_get_data, COMP, and on to its next FILL insertion), one flow per trip;
    anomalies are instant events carrying the verdict, each slice's `line`
    is its line in TRACE. Timestamps count from the trace's first event (ns
    in protobuf, µs in JSON).
    """
    from flightrec.analysis import analyze_path

    if fmt is None:
        fmt = "json" if output.endswith(".json") else "proto"
    if fmt == "json":
        from flightrec.report.perfetto import write_trace_file
    else:
        from flightrec.report.pftrace import write_trace_file

    with no_gc(), small_pages():  # as analyze: the export makes fewer objects still
        result = analyze_path(trace)
        stats = write_trace_file(result, output, threads=threads)
    where = "standard output" if output == "-" else output
    verdict = result.verdict.upper()
    click.echo(
        f"{where}: {stats.events} trace events, {stats.flows} descriptor flows, "
        f"{stats.cpus} CPU tracks; verdict {verdict}"
        + (
            f" ({len(result.anomalies)} anomal{'y' if len(result.anomalies) == 1 else 'ies'})"
            if result.anomalies
            else ""
        ),
        err=True,
    )


@export.command(
    "pcap",
    epilog="""\b
Examples:
  flightrec record --inject short-len -o run1; flightrec export pcap run1 -o run1.pcapng
  flightrec export pcap run1/logs/flagged.jsonl -o flagged.pcapng
  tshark -r flagged.pcapng -V | grep -A1 'Packet comments'

\b
Exit codes: 0 written (also with no flagged packet: an empty capture), 2 bad input or usage.
""",
)
@click.argument("source", metavar="DIR|FLAGGED")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The pcapng file to write.")
def pcap_cmd(source: str, output: str) -> None:
    """Write the packets the forwarder flagged as pcapng, for Wireshark.

    SOURCE is a `flightrec record` folder (it reads DIR/logs/flagged.jsonl)
    or the forwarder's --flagged file itself. Each packet (Ethernet, up to
    2048 bytes, its length the descriptor's len) carries a packet comment
    with the descriptor address, the socket, the reason and the detection
    line. `flightrec record` writes the same as DIR/flagged.pcap.
    """
    from flightrec.report.pcap import flagged_source, read_flagged, write_pcapng

    packets = read_flagged(flagged_source(source))
    count = write_pcapng(packets, output)
    kinds = sorted({p.kind for p in packets})
    click.echo(
        f"{output}: {count} flagged packet{'' if count == 1 else 's'}" + (f" ({', '.join(kinds)})" if kinds else ""),
        err=True,
    )
