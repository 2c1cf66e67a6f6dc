"""One recording at a time, and nothing left behind by a killed one.

A recording holds an flock on ``/run/flightrec/lock`` (the kernel drops it
when the process dies, even by SIGKILL) and lists what it creates in
``/run/flightrec/session.json``: namespaces, the tracefs instance, the
processes it started. Whoever next takes the lock with that file still
present knows the previous recording died before tearing down, and removes
what the file names, plus anything matching flightrec's own name patterns.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flightrec import tracefs
from flightrec.errors import FlightrecError

STATE_DIR = Path(os.environ.get("FLIGHTREC_STATE_DIR", "/run/flightrec"))
NETNS_DIR = Path("/run/netns")

# Only names flightrec itself makes: `flightrec-<pid>-<role>` namespaces and
# `flightrec-<pid>` instances. Anything else is somebody else's.
NETNS_RE = re.compile(r"^flightrec-(\d+)-(client|outer|inner|server)$")
INSTANCE_RE = re.compile(r"^flightrec-(\d+)$")


def _run(cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def process_start_time(pid: int) -> Optional[int]:
    """The process start time in clock ticks (field 22 of /proc/PID/stat), or None.

    Recorded beside each pid so a pid reused by an unrelated process after a
    crash is never killed by mistake.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(")") + 2 :].split()
    if rest and rest[0] in ("Z", "X"):
        return None  # a zombie holds nothing; killing it does nothing
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class TrackedProcess:
    pid: int
    start_time: Optional[int]
    what: str


@dataclass
class Registry:
    """What a running recording has created; rewritten to disk on every change."""

    pid: int
    path: Path
    netns: list[str] = field(default_factory=list)
    instance: Optional[str] = None
    processes: list[TrackedProcess] = field(default_factory=list)
    # Anything else a backend wants removed after a crash (e.g. kernel probes).
    extra: dict = field(default_factory=dict)

    def save(self) -> None:
        data = {
            "pid": self.pid,
            "start_time": process_start_time(self.pid),
            "netns": self.netns,
            "instance": self.instance,
            "processes": [p.__dict__ for p in self.processes],
            "extra": self.extra,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a file

    def add_netns(self, name: str) -> None:
        self.netns.append(name)
        self.save()

    def set_instance(self, name: str) -> None:
        self.instance = name
        self.save()

    def add_process(self, pid: int, what: str) -> None:
        self.processes.append(TrackedProcess(pid, process_start_time(pid), what))
        self.save()

    def remove(self) -> None:
        for path in (self.path, self.path.with_suffix(".tmp")):  # .tmp: a signal inside save()
            try:
                path.unlink()
            except FileNotFoundError:
                pass


class Lock:
    """The one-recording-at-a-time lock; a context manager.

    :raises FlightrecError: another flightrec holds it (named by pid).
    """

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise FlightrecError(f"cannot open {self.path}: {err.strerror}; are you root?") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Started at the same instant, the holder may not have written its pid yet.
            deadline = time.monotonic() + 0.5
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            while not holder and time.monotonic() < deadline:
                time.sleep(0.02)
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            holder = holder or "?"
            raise FlightrecError(
                f"another flightrec (pid {holder}) is recording; wait for it to finish or stop it (kill -INT {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def registry_path(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "session.json"


def new_registry(state_dir: Path = STATE_DIR) -> Registry:
    """Start this process's registry; call only while holding the :class:`Lock`."""
    reg = Registry(pid=os.getpid(), path=registry_path(state_dir))
    reg.save()
    return reg


@dataclass(frozen=True)
class Leftovers:
    netns: tuple[str, ...]
    instances: tuple[str, ...]
    processes: tuple[TrackedProcess, ...]
    extra: dict

    def __bool__(self) -> bool:
        return bool(self.netns or self.instances or self.processes or self.extra)


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped) is dead."""
    return process_start_time(pid) is not None


def find_leftovers(state_dir: Path = STATE_DIR) -> Leftovers:
    """What dead recordings left behind; call only while holding the :class:`Lock`.

    Holding the lock means no recording is running: what the registry names
    is a leftover, and so is every flightrec-named namespace or instance whose
    pid is dead (a live pid may be a library user, such as a benchmark, that
    made its own instance without the lock).
    """

    def orphan(match: Optional[re.Match]) -> bool:
        return bool(match) and not _pid_alive(int(match.group(1)))

    netns = {n for n in list_netns() if orphan(NETNS_RE.match(n))}
    instances = {i for i in tracefs.list_instances() if orphan(INSTANCE_RE.match(i))}
    processes: list[TrackedProcess] = []
    extra: dict = {}
    path = registry_path(state_dir)
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        netns.update(n for n in data.get("netns", []) if n in list_netns())
        inst = data.get("instance")
        if inst and inst in tracefs.list_instances():
            instances.add(inst)
        for proc in data.get("processes", []):
            tracked = TrackedProcess(int(proc["pid"]), proc.get("start_time"), proc.get("what", "?"))
            if tracked.start_time is not None and process_start_time(tracked.pid) == tracked.start_time:
                processes.append(tracked)
        extra = data.get("extra") or {}
    return Leftovers(tuple(sorted(netns)), tuple(sorted(instances)), tuple(processes), extra)


def _kill(pid: int, start_time: Optional[int], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only if the pid is still that process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if start_time is not None and process_start_time(pid) != start_time:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process_start_time(pid) != start_time:
                return
            try:  # reap it if it is our own child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)


def kill_netns_processes(name: str) -> None:
    """Kill every process living in namespace ``name`` (iperf3 and the like).

    Deleting a namespace does not end its processes; they would keep it alive.
    """
    out = _run(["ip", "netns", "pids", name]).stdout
    for word in out.split():
        if word.isdigit():
            pid = int(word)
            _kill(pid, process_start_time(pid))


def delete_netns(name: str) -> bool:
    """Kill the namespace's processes and delete it; True if it is gone.

    Its veth ends go with it, and with them the peers in other namespaces and
    any XDP program attached to either end.
    """
    if name not in list_netns():
        return True
    kill_netns_processes(name)
    _run(["ip", "netns", "delete", name])
    return name not in list_netns()


def remove_leftovers(left: Leftovers) -> list[str]:
    """Remove what :func:`find_leftovers` found; return what could not be removed."""
    failed = []
    for proc in left.processes:  # processes first: they hold instances and sockets
        _kill(proc.pid, proc.start_time)
    for name in left.netns:
        if not delete_netns(name):
            failed.append(f"netns {name}")
    for name in left.instances:
        if not tracefs.remove_instance(name):
            failed.append(f"tracefs instance {name}")
    return failed


def clear_registry(state_dir: Path = STATE_DIR) -> None:
    try:
        registry_path(state_dir).unlink()
    except FileNotFoundError:
        pass
