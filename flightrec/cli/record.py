"""`flightrec record`: run the forwarder under ftrace, stop on the first anomaly."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from flightrec import runfolder
from flightrec.cli import options
from flightrec.errors import FlightrecError
from flightrec.parse.format import MARKER_FORMS
from flightrec.record.afxdp import MODES as AFXDP_MODES
from flightrec.record.forwarder import INJECT_FAULTS
from flightrec.record.kernel_events import BACKENDS
from flightrec.record.session import Interrupted, LiveStats, Observer, RecordOptions, RecordResult
from flightrec.record.session import record as run_record
from flightrec.record.topology import NIC_KINDS

if TYPE_CHECKING:
    from flightrec.vm.record import RecordArgs


def describe_anomaly(data: dict) -> str:
    """One short line for a forwarder anomaly event (the whole event goes to meta.json)."""
    parts = [str(data.get(k)) for k in ("kind", "sock", "addr", "transition") if data.get(k)]
    if data.get("expected"):
        parts.append(f"expected {data['expected']}")
    if data.get("tracing_stopped"):
        parts.append("(tracing stopped by the forwarder)")
    return " ".join(parts) or json.dumps(data)[:200]


class PlainView(Observer):
    """One line per event, for CI logs and pipes."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        click.echo(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    def step(self, message: str) -> None:
        self._say(message)

    def warning(self, message: str) -> None:
        self._say(f"warning: {message}")

    def stats(self, live: LiveStats) -> None:
        self._say(
            f"forwarding {live.elapsed:5.1f}/{live.duration:g}s rx={list(live.rx)} tx={list(live.tx)} "
            f"drops={list(live.drops)} "
            f"markers={live.markers} buffer={live.buffer_fill:.0%}" + ("" if live.tracing_on else " tracing=off")
        )

    def anomaly(self, data: dict) -> None:
        self._say(f"ANOMALY {describe_anomaly(data)}")

    def error(self, message: str) -> None:
        self._say(f"ERROR {message}")


class LiveView(Observer):
    """A rich live panel: elapsed, packets per queue, markers, buffer fill."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.started = False

    def _ensure(self) -> None:
        if not self.started:
            self.live.start()
            self.started = True

    def close(self) -> None:
        if self.started:
            self.live.stop()
            self.started = False

    def step(self, message: str) -> None:
        self.console.print(f"[dim]•[/dim] {message}", highlight=False)

    def warning(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def anomaly(self, data: dict) -> None:
        self.console.print(f"[bold red]anomaly:[/bold red] {describe_anomaly(data)}", highlight=False)

    def error(self, message: str) -> None:
        self.console.print(f"[bold red]error:[/bold red] {message}", highlight=False)

    def stats(self, live: LiveStats) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        self._ensure()
        table = Table(title="flightrec record", expand=False, show_edge=True)
        table.add_column("socket")
        table.add_column("rx packets", justify="right")
        table.add_column("tx packets", justify="right")
        table.add_column("drops", justify="right")
        for i in range(max(len(live.rx), len(live.tx))):
            label = live.sockets[i] if i < len(live.sockets) else str(i)
            cells = [(v[i] if i < len(v) else 0) for v in (live.rx, live.tx, live.drops)]
            table.add_row(label, *(f"{c:,}" for c in cells))
        fill = Table.grid(padding=(0, 1))
        fill.add_row(
            ProgressBar(total=1.0, completed=live.buffer_fill, width=30),
            f"{live.buffer_fill:.0%}" + (" (wrapping: oldest events overwritten)" if live.buffer_fill >= 1.0 else ""),
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_row("elapsed", f"{live.elapsed:5.1f} s of {live.duration:g} s")
        grid.add_row("markers written", f"{live.markers:,}")
        grid.add_row("buffer fill", fill)
        grid.add_row("tracing", "[green]on[/green]" if live.tracing_on else "[red]off[/red]")
        outer = Table.grid()
        outer.add_row(grid)
        outer.add_row(table)
        self.live.update(outer)


EPILOG = """\b
Examples:
  flightrec record                              # 20 s clean run into ./flightrec-out
  flightrec record -o /tmp/run1 --duration 60 --queues 4 -b 8192
  flightrec record --inject double-fill --inject-after 5000
  flightrec record --inject short-len -o run1   # then: wireshark run1/flagged.pcap
  flightrec record --inject flip-payload        # corrupt a checked frame: the receiver catches it
  flightrec record --inject reuse-in-flight     # refill a frame before its COMPLETION entry
  flightrec record --plain --kernel-events none > record.log
  flightrec record --mode auto                  # says which AF_XDP mode veth gave (copy)
  flightrec record --app './my-fwd -i {outer} -o {inner} -q {queues}'   # your own AF_XDP program
  flightrec record --app '{forwarder} --outer -:{outer} --inner -:{inner} --trace-dir {tracedir}'
  flightrec record --markers per-descriptor     # a trace_marker line per descriptor, not per ring operation
  flightrec record --tx-twins                   # two sockets a queue share its COMPLETION ring

\b
Exit codes: 0 ran the whole duration with no anomaly; 1 anomaly caught by the
forwarder or found by the analysis of the saved trace; 2 usage or environment
error (one line says which), another recording running, a helper died or
nothing was forwarded (trace saved); 128+N stopped by signal N (trace saved,
everything removed).
"""


@click.command("record", epilog=EPILOG)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("flightrec-out"),
    show_default=True,
    help="Folder for trace.txt and meta.json.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Seconds of traffic through the forwarder.",
)
@click.option(
    "--queues",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Queues per veth (one XSK and one thread per queue and side).",
)
@options.buffer_kb
@click.option(
    "--inject",
    type=click.Choice(INJECT_FAULTS),
    default=None,
    help="Make the forwarder commit this application bug after some packets.",
)
@click.option(
    "--inject-after",
    type=click.IntRange(min=0),
    default=None,
    help="Packets forwarded before the injected bug (forwarder default if unset).",
)
@click.option(
    "--kernel-events",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Kernel events beside the markers: kprobes (perf probe sites), bpf (BTF tracepoint "
    "programs, where kprobes are refused) or none; auto takes the first that works.",
)
@click.option(
    "--mode",
    type=click.Choice(AFXDP_MODES),
    default="copy",
    show_default=True,
    help="AF_XDP bind: copy (XDP_COPY), zerocopy (XDP_ZEROCOPY: exit 2 with the reason where the "
    "driver cannot) or auto (zero-copy where it binds, else copy). Each socket's real mode is "
    "read back from the kernel and saved in meta.json (af_xdp).",
)
@click.option(
    "--nic",
    type=click.Choice(NIC_KINDS),
    default="veth",
    show_default=True,
    help="veth pairs, or virtio: the VM's own virtio-net NICs (set up by `flightrec vm record "
    "--nic virtio`; there is none on the host).",
)
@click.option(
    "--stamp-rate",
    type=click.IntRange(1, 1_000_000),
    default=RecordOptions.stamp_rate,
    show_default=True,
    metavar="PKT/S",
    help="Stamped, self-verifying UDP packets per second beside iperf3 (`vm record` asks for 2000: "
    "a TCG guest cannot send more without starving TCP).",
)
@click.option(
    "--app",
    metavar="'CMD ...'",
    default=None,
    help="Run your AF_XDP program in the forwarder's place, unmodified: in one namespace holding both "
    "forwarder-side interfaces, its command line's {outer}, {inner}, {queues}, {marker} (the "
    "instance's trace_marker), {tracedir}, {out}, {netns} and {forwarder} (flightrec's own) "
    "filled in, the same in its environment as FLIGHTREC_OUTER ... It loads its own XDP "
    "program; it is ready once one is attached and it holds an AF_XDP socket, and is stopped "
    "with SIGINT at the end.",
)
@click.option(
    "--app-ready-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=RecordOptions.app_ready_timeout,
    show_default=True,
    metavar="S",
    help="Seconds the --app program may take to get ready.",
)
@click.option(
    "--markers",
    type=click.Choice(MARKER_FORMS),
    default=MARKER_FORMS[0],
    show_default=True,
    help="The forwarder's trace_marker lines: batched (one per ring operation, all its descriptors "
    "in order) or per-descriptor (one per descriptor, as the post's); both analyze alike "
    "(docs/markers.md). Saved in meta.json (trace.markers).",
)
@click.option(
    "--tx-twins",
    is_flag=True,
    help="Give every forwarder queue a second, TX-only AF_XDP socket on another CPU, sharing the "
    "queue's FILL and COMPLETION rings, and send every other batch through it: two sockets "
    "reserving and publishing one COMPLETION ring (upstream 30f241fcf52a; c/README.md, TX twins).",
)
@click.option("--plain", is_flag=True, help="One line per event (the default when stdout is not a TTY).")
def record_cmd(
    out_dir: Path,
    duration: float,
    queues: int,
    buffer_kb: int,
    inject: Optional[str],
    inject_after: Optional[int],
    kernel_events: str,
    mode: str,
    nic: str,
    stamp_rate: int,
    app: Optional[str],
    app_ready_timeout: float,
    markers: str,
    tx_twins: bool,
    plain: bool,
) -> None:
    """Record an AF_XDP forwarder into a private ftrace instance.

    Builds client, server and forwarder namespaces joined by multi-queue veth,
    starts c/forwarder (one AF_XDP socket per queue, every descriptor
    transition written to trace_marker), drives iperf3 TCP and UDP through it,
    and stops tracing on the first anomaly. Saves DIR/trace.txt and
    DIR/meta.json (and DIR/flagged.pcap, pcapng, when the forwarder flagged
    packets), removes everything it created, then analyzes the trace.

    A helper that dies (the forwarder, c/xsk_trace, an iperf3) ends the
    recording at once: flightrec says what died and how, saves and analyzes
    the trace as on an anomaly, removes everything and exits 2 (an iperf3
    that gives up by itself while other traffic flows is only a warning). When the
    kernel-event loader died, meta.json's kernel_events.ended_at says when, on
    the trace clock: the trace has no kernel events after it. One recording
    at a time: a second one refuses at once with one line, exit 2.

    With --app your own program takes the forwarder's place (see --app); it
    writes markers only if it was made to, and without them the analysis has
    the kernel events alone.
    """
    opts = options_from_params(click.get_current_context().params)
    view: Observer = PlainView() if plain or not sys.stdout.isatty() else LiveView()
    try:
        result = run_record(opts, view)
    except FlightrecError as err:
        _close(view)
        click.echo(f"flightrec: {err}", err=True)
        sys.exit(2)
    except Interrupted as sig:  # arrived before anything was created
        _close(view)
        click.echo(f"flightrec: interrupted by {sig}", err=True)
        sys.exit(128 + sig.signum)
    except KeyboardInterrupt:  # Ctrl-C before the recording took over the signals (click would exit 1)
        _close(view)
        click.echo("flightrec: interrupted by SIGINT", err=True)
        sys.exit(128 + signal.SIGINT)
    _close(view)
    try:
        code = _report(result)
    except KeyboardInterrupt:  # during the analysis: the trace is saved, nothing is left
        click.echo(f"flightrec: interrupted by SIGINT during the analysis; {result.out_dir} holds the trace", err=True)
        sys.exit(128 + signal.SIGINT)
    sys.exit(code)


def options_from_params(params: dict, prepared: Optional[object] = None) -> RecordOptions:
    """RecordOptions from record's parsed options: here and in the VM's guest
    (flightrec/cli/guest.py), so that no option is dropped on the way."""
    return RecordOptions(
        out_dir=params["out_dir"],
        duration=params["duration"],
        queues=params["queues"],
        buffer_kb=params["buffer_kb"],
        inject=params["inject"],
        inject_after=params["inject_after"],
        kernel_events=params["kernel_events"],
        mode=params["mode"],
        nic=params["nic"],
        stamp_rate=params["stamp_rate"],
        app=params["app"],
        app_ready_timeout=params["app_ready_timeout"],
        markers=params["markers"],
        tx_twins=params["tx_twins"],
        probe_definitions=prepared,
    )


def _close(view: Observer) -> None:
    if isinstance(view, LiveView):
        view.close()


def _report(result: RecordResult) -> int:
    """Say how the recording ended and what its analysis found; return the exit code."""
    code = result.exit_code
    trace = result.meta.get("trace", {})
    click.echo(f"{result.outcome}: {result.message}")
    if result.trace_path is not None and result.outcome != "error":
        click.echo(
            f"saved {result.trace_path} ({trace.get('bytes', 0):,} bytes, "
            f"{trace.get('fill_to_rx_markers', 0):,} FILL -> RX markers) and {result.out_dir / runfolder.META}"
        )
        flagged = (result.meta.get("forwarder") or {}).get("flagged")
        if flagged:
            click.echo(f"flagged packets: {flagged['packets']} in {flagged['pcap']} (pcapng, for Wireshark)")
        from flightrec.report.summary import summarize  # pandas: only once there is a trace

        summary = summarize(result.trace_path, result.out_dir)
        click.echo(summary.line)
        click.echo(f"details: flightrec analyze {result.trace_path}")
        code = summary.exit_code(code)
        if code != result.exit_code:
            click.echo(f"exit {code}: the analysis found an anomaly the forwarder did not stop on")
    if result.exit_code not in (0, 1):
        click.echo(f"flightrec: {result.message}", err=True)
    return code


def parse_record_args(args: list[str]) -> "RecordArgs":
    """``args`` parsed by record's own command: what `vm record` checks before booting and the
    guest records with (flightrec.vm.record.ParseRecordArgs).

    :raises FlightrecError: an option record would refuse.
    """
    from click.core import ParameterSource

    from flightrec.vm.record import RecordArgs

    try:
        ctx = record_cmd.make_context("record", list(args))
    except click.UsageError as e:
        raise FlightrecError(f"record options: {e.format_message()}") from None
    given = frozenset(name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE)
    return RecordArgs(dict(ctx.params), given)
