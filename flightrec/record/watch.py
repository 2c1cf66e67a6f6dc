"""Notice at once when a process flightrec started exits, and when exactly.

Each watched process gets a pidfd (``pidfd_open``, Linux 5.3); one thread
polls them all and, the moment the kernel reports an exit (a pidfd becomes
readable in ``exit_notify``, after the process has closed its files: its BPF
links and XSKs are gone by then), stamps ``time.monotonic()`` and reads the
status with ``waitid(P_PIDFD, ..., WNOWAIT)`` — without reaping, so the
``subprocess.Popen`` that owns the child still gets its return code.
The recording drains :meth:`Watch.exits` from its own loop; an ``on_exit``
callback runs in the watch thread itself, for what cannot wait for that loop.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Exit:
    """One process that exited: what it was, and how and when it ended."""

    what: str
    pid: int
    at: float  # time.monotonic() when the kernel reported the exit
    code: Optional[int]  # as subprocess has it: exit status, or -N for signal N; None if unknown

    def how(self) -> str:
        """``killed by SIGKILL``, ``exited with code 1``, ``exited cleanly (code 0)``."""
        if self.code is None:
            return "exited (status unknown)"
        if self.code < 0:
            try:
                return f"killed by {signal.Signals(-self.code).name}"
            except ValueError:
                return f"killed by signal {-self.code}"
        if self.code == 0:
            return "exited cleanly (code 0)"
        return f"exited with code {self.code}"


OnExit = Callable[[Exit], None]


def _status(pidfd: int, proc: subprocess.Popen) -> Optional[int]:
    """The exit status in subprocess's convention, leaving the zombie for Popen to reap."""
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except OSError:  # ECHILD: the Popen's own wait() reaped it first
        info = None
    if info is None:
        # That wait() sets returncode just after its waitpid returns.
        deadline = time.monotonic() + 1.0
        while proc.returncode is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return proc.returncode
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # CLD_KILLED, CLD_DUMPED


class Watch:
    """Watches child processes; :meth:`close` stops the thread (idempotent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, subprocess.Popen, str, Optional[OnExit]]] = []
        self._exits: "queue.Queue[Exit]" = queue.Queue()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="flightrec-watch", daemon=True)
        self._thread.start()

    def add(self, proc: subprocess.Popen, what: str, on_exit: Optional[OnExit] = None) -> None:
        """Watch ``proc`` (a child of this process), named ``what`` in reports;
        ``on_exit`` is called with its :class:`Exit` from the watch thread the
        moment it exits (keep it short; exceptions it raises are dropped)."""
        try:
            pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # gone and reaped already: report it now
            self._report(Exit(what, proc.pid, time.monotonic(), proc.poll()), on_exit)
            return
        with self._lock:
            if self._closed:
                os.close(pidfd)
                return
            self._pending.append((pidfd, proc, what, on_exit))
            os.write(self._wake_w, b"x")

    def exits(self) -> list[Exit]:
        """The exits seen since the last call, earliest first."""
        found = []
        while True:
            try:
                found.append(self._exits.get_nowait())
            except queue.Empty:
                return sorted(found, key=lambda e: e.at)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _report(self, exit: Exit, on_exit: Optional[OnExit]) -> None:
        if on_exit is not None:
            try:
                on_exit(exit)
            except Exception:  # noqa: BLE001 - the exit is still reported below
                pass
        self._exits.put(exit)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, tuple[subprocess.Popen, str, Optional[OnExit]]] = {}
        while True:
            for fd, _mask in poller.poll():
                now = time.monotonic()
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                proc, what, on_exit = watched.pop(fd)
                poller.unregister(fd)
                self._report(Exit(what, proc.pid, now, _status(fd, proc)), on_exit)
                os.close(fd)
            with self._lock:
                for pidfd, proc, what, on_exit in self._pending:
                    watched[pidfd] = (proc, what, on_exit)
                    poller.register(pidfd, select.POLLIN)
                self._pending.clear()
                if self._closed:
                    for fd in watched:
                        os.close(fd)
                    return
