"""The guest's command line in `flightrec vm record` (runs inside the VM, never on the host)::

    python3 -m flightrec.cli.guest record [--probes FILE] -- [record options]

``--probes`` defaults to ``$FLIGHTREC_VM_JOB/probes.json`` when the host left one.
The options are `flightrec record`'s, parsed by its own command; the recording
goes into ``$FLIGHTREC_VM_OUT`` with plain progress lines. flightrec/vm/guest.py
holds the guest's library half (the host's stop request, the probe definitions).
Exit codes are the recording's: 0 clean, 1 anomaly, 2 error, 128+N stopped by signal N.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

from flightrec.cli.record import PlainView, options_from_params, parse_record_args
from flightrec.errors import FlightrecError
from flightrec.record.session import Interrupted, RecordOptions
from flightrec.record.session import record as run_record
from flightrec.vm.guest import load_prepared, offer_stack_dump, watch_for_stop

EXIT_ERROR = 2


def record_options(args: list[str], out_dir: Path, prepared: Optional[object] = None) -> RecordOptions:
    """``flightrec record`` options, parsed with record's own click command (one source of truth).

    :raises FlightrecError: bad options (the host checks them before booting, too).
    """
    return options_from_params(parse_record_args(list(args) + ["-o", str(out_dir)]).params, prepared)


def record_main(probes_json: Optional[Path], args: list[str]) -> int:
    out = Path(os.environ.get("FLIGHTREC_VM_OUT", "flightrec-out"))
    if os.environ.get("FLIGHTREC_VM_JOB"):
        watch_for_stop(Path(os.environ["FLIGHTREC_VM_JOB"]))
        offer_stack_dump()
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
        print("usage: python3 -m flightrec.cli.guest record [--probes FILE] [--] [record options]", file=sys.stderr)
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
