"""The only code in flightrec that touches tracefs.

flightrec records into its own tracefs instance (``instances/flightrec-<pid>``)
so it never clobbers the global buffer or someone else's tracing.
:class:`TraceInstance` is a context manager: every value it writes is saved
first and written back, in reverse order, before the instance is removed.
Nothing here knows about AF_XDP.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from flightrec.errors import FlightrecError

# Where tracefs lives: the modern mount point first, the debugfs one second.
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
INSTANCE_PREFIX = "flightrec-"

# Clocks synchronised across CPUs, best first. The default `local` is not:
# per-CPU timestamps could then not be merged into one order.
SYNCED_CLOCKS = ("mono", "global")

# The application's detection line contains "expected" (docs/markers.md); the
# kernel stops the instance on it even if the application hangs right after.
DETECTION_GLOB = "*expected*"
PRINT_TRIGGER = Path("events/ftrace/print/trigger")


def _mounted_tracefs() -> list[Path]:
    """Mount points of tracefs, from /proc/mounts."""
    found = []
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "tracefs":
                    found.append(Path(fields[1].replace("\\040", " ")))
    except OSError:
        pass
    return found


def find_root() -> Optional[Path]:
    """The tracefs root if tracefs is mounted at a known place, else None."""
    mounted = _mounted_tracefs()
    for candidate in TRACEFS_CANDIDATES:
        if candidate in mounted and (candidate / "trace_marker").exists():
            return candidate
    # A mount we do not see in /proc/mounts (another mount namespace's view).
    for candidate in TRACEFS_CANDIDATES:
        if (candidate / "trace_marker").exists() and (candidate / "instances").is_dir():
            return candidate
    return None


def ensure_mounted() -> Path:
    """Return the tracefs root, mounting tracefs at /sys/kernel/tracing if needed.

    :raises FlightrecError: tracefs is not mounted and cannot be mounted.
    """
    root = find_root()
    if root is not None:
        return root
    target = TRACEFS_CANDIDATES[0]
    try:
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(target)],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise FlightrecError(
            f"tracefs is not mounted and mounting it failed ({err}); "
            f"try `mount -t tracefs nodev {target}` as root (kernel needs CONFIG_TRACING)"
        ) from err
    root = find_root()
    if root is None:
        raise FlightrecError(f"tracefs mounted at {target} but has no trace_marker")
    return root


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _write(path: Path, value: str) -> None:
    """Write one value the way `echo value > path` does, raising a clear error."""
    try:
        with open(path, "w", encoding="utf-8") as fd:
            fd.write(value + "\n")
    except OSError as err:
        raise FlightrecError(f"cannot write {value!r} to {path}: {err.strerror or err}") from err


# -- control files whose errors the caller sorts out (kprobe_events, an event's
# enable): the kernel's refusal comes back as the OSError itself.


def read_control(path: Path) -> str:
    return path.read_text()


def write_control(path: Path, value: str) -> None:
    """``echo value > path``; the OSError passes through."""
    path.write_text(value + "\n")


def append_line(path: Path, text: str) -> None:
    """One write(2) per line, as tracefs wants; the kernel's error comes back as OSError.

    Always append: opening kprobe_events with O_TRUNC deletes every kprobe
    on the system, everybody's. And never seek: Python's open(path, "a")
    does, and kprobe_events (a write-only seq_file) refuses it with EINVAL
    on 6.1, so this is a bare O_APPEND write.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def check_appendable(path: Path) -> None:
    """Open ``path`` for appending and close it: the OSError says why it cannot be written."""
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def selected_clock(text: str) -> str:
    """The clock in brackets of a trace_clock file: ``local [mono] global`` -> ``mono``."""
    match = re.search(r"\[(\S+)\]", text)
    if not match:
        raise FlightrecError(f"unexpected trace_clock contents: {text.strip()!r}")
    return match.group(1)


@dataclass(frozen=True)
class CpuStats:
    """One CPU's ring-buffer statistics (``per_cpu/cpuN/stats``).

    ``overrun`` counts events overwritten because the buffer was full (the
    flight recorder's normal case); ``dropped`` counts events lost outright.
    """

    cpu: int
    entries: int
    overrun: int
    commit_overrun: int
    bytes: int
    oldest_event_ts: float
    now_ts: float
    dropped: int
    read: int


def parse_cpu_stats(cpu: int, text: str) -> CpuStats:
    """Parse a ``per_cpu/cpuN/stats`` file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()

    def num(key: str) -> int:
        try:
            return int(values.get(key, "0"))
        except ValueError:
            return 0

    def ts(key: str) -> float:
        try:
            return float(values.get(key, "0"))
        except ValueError:
            return 0.0

    return CpuStats(
        cpu=cpu,
        entries=num("entries"),
        overrun=num("overrun"),
        commit_overrun=num("commit overrun"),
        bytes=num("bytes"),
        oldest_event_ts=ts("oldest event ts"),
        now_ts=ts("now ts"),
        dropped=num("dropped events"),
        read=num("read events"),
    )


def read_cpu_stats(trace_dir: Path) -> list[CpuStats]:
    """Per-CPU buffer statistics of a tracefs root or instance directory."""
    stats = []
    per_cpu = trace_dir / "per_cpu"
    cpu_dirs = sorted((p for p in per_cpu.glob("cpu*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:]))
    for cpu_dir in cpu_dirs:
        try:
            stats.append(parse_cpu_stats(int(cpu_dir.name[3:]), _read(cpu_dir / "stats")))
        except OSError:
            continue  # an offline CPU has no readable stats
    return stats


@dataclass(frozen=True)
class GlobalSettings:
    """The top-level tracing settings flightrec promises never to change."""

    trace_clock: str
    buffer_size_kb: str
    tracing_on: str
    current_tracer: str
    instances: tuple[str, ...]


def global_settings(root: Optional[Path] = None) -> GlobalSettings:
    """A snapshot of the top-level settings, for tests and for `doctor`."""
    root = root or ensure_mounted()
    return GlobalSettings(
        trace_clock=selected_clock(_read(root / "trace_clock")),
        buffer_size_kb=_read(root / "buffer_size_kb").strip(),
        tracing_on=_read(root / "tracing_on").strip(),
        current_tracer=_read(root / "current_tracer").strip(),
        instances=tuple(sorted(p.name for p in (root / "instances").iterdir())),
    )


def list_instances(root: Optional[Path] = None, prefix: str = INSTANCE_PREFIX) -> list[str]:
    """Names of the tracefs instances whose names start with ``prefix``."""
    root = root or find_root()
    if root is None or not (root / "instances").is_dir():
        return []
    return sorted(p.name for p in (root / "instances").iterdir() if p.name.startswith(prefix))


def remove_instance(name: str, root: Optional[Path] = None, timeout: float = 3.0) -> bool:
    """Stop and remove an instance; True if it is gone.

    rmdir fails with EBUSY while any process holds one of its files open (a
    forwarder still writing trace_marker), so it is retried until ``timeout``.
    """
    root = root or find_root()
    if root is None:
        return True
    path = root / "instances" / name
    if not path.exists():
        return True
    try:
        _write(path / "tracing_on", "0")
    except FlightrecError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


class TraceInstance:
    """A private tracefs instance, created on enter and removed on exit.

    Every setting changed through :meth:`set` is restored on exit, in reverse
    order, even though removing the instance would drop most of them: the
    restore also covers the instance surviving (EBUSY) and any file outside it.

    Usage::

        with TraceInstance() as inst:
            clock = inst.set_clock()
            inst.set_buffer_size_kb(4096)
            inst.arm_traceoff_on_detection()
            ...
            inst.save_trace(Path("trace.txt"))
    """

    def __init__(self, name: Optional[str] = None, root: Optional[Path] = None) -> None:
        self.root = root or ensure_mounted()
        self.name = name or f"{INSTANCE_PREFIX}{os.getpid()}"
        self.path = self.root / "instances" / self.name
        self._saved: list[tuple[Path, str]] = []
        self._created = False

    # --- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "TraceInstance":
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create the instance directory.

        :raises FlightrecError: it already exists (another flightrec, or a
            leftover: run `flightrec cleanup`) or instances are unsupported.
        """
        try:
            os.mkdir(self.path)
        except FileExistsError as err:
            raise FlightrecError(f"tracefs instance {self.path} already exists; run `flightrec cleanup`") from err
        except OSError as err:
            raise FlightrecError(f"cannot create tracefs instance {self.path}: {err.strerror}") from err
        self._created = True

    def close(self) -> None:
        """Restore every saved value, then remove the instance (best effort)."""
        errors = []
        while self._saved:
            path, value = self._saved.pop()
            try:
                if path.exists():
                    _write(path, value)
            except FlightrecError as err:
                errors.append(str(err))
        if self._created:
            if remove_instance(self.name, self.root):
                self._created = False
            else:
                errors.append(f"could not remove {self.path} (busy); run `flightrec cleanup`")
        if errors:
            raise FlightrecError("; ".join(errors))

    @property
    def created(self) -> bool:
        """True while this object's instance exists (it made it and has not removed it)."""
        return self._created

    # --- settings --------------------------------------------------------------
    def file(self, relative: str | Path) -> Path:
        return self.path / relative

    def read(self, relative: str | Path) -> str:
        return _read(self.file(relative))

    def set(self, relative: str | Path, value: str, restore: Optional[str] = None) -> None:
        """Write ``value`` to a file of the instance, remembering what to put back.

        ``restore`` is the value written on exit; by default the file's current
        contents (right for plain values; triggers and clocks pass their own).
        """
        path = self.file(relative)
        previous = restore if restore is not None else _read(path).strip()
        _write(path, value)
        self._saved.append((path, previous))

    def set_clock(self, preferred: Sequence[str] = SYNCED_CLOCKS) -> str:
        """Select the first available clock of ``preferred``; return its name.

        :raises FlightrecError: none of them is offered by this kernel.
        """
        text = self.read("trace_clock")
        offered = text.replace("[", " ").replace("]", " ").split()
        for clock in preferred:
            if clock in offered:
                self.set("trace_clock", clock, restore=selected_clock(text))
                return clock
        raise FlightrecError(f"no CPU-synchronised trace clock ({', '.join(preferred)}) in {self.file('trace_clock')}")

    @property
    def clock(self) -> str:
        return selected_clock(self.read("trace_clock"))

    def set_buffer_size_kb(self, kb: int) -> None:
        """Size each per-CPU buffer; the kernel may round up to whole pages.

        :raises FlightrecError: the kernel refused (too large for memory).
        """
        if kb <= 0:
            raise FlightrecError(f"buffer size must be positive, got {kb} KB")
        # A new instance reads "7 (expanded: 1408)" on 6.1: only the number can be written back.
        self.set("buffer_size_kb", str(kb), restore=self.read("buffer_size_kb").split()[0])

    @property
    def buffer_size_kb(self) -> int:
        text = self.read("buffer_size_kb").split()[0]
        return int(text)

    def arm_traceoff_on_detection(self, glob: str = DETECTION_GLOB) -> str:
        """Arm ``traceoff if buf ~ "GLOB"`` on the marker (ftrace:print) event.

        The kernel then stops this instance's buffer on the detection line
        itself, so the recording freezes even if the application hangs after
        writing it. Returns the trigger text as written.
        """
        trigger = f'traceoff if buf ~ "{glob}"'
        # Removing a trigger is writing it again prefixed with '!'.
        self.set(PRINT_TRIGGER, trigger, restore=f"!{trigger}")
        return trigger

    def enable_event(self, system: str, event: str) -> None:
        """Enable ``events/SYSTEM/EVENT`` in this instance (disabled again on exit)."""
        self.set(Path("events") / system / event / "enable", "1", restore="0")

    @property
    def tracing_on(self) -> bool:
        return self.read("tracing_on").strip() == "1"

    def start(self) -> None:
        """Clear the buffer and turn tracing on."""
        _write(self.file("trace"), "")  # opening `trace` for write with O_TRUNC clears it
        _write(self.file("tracing_on"), "1")

    def stop(self) -> None:
        """Turn tracing off; idempotent (the trigger or the forwarder may have done it)."""
        _write(self.file("tracing_on"), "0")

    def cpu_stats(self) -> list[CpuStats]:
        return read_cpu_stats(self.path)

    def fill_ratio(self) -> float:
        """How full the fullest per-CPU buffer is, 0.0 to 1.0 (1.0 once it wraps)."""
        size = self.buffer_size_kb * 1024
        if size <= 0:
            return 0.0
        best = 0.0
        for stats in self.cpu_stats():
            ratio = 1.0 if stats.overrun else stats.bytes / size
            best = max(best, min(ratio, 1.0))
        return best

    def save_trace(self, dest: Path) -> int:
        """Copy the merged, time-ordered ``trace`` file to ``dest``; return bytes written."""
        with open(self.file("trace"), "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            return out.tell()

    def marker_lines(self) -> Iterator[str]:
        """The marker payloads currently in the buffer (for tests and summaries)."""
        with open(self.file("trace"), encoding="utf-8", errors="replace") as src:
            for line in src:
                _, sep, payload = line.partition("tracing_mark_write: ")
                if sep:
                    yield payload.rstrip("\n")


# The top-level bpf_trace_printk event, which loading a BPF program that prints enables.
PRINTK_EVENT = Path("events/bpf_trace/bpf_trace_printk/enable")


def toplevel_printk(tracefs_root: Path) -> Optional[str]:
    """The top-level ``bpf_trace_printk`` enable ("0"/"1"), or None if absent."""
    try:
        return (tracefs_root / PRINTK_EVENT).read_text().strip()
    except OSError:
        return None


def restore_toplevel_printk(tracefs_root: Path, before: Optional[str], settle: float = 0.0) -> Optional[str]:
    """Put the top-level ``bpf_trace_printk`` enable back to ``before``.

    Loading any program that calls bpf_trace_printk makes the kernel enable
    that event in the top-level buffer too, and never disable it; flightrec
    wants its lines only in its own instance, so it undoes that. The kernel
    does it from a work item queued at load time, so it can land after the
    loader is ready: wait up to ``settle`` seconds for it (and call this again
    at teardown). Returns a problem line, or None.
    """
    if before is None:
        return None
    deadline = time.monotonic() + settle
    while toplevel_printk(tracefs_root) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    if toplevel_printk(tracefs_root) in (None, before):
        return None
    try:
        write_control(tracefs_root / PRINTK_EVENT, before)
    except OSError as err:
        return f"cannot restore {tracefs_root / PRINTK_EVENT} to {before}: {err.strerror}"
    return None
