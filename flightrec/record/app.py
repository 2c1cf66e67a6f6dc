"""The user's own AF_XDP program in the forwarder's place (``record --app``).

The program runs unmodified: its command line gets the recording's names
through placeholders, its environment the same as ``FLIGHTREC_*``. It runs in
the namespace that holds both forwarder-side interfaces, entered with
``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys,
which would hide the trace instance a program that writes markers needs.

flightrec cannot ask the program when it is ready, so it looks: the program
is ready once an XDP program is attached to one of the two interfaces, one
of its processes holds an AF_XDP socket, and neither has changed for a
second (the second interface comes a moment after the first). The sockets
are found through /proc and copied into flightrec with pidfd_getfd(2), which
also reads each one's mode (XDP_OPTIONS) and counters (XDP_STATISTICS) for
meta.json; the interface and queue a socket is bound to are not readable
that way (that needs xsk_diag, which not every kernel has).
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from flightrec.errors import FlightrecError
from flightrec.record.afxdp import AF_XDP, STAT_KEYS, bind_summary
from flightrec.record.forwarder import Event, forwarder_path, last_lines, start_logged

# {forwarder} is flightrec's own forwarder, to run it as an unmodified program would be.
PLACEHOLDERS = ("outer", "inner", "queues", "marker", "tracedir", "out", "netns", "forwarder")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
READY_TIMEOUT = 30.0  # seconds the program may take to attach XDP and open a socket
SETTLE_S = 1.0  # ... and then keep its XDP programs and sockets unchanged, to count as set up
SOL_XDP = 283
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_OPTIONS_ZEROCOPY = 1
SYS_PIDFD_GETFD = 438  # x86_64 and every architecture of the unified syscall table

_libc = ctypes.CDLL(None, use_errno=True)


def expand(command: str, values: dict[str, str]) -> list[str]:
    """``command`` split as a shell would, each known ``{name}`` replaced.

    Other braces stay as they are (an awk program, a JSON argument).

    :raises FlightrecError: the command is empty or not valid shell quoting.
    """
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise FlightrecError(f"--app: cannot split the command ({err})") from err
    if not words:
        raise FlightrecError("--app: the command is empty")
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], w) for w in words]


def check_command(command: str) -> None:
    """:raises FlightrecError: the command is empty, badly quoted, or names no program."""
    argv = expand(command, {**dict.fromkeys(PLACEHOLDERS, "x"), "forwarder": str(forwarder_path())})
    if shutil.which(argv[0]) is None:
        raise FlightrecError(f"--app: {argv[0]}: no such program (not an executable path, nor on PATH)")


def environment(values: dict[str, str]) -> dict[str, str]:
    """The program's environment: flightrec's, plus FLIGHTREC_OUTER ... FLIGHTREC_NETNS."""
    env = dict(os.environ)
    env.update({f"FLIGHTREC_{k.upper()}": v for k, v in values.items()})
    return env


@dataclass(frozen=True)
class XskSocket:
    """One AF_XDP socket the program holds."""

    pid: int
    fd: int
    mode: str  # zerocopy or copy, read back with XDP_OPTIONS
    stats: dict  # XDP_STATISTICS


def _getsockopt(fd: int, level: int, name: int, size: int) -> Optional[bytes]:
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(fd, level, name, buf, ctypes.byref(length)) != 0:
        return None
    return buf.raw[: length.value]


def _socket_facts(pid: int, fd: int) -> Optional[XskSocket]:
    """The mode and counters of the program's ``fd`` when it is an AF_XDP socket."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        local = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if local < 0:
            return None
        try:
            domain = _getsockopt(local, socket.SOL_SOCKET, socket.SO_DOMAIN, 4)
            if domain is None or struct.unpack("i", domain)[0] != AF_XDP:
                return None
            options = _getsockopt(local, SOL_XDP, XDP_OPTIONS, 4)
            stats = _getsockopt(local, SOL_XDP, XDP_STATISTICS, 8 * len(STAT_KEYS))
            mode = "zerocopy" if options and struct.unpack("I", options)[0] & XDP_OPTIONS_ZEROCOPY else "copy"
            values = struct.unpack(f"{len(stats) // 8}Q", stats) if stats else ()
            return XskSocket(pid, fd, mode, dict(zip(STAT_KEYS, values)))
        finally:
            os.close(local)
    finally:
        os.close(pidfd)


def xsk_sockets(pids: list[int]) -> list[XskSocket]:
    """The AF_XDP sockets the processes ``pids`` hold (each socket once)."""
    found, seen = [], set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if not target.startswith("socket:") or target in seen:
                continue
            facts = _socket_facts(pid, int(name))
            if facts is not None:
                seen.add(target)
                found.append(facts)
    return found


def _ns_pids(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _xdp_attached(ns: str, dev: str) -> Optional[str]:
    """``xdp``, ``xdpgeneric`` ... when an XDP program is attached to ``dev``, else None."""
    proc = subprocess.run(
        ["ip", "-n", ns, "-d", "link", "show", "dev", dev], capture_output=True, text=True, timeout=10, check=False
    )
    m = re.search(r"\b(xdp|xdpgeneric|xdpdrv|xdpoffload|xdpmulti)\b", proc.stdout)
    return m.group(1) if m else None


class App:
    """The running program; the session drives it as it drives the forwarder.

    It says nothing on stdout that flightrec reads: ``next_event`` only tells
    that it exited ("eof"); a detection line it writes stops tracing through
    the instance's trigger, which the session notices by itself.
    """

    def __init__(self, command: str, values: dict[str, str], netns: str, devs: tuple[str, str], log_dir: Path) -> None:
        self.command = command
        self.values = values
        self.argv = expand(command, values)
        self.netns = netns
        self.devs = devs
        self.log_dir = log_dir
        self.stderr_path = log_dir / "app.stderr"
        self.proc: Optional[subprocess.Popen] = None
        self.ready: Optional[dict] = None
        self.last_stats: dict = {}
        self.exit_event: Optional[dict] = None
        self.anomalies: list[dict] = []
        self.final_sockets: list[XskSocket] = []

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """:raises FlightrecError: nsenter is missing or the program cannot be started."""
        nsenter = shutil.which("nsenter")
        if nsenter is None:
            raise FlightrecError("nsenter not found; apt-get install util-linux")
        try:
            self.proc = start_logged(
                [nsenter, f"--net=/run/netns/{self.netns}", "--", *self.argv],
                self.log_dir / "app.stdout",
                self.stderr_path,
                env=environment(self.values),
            )
        except OSError as e:
            raise FlightrecError(f"--app: cannot start {self.argv[0]}: {e.strerror}") from e

    def _exited_early(self) -> FlightrecError:
        assert self.proc is not None
        tail = self.stderr_tail(1)
        return FlightrecError(
            f"--app: {self.argv[0]} exited with code {self.proc.returncode} before it attached XDP and opened an "
            f"AF_XDP socket" + (f"; its last stderr line: {tail}" if tail else "")
        )

    def sockets(self) -> list[XskSocket]:
        """The AF_XDP sockets the program's processes hold now."""
        pids = set(_ns_pids(self.netns))
        if self.proc is not None:
            pids.add(self.proc.pid)
        return xsk_sockets(sorted(pids))

    def wait_ready(self, timeout: float = READY_TIMEOUT, check: Optional[Callable[[], None]] = None) -> None:
        """Wait for an XDP program on one of the interfaces and an AF_XDP socket, both settled.

        :raises FlightrecError: it exited first, or did neither within ``timeout``.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last_seen: tuple = ()
        since = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise self._exited_early()
            if check:
                check()
            attached = {dev: _xdp_attached(self.netns, dev) for dev in self.devs}
            socks = self.sockets() if any(attached.values()) else []
            now = time.monotonic()
            seen = (tuple(attached.items()), tuple((s.pid, s.fd) for s in socks))
            if seen != last_seen:
                last_seen, since = seen, now
            # A program sets up one interface after the other: the first socket is not
            # yet the whole set-up, so wait until what it holds stops changing.
            if socks and (now - since >= SETTLE_S or now > deadline):
                self.ready = {"xdp": attached, "sockets": [s.__dict__ for s in socks]}
                return
            if now > deadline:
                did = (
                    "attached no XDP program to " + " or ".join(self.devs)
                    if not any(attached.values())
                    else "opened no AF_XDP socket"
                )
                raise FlightrecError(f"--app: {self.argv[0]} {did} within {timeout:g} s")
            time.sleep(0.2)

    def next_event(self, timeout: float) -> Optional[Event]:
        """ "eof" once the program has exited, else None after ``timeout``."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return Event("eof", {}, time.monotonic())

    def poll(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> Optional[int]:
        """SIGINT, as a user would stop it, then SIGTERM, then SIGKILL, to its whole session."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.final_sockets = self.sockets()  # its counters at the end
            except (OSError, subprocess.SubprocessError):
                pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace if sig != signal.SIGKILL else 10)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.returncode

    def stderr_tail(self, lines: int = 5) -> str:
        return "\n".join(last_lines(self.stderr_path, lines))

    def as_meta(self) -> dict:
        """meta.json's ``app`` section (its sockets are in ``af_xdp``)."""
        return {
            "command": self.command,
            "argv": self.argv,
            "netns": self.netns,
            "entered_with": "nsenter --net",
            "exit_code": self.proc.returncode if self.proc else None,
            "xdp": (self.ready or {}).get("xdp"),
        }

    def af_xdp(self) -> dict:
        """meta.json's ``af_xdp`` section: each socket's mode and counters, named by pid and fd."""
        last = self.final_sockets or [XskSocket(**s) for s in (self.ready or {}).get("sockets", [])]
        rows = [{"sock": f"pid {s.pid} fd {s.fd}", "mode": s.mode, "xdp_statistics": s.stats} for s in last]
        return {
            "mode_requested": "the app's own",
            "bind": bind_summary(rows),
            "nic": "veth",
            "read_back_with": "getsockopt(SOL_XDP, XDP_OPTIONS) on the app's sockets, copied with pidfd_getfd",
            "sockets": rows,
            "nics": [],
        }
