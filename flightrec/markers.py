"""The marker library for Python AF_XDP programs: the same lines as the C header.

A Python program that drives AF_XDP rings (through ctypes, cffi or a binding)
writes the lines of docs/markers.md with this module, as a C program does with
``<flightrec/xsk_markers.h>`` (``flightrec markers --cflags``): a writer on the
instance's trace_marker, one socket's FILL-order deque and the frames' states
shared by the sockets of one UMEM, and a detection line that stops tracing.
Under ``flightrec record --app`` the instance is $FLIGHTREC_TRACEDIR.

    from flightrec.markers import Markers, Sock, States

    with Markers.open() as m:                      # $FLIGHTREC_TRACEDIR, or markers off
        states = States(frames=4096)
        rx = Sock(m, "eth0", 0, states, frame_size=4096, frames=4096)
        rx.fill(addr, "FREE"); rx.flush()         # then submit to FILL
        if not rx.rx(desc_addr): stop()            # read from RX: checked, marked
        rx.flush()                                 # then release RX

Each ``Sock`` call returns True, or False once it has written the detection
line and stopped tracing. One ``Sock`` is used by one thread at a time; each
line is one ``os.write``, which ftrace keeps whole.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Optional

from flightrec.parse.format import BATCH_LINE_MAX, POISON, STATES, VALID_BEFORE

TRACEDIR_ENV = "FLIGHTREC_TRACEDIR"
REMAINING_MAX = 100  # deque entries a detection line lists, as the C header does
XSK_UNALIGNED_BUF_ADDR_MASK = (1 << 48) - 1

__all__ = ["POISON", "Markers", "Sock", "States"]


class Markers:
    """Lines to one tracefs instance's trace_marker; ``dir`` None takes
    $FLIGHTREC_TRACEDIR and without it writes nothing (every call returns at once)."""

    def __init__(self, marker_fd: int = -1, tracing_on_fd: int = -1, batched: bool = True):
        self.marker_fd = marker_fd
        self.tracing_on_fd = tracing_on_fd
        self.batched = batched
        self.muted = False
        self.written = 0
        self.failed = 0
        # held for each write: a detection waits for the writes in flight
        self._lock = threading.Lock()

    @classmethod
    def open(cls, dir: Optional[str] = None, batched: bool = True) -> "Markers":
        """:raises OSError: the folder is not a tracefs instance (or tracefs is not mounted)."""
        dir = dir if dir is not None else os.environ.get(TRACEDIR_ENV)
        if not dir:
            return cls(batched=batched)
        marker = os.open(Path(dir) / "trace_marker", os.O_WRONLY | os.O_CLOEXEC)
        try:
            tracing_on = os.open(Path(dir) / "tracing_on", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(marker)
            raise
        return cls(marker, tracing_on, batched)

    @property
    def enabled(self) -> bool:
        return self.marker_fd >= 0

    def write(self, line: str) -> None:
        """One line, one write(); nothing once muted by a detection."""
        if self.marker_fd < 0 or not line:
            return
        with self._lock:
            if self.muted:
                return
            self._write(line)

    def _write(self, line: str) -> None:
        data = line.encode()
        try:
            ok = os.write(self.marker_fd, data) == len(data)
        except OSError:
            ok = False
        if ok:
            self.written += 1
        else:
            self.failed += 1

    def detect(self, line: str) -> None:
        """The detection line: the trace's last marker, then tracing off at once."""
        if self.marker_fd < 0:
            return
        with self._lock:
            self.muted = True
            self._write(line)
            self.stop_tracing()

    def stop_tracing(self) -> bool:
        if self.tracing_on_fd < 0:
            return False
        try:
            return os.write(self.tracing_on_fd, b"0") == 1
        except OSError:
            return False

    def close(self) -> None:
        for fd in (self.marker_fd, self.tracing_on_fd):
            if fd >= 0:
                os.close(fd)
        self.marker_fd = self.tracing_on_fd = -1

    def __enter__(self) -> "Markers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class States:
    """Where the application believes each frame is; shared by one UMEM's sockets."""

    def __init__(self, frames: int):
        self.frames = frames
        self._st = bytearray(frames)  # every frame starts FREE

    def peek(self, frame: int) -> Optional[str]:
        return STATES[self._st[frame]] if 0 <= frame < self.frames else None

    def move(self, frame: int, src: str, dst: str) -> Optional[str]:
        """None when the frame was in ``src`` and ``src -> dst`` is valid (then it
        is in ``dst``); otherwise the state it really was in ("?": no such frame)."""
        was = self.peek(frame)
        if was is None:
            return "?"
        if was != src or src not in VALID_BEFORE[dst]:
            return was
        self._st[frame] = STATES.index(dst)
        return None


class Sock:
    """One AF_XDP socket's markers and checks (the C header's struct fr_sock)."""

    def __init__(
        self,
        markers: Markers,
        iface: str,
        queue: int,
        states: Optional[States] = None,
        frame_size: int = 0,
        frames: int = 0,
        zerocopy: bool = False,
    ):
        self.m = markers
        self.states = states
        self.name = f"{iface} q:{queue}"
        self.frame_size = frame_size
        self.ordered = not zerocopy  # FILL order holds in copy mode only (docs/markers.md)
        self.order: collections.deque[int] = collections.deque()
        self._line = ""  # this ring operation's batched line
        self._group: Optional[tuple[str, str]] = None

    def frame(self, addr: int) -> int:
        base = addr & XSK_UNALIGNED_BUF_ADDR_MASK
        return base // self.frame_size if self.frame_size else base

    def flush(self) -> None:
        """Writes this ring operation's line: before the FILL/TX submit or the RX/COMPLETION release."""
        line, self._line, self._group = self._line, "", None
        self.m.write(line)

    def _mark(self, addr: int, src: str, dst: str) -> None:
        if not self.m.enabled:
            return
        word = f" {addr:#x}"
        if not self.m.batched:
            self.m.write(f"{self.name}{word} {src} -> {dst}")
            return
        group = f" {src} -> {dst}"
        if self._line and self._group != (src, dst):
            # the C header's test, byte for byte, so that both split a long batch alike
            if len(self._line) + 2 + len(src) + 4 + len(dst) + len(word) > BATCH_LINE_MAX:
                self.flush()
            else:
                self._line += group
        elif self._line and len(self._line) + len(word) > BATCH_LINE_MAX:
            self.flush()
        if not self._line:
            self._line = self.name + group
        self._group = (src, dst)
        self._line += word

    def detect(self, addr: int, src: str, dst: str, what: str) -> bool:
        """Flushes what came before, writes ``SOCK ADDR SRC -> DST: what``, stops tracing; False."""
        self.flush()
        self.m.detect(f"{self.name} {addr:#x} {src} -> {dst}: {what}")
        return False

    def move(self, addr: int, src: str, dst: str) -> bool:
        if self.states is not None:
            was = self.states.move(self.frame(addr), src, dst)
            if was is not None:
                return self.detect(addr, src, dst, f"invalid, was {was}")
        self._mark(addr, src, dst)
        return True

    def fill(self, addr: int, src: str = "FREE") -> bool:
        """``addr`` goes into this socket's FILL ring (from FREE, RX or COMP)."""
        if not self.move(addr, src, "FILL"):
            return False
        if self.ordered:
            self.order.append(addr)
        return True

    def rx(self, addr: int) -> bool:
        """``addr`` was read from RX: the poison, FILL order (copy mode), then FILL -> RX."""
        if not self.ordered:
            if addr == POISON:
                return self.detect(addr, "FILL", "RX", "poison")
        else:
            exp = self.order.popleft() if self.order else 0
            if addr == POISON or self.frame(addr) != self.frame(exp):
                rest = ", ".join(f"{a:x}" for a in list(self.order)[:REMAINING_MAX])
                more = ", ..." if len(self.order) > REMAINING_MAX else ""
                return self.detect(addr, "FILL", "RX", f"expected {exp:#x} remaining: [{rest}{more}]")
        return self.move(addr, "FILL", "RX")

    def tx(self, addr: int, src: str = "RX") -> bool:
        """``addr`` goes into this socket's TX ring (from RX, COMP or FREE)."""
        return self.move(addr, src, "TX")

    def comp(self, addr: int) -> bool:
        """``addr`` was read from this socket's COMPLETION ring."""
        return self.move(addr, "TX", "COMP")

    def release(self, addr: int, src: str) -> bool:
        """The application keeps ``addr`` out of every ring (from RX or COMP)."""
        return self.move(addr, src, "FREE")
