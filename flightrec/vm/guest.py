"""The guest half of `flightrec vm record`: runs inside the VM, never on the host.

Its command line is flightrec/cli/guest.py's::

    python3 -m flightrec.cli.guest record [--probes FILE] -- [record options]

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

import faulthandler
import json
import os
import signal
import threading
import time
from pathlib import Path

from flightrec.errors import FlightrecError
from flightrec.vm import initramfs

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


def offer_stack_dump(pids_file: Path = Path(initramfs.DUMP_PIDS), console: str = "/dev/console") -> bool:
    """Let the guest's init ask this process for its Python stacks when the guest hangs.

    On SIGUSR2 every thread's stack goes to the console, which does not pass through
    the job share the hang may be in; the init's stall watcher sends it
    (flightrec/vm/initramfs.py). False when there is no console to write to.
    """
    try:
        # Open for the process's life: faulthandler holds it and writes to its descriptor.
        out = open(console, "w")
    except OSError:
        return False
    faulthandler.register(signal.SIGUSR2, file=out, all_threads=True)
    pids_file.parent.mkdir(parents=True, exist_ok=True)
    with open(pids_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    return True


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
        raise FlightrecError(
            f"probe definitions come from a vmlinux with build ID {data['build_id'][:12]}, "
            f"the guest kernel's is {running[:12]}: wrong -dbg package"
        )
    defs = tuple(probes.Definition(**d) for d in data.get("definitions", []))
    return probes.Prepared(
        Path(data["vmlinux"]) if data.get("vmlinux") else None, (), defs, tuple(data.get("problems", []))
    )
