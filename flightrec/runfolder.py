"""The run folder: the contract between a recording and everything that reads it.

`flightrec record` (and `flightrec vm record`) write one folder::

    trace.txt             the saved ftrace trace
    meta.json             what the recording said about itself (written here only)
    analysis.json         `flightrec analyze --json` of the trace
    report.html           the HTML report
    trace.pftrace         the Perfetto export (its protobuf format)
    forwarder-stats.json  the forwarder's ring snapshot and XDP_STATISTICS at exit
    flagged.pcap          the packets the forwarder flagged (pcapng)
    logs/                 the helpers' logs (forwarder, xsk_trace, iperf3, flagged.jsonl)
    widen.json            the race-window widener's note (vm record --widen)
    vm.json, vm-console.log, vm-output.log, vm-console-boot<N>.log   a VM run's own

This module names those files, is the one writer of meta.json (whole-file
writes and updates, each through a temporary file renamed over the old one,
so a reader or a crash never sees half a file), says what a new run removes
before it starts, and reads a folder back.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, TypeVar

from flightrec.errors import FlightrecError

T = TypeVar("T")

TRACE = "trace.txt"
META = "meta.json"
ANALYSIS = "analysis.json"
REPORT = "report.html"
PERFETTO = "trace.pftrace"
FORWARDER_STATS = "forwarder-stats.json"
PCAP = "flagged.pcap"
LOGS = "logs"
FLAGGED = "flagged.jsonl"  # the forwarder's own file, in logs/
WIDEN = "widen.json"
VM = "vm.json"
VM_CONSOLE = "vm-console.log"
VM_OUTPUT = "vm-output.log"
VM_BOOT_CONSOLES = "vm-console-boot*.log"

# What a recording's result is made of: a new recording removes them first, so
# that nothing of an earlier run in the same folder passes for this one's.
RECORD_OUTPUTS = (TRACE, META, FORWARDER_STATS, ANALYSIS, REPORT, PERFETTO, PCAP, f"{LOGS}/{FLAGGED}", WIDEN)
# A VM run also copies the guest's folder back over the host's (a merge).
VM_OUTPUTS = (*RECORD_OUTPUTS, VM, VM_CONSOLE, VM_OUTPUT)


def replaced_by_record(out_dir: Path) -> list[Path]:
    """The files in ``out_dir`` a new `flightrec record` removes before it starts."""
    return [out_dir / name for name in RECORD_OUTPUTS]


def replaced_by_vm_record(out_dir: Path) -> list[Path]:
    """The files in ``out_dir`` a new `flightrec vm record` removes before it starts."""
    boots = sorted(out_dir.glob(VM_BOOT_CONSOLES)) if out_dir.is_dir() else []
    return [*(out_dir / name for name in VM_OUTPUTS), *boots]


def clear(paths: list[Path]) -> None:
    """Remove ``paths`` (missing ones are fine).

    :raises FlightrecError: one cannot be removed.
    """
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise FlightrecError(f"cannot clear {path}: {e.strerror}") from None


def write_atomically(path: str, write: Callable[[BinaryIO], T]) -> T:
    """Write through a temporary file beside `path`, renamed into place: a
    failed export never leaves half a file where a good one was.

    A symbolic link is written through (its target is replaced, the link
    stays). What is not a regular file (/dev/null, /dev/stdout, a FIFO) is
    written straight into: a rename would put a regular file in its place."""
    if os.path.isdir(path):
        raise FlightrecError(f"{path}: is a directory; give a file name with -o")
    target = os.path.realpath(path)
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except OSError:  # not there yet (or unreadable: the write says why)
        special = False
    if special:
        try:
            with open(target, "wb") as f:
                return write(f)
        except OSError as e:
            raise FlightrecError(f"{path}: cannot write: {e.strerror}") from None
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".flightrec-", dir=directory)
    except FileNotFoundError:
        raise FlightrecError(f"{path}: directory {directory} does not exist") from None
    except OSError as e:
        raise FlightrecError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with open(fd, "wb", buffering=1 << 20) as f:
            stats = write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a plain open() would give
        os.replace(tmp, target)
    except OSError as e:
        os.unlink(tmp)
        raise FlightrecError(f"{path}: cannot write: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return stats


def write_json(out_dir: Path, name: str, data: Any) -> Path:
    """Write ``data`` as DIR/name, whole or not at all.

    :raises FlightrecError: the folder is not writable.
    """
    path = out_dir / name
    text = (json.dumps(data, indent=2, default=str) + "\n").encode()
    write_atomically(str(path), lambda f: f.write(text))
    return path


# meta.json's trace.markers: the forwarder's marker lines, "batched" (one per ring
# operation) or "per-descriptor" (docs/markers.md); recordings made before
# batched lines existed have none and are per-descriptor.
MARKERS_KEY = "markers"


def marker_form(meta: Optional[dict]) -> str:
    """The marker form a recording's forwarder wrote, by its meta.json."""
    trace = meta.get("trace") if isinstance(meta, dict) else None
    form = trace.get(MARKERS_KEY) if isinstance(trace, dict) else None
    return form if isinstance(form, str) else "per-descriptor"


def write_meta(out_dir: Path, meta: dict) -> Path:
    """Write DIR/meta.json (the recording's own account), atomically."""
    return write_json(out_dir, META, meta)


def update_meta(out_dir: Path, change: Callable[[dict], dict]) -> Optional[dict]:
    """Rewrite DIR/meta.json as ``change(meta)``; None (nothing written) when there is
    no readable meta.json: a note added after the recording never invents one.

    :raises FlightrecError: the folder is not writable.
    """
    meta = read_meta(out_dir)
    if meta is None:
        return None
    new = change(meta)
    write_meta(out_dir, new)
    return new


def read_json(path: Path) -> Optional[dict]:
    """A JSON object from ``path``, or None when there is none or it is not an object
    (a side file never stops an analysis)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_meta(out_dir: Path) -> Optional[dict]:
    """DIR/meta.json, or None."""
    return read_json(out_dir / META)


def meta_path_beside(trace: str) -> Optional[Path]:
    """DIR/meta.json for the trace DIR/NAME (None for standard input)."""
    if trace in ("-", "<stdin>"):
        return None
    return Path(trace).parent / META


def meta_beside(trace: str) -> Optional[dict]:
    """The meta.json beside the trace ``trace`` (a path, or - for standard input), or None."""
    path = meta_path_beside(trace)
    return read_json(path) if path is not None else None


@dataclass(frozen=True)
class RunFolder:
    """A run folder read back: each part None when absent or unreadable."""

    path: Path
    trace: Optional[Path]
    meta: Optional[dict]
    analysis: Optional[dict]
    vm: Optional[dict]

    def file(self, name: str) -> Optional[Path]:
        """DIR/name when it exists."""
        path = self.path / name
        return path if path.exists() else None


def read(out_dir: Path) -> RunFolder:
    """Read the run folder ``out_dir`` back.

    :raises FlightrecError: ``out_dir`` is not a folder.
    """
    if not out_dir.is_dir():
        raise FlightrecError(f"{out_dir} is not a run folder (no such directory)")
    trace = out_dir / TRACE
    return RunFolder(
        out_dir,
        trace if trace.is_file() else None,
        read_meta(out_dir),
        read_json(out_dir / ANALYSIS),
        read_json(out_dir / VM),
    )
