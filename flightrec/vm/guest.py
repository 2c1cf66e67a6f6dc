"""The guest half of `flightrec vm record`: runs inside the VM, never on the host.

    python3 -m flightrec.vm.guest record [--probes FILE] -- [record options]

(``--probes`` defaults to ``$FLIGHTREC_VM_JOB/probes.json`` when the host left one.)

The kernel probes were resolved on the host (2.5 s there, ~40 s under TCG):
``probes.json`` holds the kprobe_events definitions, the kernel release and
the debug vmlinux's build ID. This module checks that the running kernel is
that kernel, hands the definitions to the recording (RecordOptions.
probe_definitions, which flightrec.probes.install takes as `prepared`) and runs
the ordinary recording (``flightrec.record.session.record``) into
``$FLIGHTREC_VM_OUT``. The analysis is left to the host (numpy under TCG is
slow). Exit codes are the recording's: 0 clean, 1 anomaly, 2 error, 128+N
stopped by signal N (trace saved).

When the host's user presses Ctrl-C, the host writes ``$FLIGHTREC_VM_JOB/stop``
(flightrec/vm/runner.py): this process then sends itself that signal, and the
recording stops and saves its trace as it would on the host.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from flightrec.errors import FlightrecError

EXIT_ERROR = 2
STOP_FILE = "stop"  # in the job folder: the host asks the recording to stop and save (flightrec.vm.runner)
STOP_POLL_S = 0.2


def watch_for_stop(job: Path) -> threading.Thread:
    """Once the host has written job/stop, send this process the signal it names
    (SIGINT, SIGTERM or SIGHUP; SIGINT for anything else), so the exit code
    128+N names the signal the host got."""

    def watch() -> None:
        while True:
            try:
                name = (job / STOP_FILE).read_text().strip()
            except OSError:
                time.sleep(STOP_POLL_S)
                continue
            sig = signal.Signals[name] if name in ("SIGINT", "SIGTERM", "SIGHUP") else signal.SIGINT
            print(f"flightrec: the host asked to stop ({sig.name}); saving the trace", flush=True)
            os.kill(os.getpid(), sig)
            return

    thread = threading.Thread(target=watch, name="stop-watch", daemon=True)
    thread.start()
    return thread


def load_prepared(path: Path) -> "object":
    """The host's probes.json as a ``flightrec.probes.Prepared``, after checking the kernel.

    :raises FlightrecError: unreadable, or made for another kernel (offsets would be wrong).
    """
    from flightrec import probes

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlightrecError(f"cannot read the host's probe definitions {path}: {e}") from None
    release = os.uname().release
    if data.get("release") and data["release"] != release:
        raise FlightrecError(f"probe definitions are for {data['release']}, the guest runs {release}")
    running = probes.running_build_id()
    if data.get("build_id") and running and data["build_id"] != running:
        raise FlightrecError(f"probe definitions come from a vmlinux with build ID {data['build_id'][:12]}, "
                             f"the guest kernel's is {running[:12]}: wrong -dbg package")
    defs = tuple(probes.Definition(**d) for d in data.get("definitions", []))
    return probes.Prepared(Path(data["vmlinux"]) if data.get("vmlinux") else None, (), defs,
                           tuple(data.get("problems", [])))


def record_options(args: list[str], out_dir: Path, prepared: Optional[object] = None) -> "object":
    """Parse ``flightrec record`` options with record's own click command (one source of truth).

    :raises FlightrecError: bad options (the host checks them before booting, too).
    """
    import click

    from flightrec.cli.record import record_cmd
    from flightrec.record.session import RecordOptions

    try:
        ctx = record_cmd.make_context("record", list(args) + ["-o", str(out_dir)])
    except click.UsageError as e:
        raise FlightrecError(f"record options: {e.format_message()}") from None
    params = ctx.params
    return RecordOptions(out_dir=out_dir, duration=params["duration"], queues=params["queues"],
                         buffer_kb=params["buffer_kb"], inject=params["inject"],
                         inject_after=params["inject_after"], kernel_events=params["kernel_events"],
                         probe_definitions=prepared, mode=params["mode"], nic=params["nic"])


def record_main(probes_json: Optional[Path], args: list[str]) -> int:
    from flightrec.cli.record import PlainView
    from flightrec.record.session import Interrupted
    from flightrec.record.session import record as run_record

    out = Path(os.environ.get("FLIGHTREC_VM_OUT", "flightrec-out"))
    if os.environ.get("FLIGHTREC_VM_JOB"):
        watch_for_stop(Path(os.environ["FLIGHTREC_VM_JOB"]))
    prepared = load_prepared(probes_json) if probes_json is not None else None
    opts = record_options(args, out, prepared)
    try:
        result = run_record(opts, PlainView())
    except Interrupted as sig:
        print(f"flightrec: interrupted by {sig}", file=sys.stderr)
        return 128 + sig.signum
    print(f"{result.outcome}: {result.message}")
    if result.trace_path is not None and result.outcome != "error":
        print(f"saved {result.trace_path.name} and meta.json in the guest's output folder")
    if result.exit_code not in (0, 1):
        print(f"flightrec: {result.message}", file=sys.stderr, flush=True)
    return result.exit_code


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "record":
        print("usage: python3 -m flightrec.vm.guest record [--probes FILE] [--] [record options]", file=sys.stderr)
        return EXIT_ERROR
    argv = argv[1:]
    probes_json = None
    if argv[:1] == ["--probes"] and len(argv) >= 2:
        probes_json, argv = Path(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if probes_json is None and os.environ.get("FLIGHTREC_VM_JOB"):
        candidate = Path(os.environ["FLIGHTREC_VM_JOB"]) / "probes.json"
        probes_json = candidate if candidate.is_file() else None
    try:
        return record_main(probes_json, argv)
    except KeyboardInterrupt:  # stopped before the recording could take the signal: nothing to save
        print("flightrec: interrupted before the recording started", file=sys.stderr)
        return 128 + signal.SIGINT
    except FlightrecError as e:
        print(f"flightrec: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - Python's own exit 1 would read as "anomaly" on the host
        traceback.print_exc()
        print(f"flightrec: internal error in the guest: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
