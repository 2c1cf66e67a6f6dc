"""`flightrec markers`: where the marker library is, for a program's build."""

from __future__ import annotations

import sys

import click

from flightrec.locate import INCLUDE_DIR

HEADER = INCLUDE_DIR / "flightrec" / "xsk_markers.h"

EPILOG = """\b
Examples:
  cc $(flightrec markers --cflags) -o myfwd myfwd.c $(pkg-config --libs libxdp libbpf)
  flightrec markers --header                  # the header's path, to read it
  python3 -c 'import flightrec.markers'       # the same for a Python program

\b
Exit codes: 0 printed; 2 the header is missing from this install.
"""


@click.command("markers", epilog=EPILOG)
@click.option(
    "--cflags",
    "what",
    flag_value="cflags",
    default=True,
    help="The compiler flags that find <flightrec/xsk_markers.h> (the default).",
)
@click.option("--header", "what", flag_value="header", help="The header file's path.")
def markers(what: str) -> None:
    """Say where the marker library's C header is.

    A C AF_XDP program includes <flightrec/xsk_markers.h> to write the
    transition lines of docs/markers.md (batched, no printf on the hot path),
    keep the FILL-order deque and the descriptor states, poison consumed RX
    slots, and on the first anomaly write the detection line and stop
    tracing. It is one header with nothing to link; flightrec's own forwarder
    is built on it. Under `flightrec record --app` it finds the trace
    instance through $FLIGHTREC_TRACEDIR. Python programs import
    flightrec.markers instead.
    """
    if not HEADER.is_file():
        click.echo(f"flightrec: markers: {HEADER} is missing from this install; reinstall flightrec", err=True)
        sys.exit(2)
    click.echo(f"-I{INCLUDE_DIR}" if what == "cflags" else str(HEADER))
