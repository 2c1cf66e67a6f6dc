"""Real traffic through the forwarder: iperf3 TCP and UDP, and stamped UDP.

Several flows (-P) hash onto several veth queues, so every queue's XSK is
busy. iperf3's TCP brings congestion control and ACKs the other way; the
stamped flows (``c/stamp``) carry payloads that say what they must contain,
checked by the forwarder before it forwards them (``--payload-port``) and by
``stamp recv`` in the server namespace, which writes a detection line into
the trace and exits 3 on the first corrupt one. Everything is bounded:
clients run for ``-t`` seconds, iperf3 servers serve one test (``-1``), the
stamp receiver runs a little longer than its sender, and
:meth:`Traffic.stop` ends whatever is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from flightrec import locate
from flightrec.errors import FlightrecError
from flightrec.record.forwarder import start_logged
from flightrec.record.topology import Topology

TCP_PORT = 5201
UDP_PORT = 5202
STAMP_PORT = 5203
# Seconds the stamp receiver outlives its sender's time: what is in flight
# when the sender stops is still checked; Traffic.stop ends it sooner.
STAMP_RECV_EXTRA = 30
STAMP_CORRUPT = 3  # stamp recv's exit status on a corrupt payload
# Seconds the servers may take to listen: well under one here, many in a
# loaded TCG guest, where one `ip netns exec ss` poll takes about a second and
# iperf3 is read over virtiofs (5 s was missed there). Clients get 15 s to connect.
LISTEN_TIMEOUT = 30.0
CONNECT_TIMEOUT_MS = 15000


@dataclass(frozen=True)
class TrafficPlan:
    duration: float
    tcp_flows: int = 4
    udp_flows: int = 4
    # Per UDP flow; low enough to leave the forwarder to TCP, high enough to
    # keep every queue busy between TCP bursts.
    udp_rate: str = "20M"
    udp_len: int = 1200
    # Stamped UDP (c/stamp): packets per second over all its flows, and the
    # payload sizes. 20 kpps of 64-1400 bytes keeps every queue of the
    # forwarder busy beside TCP on the host (bench/forwarder moves ~60-110 kpps).
    stamp_rate: int = 20000
    stamp_flows: int = 8  # sockets, each hashed onto a veth queue at random (sk_txhash): 8 leave none idle
    stamp_len: str = "64-1400"


@dataclass(frozen=True)
class FlowResult:
    name: str
    exit_code: Optional[int]
    sent_bps: Optional[float]
    received_bps: Optional[float]
    error: Optional[str]
    # stamped flows: datagrams sent and received, and how many arrived corrupt
    packets_sent: Optional[int] = None
    packets_received: Optional[int] = None
    corrupt: Optional[int] = None


def stamp_path() -> Path:
    """The stamp binary: $FLIGHTREC_STAMP, the checkout's build/c/stamp or the installed one."""
    return locate.program("stamp")


class Traffic:
    """iperf3 servers and the stamp receiver in the server namespace, clients in the client namespace."""

    def __init__(
        self,
        topo: Topology,
        plan: TrafficPlan,
        log_dir: Path,
        on_process: Optional[Callable[[subprocess.Popen, str], None]] = None,
        check: Optional[Callable[[], None]] = None,
        trace_dir: Optional[Path] = None,
    ) -> None:
        self.topo = topo
        self.plan = plan
        self.log_dir = log_dir
        self.on_process = on_process  # (process, "iperf3-<name>" or "stamp-<send|recv>") as soon as it exists
        self.check = check  # called while waiting for the servers; may raise to stop
        self.trace_dir = trace_dir  # the stamp receiver's detection line goes there
        self.servers: dict[str, subprocess.Popen] = {}
        self.clients: dict[str, subprocess.Popen] = {}

    def _spawn(self, ns: str, name: str, argv: list[str]) -> subprocess.Popen:
        return self._start(
            f"iperf3-{name}",
            ["ip", "netns", "exec", ns, *argv],
            f"iperf3-{name}.json",
            "iperf3",
            "apt-get install iperf3",
        )

    def _spawn_stamp(self, role: str, argv: list[str]) -> subprocess.Popen:
        """`stamp send|recv`; it enters its namespace itself (--netns), after
        opening the trace files that `ip netns exec` would hide."""
        return self._start(
            f"stamp-{role}",
            [str(stamp_path()), role, *argv, "--stats", str(self.log_dir / f"stamp-{role}.json")],
            f"stamp-{role}.out",
            str(stamp_path()),
            locate.build_fix("c/stamp"),
        )

    def _start(self, what: str, argv: list[str], stdout_name: str, program: str, fix: str) -> subprocess.Popen:
        """Start one traffic process (named ``what``), its output in the logs,
        dying with flightrec; tell ``on_process`` at once."""
        try:
            proc = start_logged(argv, self.log_dir / stdout_name, self.log_dir / f"{what}.stderr")
        except OSError as e:
            raise FlightrecError(f"cannot start {program}: {e.strerror}; {fix}") from e
        if self.on_process:
            self.on_process(proc, what)
        return proc

    def _listening(self, port: int) -> bool:
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.topo.server_ns, "ss", "-Hltnu", f"sport = :{port}"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:  # a loaded TCG guest: ask again until the deadline
            return False
        return bool(proc.stdout.strip())

    @property
    def seconds(self) -> int:
        """How long each client sends (iperf3's -t takes whole seconds)."""
        return max(1, int(self.plan.duration))

    def start(self) -> None:
        """Start the servers, wait until they listen, then start the clients."""
        if shutil.which("iperf3") is None:
            raise FlightrecError("iperf3 not found; apt-get install iperf3")
        if not os.access(stamp_path(), os.X_OK):
            raise FlightrecError(f"{stamp_path()} not built; {locate.build_fix('c/stamp')}")
        t = self.seconds
        addr = self.topo.server_addr
        # -i 0: no per-second reports. With -J iperf3 keeps every one in memory
        # until it exits (~0.5 MB a minute each): an hours-long run would grow.
        for name, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
            self.servers[name] = self._spawn(
                self.topo.server_ns,
                f"server-{name}",
                ["iperf3", "-s", "-1", "-J", "-i", "0", "-B", addr, "-p", str(port)],
            )
        recv = [
            "--netns",
            self.topo.netns_path(self.topo.server_ns),
            "--bind",
            f"{addr}:{STAMP_PORT}",
            "--duration",
            str(t + STAMP_RECV_EXTRA),
        ]
        self.servers["stamp"] = self._spawn_stamp(
            "recv", recv + (["--trace-dir", str(self.trace_dir)] if self.trace_dir is not None else [])
        )
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not all(self._listening(p) for p in (TCP_PORT, UDP_PORT, STAMP_PORT)):
            if self.check:
                self.check()  # the caller's watch names a dead server, with when and how
            else:
                dead = [
                    f"{'stamp recv' if name == 'stamp' else f'iperf3 server-{name}'} exited with {proc.returncode}"
                    for name, proc in self.servers.items()
                    if proc.poll() is not None
                ]
                if dead:
                    raise FlightrecError(f"{dead[0]} before listening (see its log in {self.log_dir})")
            if time.monotonic() > deadline:
                raise FlightrecError(
                    f"iperf3 servers or stamp recv did not start listening within {LISTEN_TIMEOUT:g} s"
                )
            time.sleep(0.1)
        common = ["--connect-timeout", str(CONNECT_TIMEOUT_MS), "-J", "-i", "0", "-t", str(t)]
        self.clients["tcp"] = self._spawn(
            self.topo.client_ns,
            "client-tcp",
            ["iperf3", "-c", addr, "-p", str(TCP_PORT), "-P", str(self.plan.tcp_flows), *common],
        )
        self.clients["udp"] = self._spawn(
            self.topo.client_ns,
            "client-udp",
            [
                "iperf3",
                "-c",
                addr,
                "-p",
                str(UDP_PORT),
                "-u",
                "-b",
                self.plan.udp_rate,
                "-l",
                str(self.plan.udp_len),
                "-P",
                str(self.plan.udp_flows),
                *common,
            ],
        )
        self.clients["stamp"] = self._spawn_stamp(
            "send",
            [
                "--netns",
                self.topo.netns_path(self.topo.client_ns),
                "--to",
                f"{addr}:{STAMP_PORT}",
                "--flows",
                str(self.plan.stamp_flows),
                "--rate",
                str(self.plan.stamp_rate),
                "--len",
                self.plan.stamp_len,
                "--duration",
                str(t),
            ],
        )

    def corrupt_seen(self) -> bool:
        """True once the stamp receiver exited 3: it received a corrupt payload
        (its detection line is in the trace and tracing is stopped)."""
        proc = self.servers.get("stamp")
        return proc is not None and proc.poll() == STAMP_CORRUPT

    def own_failure(self, what: str) -> Optional[str]:
        """Why iperf3 ``what`` ("iperf3-client-udp" ...), which has exited with a
        status, gave up by itself: its JSON error, or "ended early" when it
        wrote none. None when it was interrupted (SIGINT or SIGTERM from
        outside: its error then begins "interrupt").

        An iperf3 also gives up by itself when its control connection fails
        in a loaded TCG guest ("unable to read from stream socket: Resource
        temporarily unavailable", 32 s into a 60 s run), or when its peer was
        stopped ("the server has terminated").
        """
        if not what.startswith("iperf3-"):
            return None
        try:
            error = json.loads((self.log_dir / f"{what}.json").read_text() or "{}").get("error")
        except (OSError, ValueError, AttributeError):
            error = None
        if isinstance(error, str) and error.startswith("interrupt"):
            return None
        return str(error) if error else "ended early"

    def senders_left(self) -> list[str]:
        """The clients (iperf3 ones and the stamp sender) still sending."""
        return [name for name, proc in self.clients.items() if proc.poll() is None]

    def finished(self) -> bool:
        """True once every client has exited (its -t is over, or it failed)."""
        return bool(self.clients) and all(p.poll() is not None for p in self.clients.values())

    def stop(self, grace: float = 2.0) -> None:
        """End every iperf3: clients first (they finish their test), then servers."""
        for group in (self.clients, self.servers):
            for proc in group.values():
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + grace
            for proc in group.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def corrupt_line(self) -> str:
        """The stamp receiver's detection line, from its anomaly event ("" if unread)."""
        try:
            for text in (self.log_dir / "stamp-recv.out").read_text(errors="replace").splitlines():
                event = json.loads(text)
                if event.get("event") == "anomaly":
                    return str(event.get("line", ""))
        except (OSError, ValueError):
            pass
        return ""

    def results(self) -> list[FlowResult]:
        """What each client achieved, from its -J output (missing if it was killed)."""
        results = []
        for name, proc in self.clients.items():
            if name == "stamp":
                results.append(self._stamp_result(proc))
                continue
            path = self.log_dir / f"iperf3-client-{name}.json"
            sent = received = None
            error = None
            try:
                data = json.loads(path.read_text() or "{}")
                end = data.get("end", {})
                error = data.get("error")
                if name == "tcp":
                    sent = end.get("sum_sent", {}).get("bits_per_second")
                    received = end.get("sum_received", {}).get("bits_per_second")
                else:
                    summary = end.get("sum", {})
                    sent = summary.get("bits_per_second")
                    lost = summary.get("lost_percent")
                    if sent is not None and lost is not None:
                        received = sent * (1 - lost / 100)
            except (OSError, ValueError) as err:
                error = f"no result ({err.__class__.__name__})"
            results.append(FlowResult(name, proc.poll(), sent, received, error))
        return results

    def _stamp_result(self, sender: subprocess.Popen) -> FlowResult:
        """The stamped flows: the sender's and the receiver's --stats files."""

        def read(role: str) -> dict:
            try:
                return json.loads((self.log_dir / f"stamp-{role}.json").read_text() or "{}")
            except (OSError, ValueError):
                return {}

        sent, got = read("send"), read("recv")
        seconds = sent.get("seconds") or 0
        error = None if sent else "no result (stamp-send.json missing)"
        if got.get("corrupt"):
            error = f"{got['corrupt']} corrupt payloads, first: {got.get('first')}"
        return FlowResult(
            "stamp",
            sender.poll(),
            sent.get("bytes", 0) * 8 / seconds if seconds and "bytes" in sent else None,
            got.get("bytes", 0) * 8 / seconds if seconds and "bytes" in got else None,
            error,
            sent.get("sent"),
            got.get("received"),
            got.get("corrupt"),
        )
