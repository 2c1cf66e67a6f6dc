"""One recording, from an empty machine back to an empty machine.

``can_run`` says why a recording is impossible here; :func:`record` does
setup -> start -> wait -> stop -> save, and tears everything down on every
path out: success, anomaly, the forwarder dying, Ctrl-C, SIGTERM, SIGHUP
(signals are turned into an exception so they reach the same ``finally``).
A SIGKILL of flightrec itself is covered by the registry in state.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from flightrec import __version__, tracefs
from flightrec.errors import FlightrecError
from flightrec.record import forwarder as fwdmod
from flightrec.record import afxdp, kernel_events, state, topology
from flightrec.record.forwarder import Forwarder, ForwarderConfig
from flightrec.record.traffic import Traffic, TrafficPlan
from flightrec.report import pcap

AF_XDP = getattr(socket, "AF_XDP", 44)
EXIT_CLEAN, EXIT_ANOMALY, EXIT_ERROR = 0, 1, 2
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SLACK = 10.0  # seconds the forwarder may outlive the traffic before it is stopped
INJECT_FRAMES = 1024
TRAFFIC_GRACE = 3.0  # seconds the traffic may take past --duration before it is stopped
# The forwarder's own safety-net clock starts before the traffic does; starting
# iperf3 took 9.4 s in a loaded TCG guest (vm record --nic virtio), past SLACK.
TRAFFIC_START_SLACK = 60.0


@dataclass(frozen=True)
class RecordOptions:
    out_dir: Path = Path("flightrec-out")
    duration: float = 20.0
    queues: int = 2
    buffer_kb: int = 4096
    inject: Optional[str] = None
    inject_after: Optional[int] = None
    kernel_events: str = "auto"
    # Probe definitions resolved elsewhere (flightrec.probes.Prepared): a VM
    # guest gets them from the host, where the debug vmlinux is quick to read.
    probe_definitions: Optional[object] = None
    nic: str = "veth"  # or "virtio": the VM's NICs (flightrec vm record --nic virtio)
    mode: str = "copy"  # AF_XDP bind: copy, zerocopy or auto (flightrec/record/afxdp.py)

    def check(self) -> None:
        """:raises FlightrecError: an option is out of range."""
        if self.duration <= 0 or self.duration > 24 * 3600:
            raise FlightrecError(f"--duration must be between 0 and 86400 s, got {self.duration:g}")
        if not 1 <= self.queues <= 64:
            raise FlightrecError(f"--queues must be between 1 and 64, got {self.queues}")
        if self.buffer_kb < 4:
            raise FlightrecError(f"-b must be at least 4 KB, got {self.buffer_kb}")
        if self.inject is not None and self.inject not in fwdmod.INJECT_FAULTS:
            raise FlightrecError(f"--inject must be one of {', '.join(fwdmod.INJECT_FAULTS)}, got {self.inject!r}")
        if self.inject_after is not None and self.inject_after < 0:
            raise FlightrecError(f"--inject-after must be >= 0, got {self.inject_after}")
        if self.nic not in topology.NIC_KINDS:
            raise FlightrecError(f"--nic must be one of {', '.join(topology.NIC_KINDS)}, got {self.nic!r}")
        if self.mode not in afxdp.MODES:
            raise FlightrecError(f"--mode must be one of {', '.join(afxdp.MODES)}, got {self.mode!r}")
        if self.kernel_events not in kernel_events.BACKENDS:
            raise FlightrecError(f"--kernel-events must be one of {', '.join(kernel_events.BACKENDS)}")


@dataclass(frozen=True)
class LiveStats:
    """What the live view shows, once per forwarder stats line (or tick)."""

    elapsed: float
    duration: float
    rx: tuple[int, ...]
    tx: tuple[int, ...]
    markers: int
    buffer_fill: float
    tracing_on: bool
    sockets: tuple[str, ...] = ()  # a label per rx/tx entry: "outer q:0" ...
    drops: tuple[int, ...] = ()


class Observer:
    """Receives progress; the CLI's live and plain views subclass it."""

    def step(self, message: str) -> None:
        """A setup or teardown step."""

    def warning(self, message: str) -> None:
        """Something degraded but the recording goes on."""

    def stats(self, live: LiveStats) -> None:
        """Periodic counters while forwarding."""

    def anomaly(self, data: dict) -> None:
        """The forwarder reported an anomaly."""


@dataclass(frozen=True)
class RecordResult:
    exit_code: int
    outcome: str  # clean | anomaly | forwarder-died | interrupted
    message: str
    out_dir: Path
    trace_path: Optional[Path]
    meta: dict = field(default_factory=dict)


class Interrupted(Exception):
    """A handled signal arrived; carries its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def can_run(opts: Optional[RecordOptions] = None) -> Optional[str]:
    """Why ``flightrec record`` cannot run on this machine (with the fix), or None."""
    if os.geteuid() != 0:
        return "must run as root (namespaces, XDP and tracefs need it); try sudo"
    if tracefs.find_root() is None and not tracefs.TRACEFS_CANDIDATES[0].is_dir():
        return "no tracefs (kernel without CONFIG_TRACING?); /sys/kernel/tracing does not exist"
    missing = fwdmod.forwarder_missing()
    if missing:
        return missing
    for tool, package in (("ip", "iproute2"), ("ethtool", "ethtool"), ("iperf3", "iperf3"), ("ss", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found; apt-get install {package}"
    why = af_xdp_unavailable()
    if why:
        return why
    return None


def af_xdp_unavailable() -> Optional[str]:
    """Open and close an AF_XDP socket: the one honest test that the kernel has XSKs."""
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as err:
        return f"no AF_XDP sockets ({err.strerror}); the kernel needs CONFIG_XDP_SOCKETS=y"
    return None


@contextmanager
def signals_raise() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM/SIGHUP into :class:`Interrupted` inside the block.

    Yields a list; while it holds the string "teardown" signals are only
    recorded, so a second Ctrl-C cannot cut the cleanup short.
    """
    mode: list[Any] = []

    def handler(signum: int, _frame: Any) -> None:
        if "teardown" in mode:
            mode.append(signum)
            return
        raise Interrupted(signum)

    # A signal the caller ignores stays ignored (nohup, `cmd &` in a script).
    old = {sig: signal.signal(sig, handler) for sig in HANDLED_SIGNALS
           if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield mode
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(opts: RecordOptions, observer: Optional[Observer] = None) -> RecordResult:
    """Run one recording; see the module docstring.

    :raises FlightrecError: usage or environment error (nothing left behind).
    """
    obs = observer or Observer()
    opts.check()
    reason = can_run(opts)
    if reason:
        raise FlightrecError(reason)
    root = tracefs.ensure_mounted()
    choice = kernel_events.choose_backend(opts.kernel_events, root)  # may refuse before anything exists
    with state.Lock(), signals_raise() as mode:
        left = state.find_leftovers()
        if left:
            obs.warning(
                "removing leftovers of a killed flightrec: "
                + ", ".join([*left.netns, *(f"instance {i}" for i in left.instances),
                             *(f"{p.what} pid {p.pid}" for p in left.processes)])
            )
            failed = state.remove_leftovers(left)
            failed += remove_leftover_probes(left.extra)
            if failed:
                raise FlightrecError(f"could not remove leftovers: {', '.join(failed)}")
        state.clear_registry()
        reg = state.new_registry()
        try:
            return _Recording(opts, obs, reg, mode, root, choice).run()
        finally:
            reg.remove()


def remove_leftover_probes(extra: dict) -> list[str]:
    """Remove kernel probes a killed recording installed (its registry's extra)."""
    if not extra:
        return []
    if "bpf_printk_toplevel" in extra:
        # The BPF backend's loader died before flightrec put this back.
        root = tracefs.find_root()
        problem = kernel_events.restore_toplevel_printk(root, extra["bpf_printk_toplevel"]) if root else None
        if problem:
            return [problem]
    if extra.get("probes") is not None:
        return kernel_events.remove(extra["probes"])
    if extra.get("probes_pending"):
        root = tracefs.find_root()
        return kernel_events.remove_all_flightrec_probes(root) if root else []
    return []


class _Recording:
    """The state of one run; ``run`` owns every resource and frees it in ``finally``."""

    def __init__(self, opts: RecordOptions, obs: Observer, reg: state.Registry, mode: list,
                 root: Path, choice: kernel_events.Choice) -> None:
        self.opts = opts
        self.root = root
        self.choice = choice
        self.obs = obs
        self.reg = reg
        self.mode = mode
        self.out = opts.out_dir
        self.logs = self.out / "logs"
        self.topo: Optional[topology.Topology] = None
        self.instance: Optional[tracefs.TraceInstance] = None
        self.fwd: Optional[Forwarder] = None
        self.traffic: Optional[Traffic] = None
        self.probes_handle: Any = None
        self.bpf: Optional[kernel_events.BpfTracer] = None
        self.meta: dict = {}
        self.flagged: dict = {}  # what _save_flagged wrote, for meta.json
        self.nics: list[dict] = []  # the VM's NICs before they were moved (--nic virtio)
        self.teardown_errors: list[str] = []

    # --- the run -----------------------------------------------------------------
    def run(self) -> RecordResult:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FlightrecError(f"cannot create {self.logs}: {err.strerror}") from err
        for stale in ("trace.txt", "meta.json", "forwarder-stats.json", "analysis.json", pcap.PCAP_NAME,
                      f"logs/{pcap.FLAGGED_NAME}"):
            (self.out / stale).unlink(missing_ok=True)
        started = _now()
        interrupted: Optional[Interrupted] = None
        error: Optional[FlightrecError] = None
        t_forwarding = 0.0
        code: Optional[int] = None
        trace_info: dict = {}
        stopped_by = "flightrec"
        t0: Optional[float] = None
        try:
            self._setup()
            t0 = time.monotonic()
            stopped_by = self._wait(t0)
        except Interrupted as sig:
            interrupted = sig
            self.obs.warning(f"got {sig}; stopping and saving the trace")
        except FlightrecError as err:
            error = err
        finally:
            # From here on signals are only noted: a second Ctrl-C must not cut
            # the cleanup short. The teardown itself is bounded in time.
            self.mode.append("teardown")
            t_forwarding = time.monotonic() - t0 if t0 is not None else 0.0
            try:
                code, trace_info = self._stop_and_save()
            finally:
                self._teardown()
        return self._result(started, code, stopped_by, t_forwarding, trace_info, interrupted, error)

    def _setup(self) -> None:
        opts = self.opts
        if self.choice.backend == "none":
            self.obs.warning(
                f"kernel events: {self.choice.reason}; missing: {', '.join(self.choice.missing)}"
            )

        self.topo = topology.make_topology(str(os.getpid()), opts.queues, opts.nic)
        self.obs.step(f"creating namespaces {', '.join(self.topo.namespaces)}")
        self.nics = topology.setup(self.topo, on_netns=self.reg.add_netns, mode=opts.mode)

        self.instance = tracefs.TraceInstance(root=self.root)
        self.reg.set_instance(self.instance.name)  # registered before it exists: a crash in between is covered
        self.instance.create()
        clock = self.instance.set_clock()
        self.instance.set_buffer_size_kb(opts.buffer_kb)
        trigger = self.instance.arm_traceoff_on_detection()
        self.instance.start()
        self.obs.step(
            f"tracing into {self.instance.path} (clock {clock}, {self.instance.buffer_size_kb} KB per CPU, "
            f"trigger `{trigger}`)"
        )

        if self.choice.backend == "kprobes":
            # Noted before installing: a crash halfway leaves no handle, and
            # cleanup then removes flightrec's whole probe group.
            self.reg.extra["probes_pending"] = True
            self.reg.save()
            self.probes_handle, problems = kernel_events.install(self.choice, self.instance.path,
                                                                       opts.probe_definitions)
            self.reg.extra["probes"] = self.probes_handle
            self.reg.save()
            for problem in problems:
                self.obs.warning(problem)
            events = kernel_events.installed_events(self.probes_handle)
            self.obs.step(f"kernel events: {', '.join(events) if events else 'none installed'}")
        elif self.choice.backend == "bpf":
            self._start_bpf()

        config = ForwarderConfig(
            outer=self.topo.outer_spec, inner=self.topo.inner_spec, queues=opts.queues,
            trace_dir=self.instance.path, inject=opts.inject,
            inject_after=opts.inject_after, stats_path=self.out / "forwarder-stats.json",
            # flightrec stops the forwarder when the traffic is done; its own
            # --duration is only the safety net should flightrec die.
            duration=opts.duration + SLACK + TRAFFIC_START_SLACK,
            # An injected duplicate is caught when the kernel reaches it in FILL,
            # after up to a quarter of the UMEM's frames: a small UMEM keeps the
            # injection inside the trace buffer.
            frames=INJECT_FRAMES if opts.inject else None,
            flagged_path=self.logs / pcap.FLAGGED_NAME,
            mode=opts.mode,
        )
        self.fwd = Forwarder(config, stderr_path=self.logs / "forwarder.stderr")
        self.fwd.start()
        assert self.fwd.pid is not None
        self.reg.add_process(self.fwd.pid, "forwarder")
        self.fwd.wait_ready()
        self.obs.step(f"forwarder ready (pid {self.fwd.pid}, {opts.queues} queues per side)")
        self.obs.step(afxdp.describe(opts.mode, self.fwd.ready))

        self.traffic = Traffic(self.topo, TrafficPlan(duration=opts.duration), self.logs,
                               on_process=self.reg.add_process)
        self.traffic.start()
        self.obs.step(
            f"traffic: iperf3 TCP and UDP, {self.topo.client_addr} -> {self.topo.server_addr}, "
            f"{opts.duration:g} s"
        )

    def _start_bpf(self) -> None:
        """Load the BPF tracepoint backend, its lines enabled in the instance only."""
        assert self.topo is not None and self.instance is not None
        topo = self.topo
        devices = [kernel_events.netns_device(topo.netns_path(ns), dev)
                   for ns, dev in ((topo.outer_ns, topo.outer_dev), (topo.inner_ns, topo.inner_dev))]
        # Restored (to its old value) when the instance closes.
        self.instance.set(kernel_events.PRINTK_EVENT, "1")
        before = kernel_events.toplevel_printk(self.root)
        self.reg.extra["bpf_printk_toplevel"] = before
        self.reg.save()
        self.bpf = kernel_events.BpfTracer(devices, self.logs / "xsk_trace.stderr")
        ready = self.bpf.start(on_process=self.reg.add_process)
        problem = kernel_events.restore_toplevel_printk(self.root, before, settle=1.0)
        if problem:
            self.obs.warning(problem)
        self.obs.step(
            f"kernel events: bpf ({self.choice.reason}); "
            + ", ".join(f"{name} <- {tp}" for name, tp in kernel_events.BPF_TRACEPOINTS.items())
            + f"; xsk_trace pid {ready.get('pid')}, sockets of {topo.outer_dev} and {topo.inner_dev}"
        )

    def _wait(self, t0: float) -> str:
        """Follow the forwarder until the traffic is done or it exits.

        Returns what ended the recording: "duration" (the traffic ran its
        course), "forwarder" (it exited: anomaly or crash), "trigger" (the
        kernel stopped tracing and the forwarder hangs) or "timeout".
        """
        assert self.fwd is not None and self.instance is not None and self.traffic is not None
        deadline = t0 + self.opts.duration + SLACK
        last_stats = t0
        tracing_off_since: Optional[float] = None
        while True:
            event = self.fwd.next_event(0.25)
            now = time.monotonic()
            if event is not None:
                if event.kind == "anomaly":
                    self.obs.anomaly(event.data)
                elif event.kind == "eof":
                    return "forwarder"
                elif event.kind == "exit":
                    d = event.data
                    self.obs.step(f"forwarder exit: code {d.get('code')} ({d.get('reason')}), "
                                  f"markers {d.get('markers')}")
            # Stats come from the forwarder once a second; tick without them
            # only when it is silent, so the view still shows time passing.
            if event is not None and event.kind == "stats" or now - last_stats >= 2.0:
                last_stats = now
                self.obs.stats(self._live(now - t0))
                if self.bpf is not None:
                    # The kernel's late switch-on of the top-level printk
                    # event can come after the settle wait under load.
                    kernel_events.restore_toplevel_printk(self.root, self.reg.extra.get("bpf_printk_toplevel"))
            # iperf3 clients can linger past their -t swapping results over a
            # slow control connection: the duration asked for is what counts.
            if self.traffic.finished() or now - t0 >= self.opts.duration + TRAFFIC_GRACE:
                return "duration"
            # The kernel trigger stops the buffer on a detection line even if
            # the forwarder hangs; give it a moment to exit by itself.
            if not self.instance.tracing_on:
                tracing_off_since = tracing_off_since or now
                if now - tracing_off_since > 3.0:
                    self.obs.warning("tracing stopped (trigger) but the forwarder keeps running; stopping it")
                    return "trigger"
            if now > deadline:
                self.obs.warning(f"traffic still running {self.opts.duration + SLACK:g} s after start; stopping")
                return "timeout"

    def _live(self, elapsed: float) -> LiveStats:
        assert self.fwd is not None and self.instance is not None
        stats = self.fwd.last_stats or {}
        try:
            fill, on = self.instance.fill_ratio(), self.instance.tracing_on
        except (OSError, ValueError):
            fill, on = 0.0, False
        return LiveStats(
            elapsed=elapsed, duration=self.opts.duration,
            rx=tuple(int(x) for x in stats.get("rx", [])), tx=tuple(int(x) for x in stats.get("tx", [])),
            markers=int(stats.get("markers", 0)), buffer_fill=fill, tracing_on=on,
            # The forwarder lists the outer sockets by queue, then the inner ones.
            sockets=tuple(f"{side} q:{q}" for side in ("outer", "inner") for q in range(self.opts.queues)),
            drops=tuple(int(x) for x in stats.get("drops", [])),
        )

    # --- stop, save, tear down -------------------------------------------------------
    def _stop_and_save(self) -> tuple[Optional[int], dict]:
        """Freeze the buffer, stop the children, save trace and stats."""
        info: dict = {}
        if self.instance is not None and self.instance.created:
            try:
                info["tracing_on_at_stop"] = self.instance.tracing_on
                self.instance.stop()  # freeze first: teardown traffic must not overwrite the story
            except (OSError, FlightrecError) as err:
                self.teardown_errors.append(f"stopping tracing: {err}")
        code = None
        if self.fwd is not None:
            code = self.fwd.wait(0.5)
            if code is None:
                code = self.fwd.stop()
        if self.traffic is not None:
            self.traffic.stop()
        self._save_flagged()
        if self.instance is not None and self.instance.created:
            trace_path = self.out / "trace.txt"
            try:
                info["bytes"] = self.instance.save_trace(trace_path)
                info["path"] = str(trace_path)
                info["per_cpu"] = [asdict(s) for s in self.instance.cpu_stats()]
                info["clock"] = self.instance.clock
                info["buffer_size_kb"] = self.instance.buffer_size_kb
                info["fill_to_rx_markers"] = _count_fill_to_rx(trace_path)
            except (OSError, FlightrecError) as err:
                self.teardown_errors.append(f"saving the trace: {err}")
        return code, info

    def _save_flagged(self) -> None:
        """The forwarder's flagged packets as DIR/flagged.pcap (only when it flagged any)."""
        source = self.logs / pcap.FLAGGED_NAME
        if self.fwd is None or not source.is_file():
            return
        try:
            packets = pcap.read_flagged(source)
            if packets:
                pcap.write_pcapng(packets, self.out / pcap.PCAP_NAME)
                self.flagged = {"packets": len(packets), "pcap": str(self.out / pcap.PCAP_NAME),
                                "source": str(source)}
        except FlightrecError as err:  # the trace still stands: a warning, not a failed run
            self.obs.warning(f"no {pcap.PCAP_NAME}: {err}")

    def _teardown(self) -> None:
        """Undo everything in reverse order; collect, never raise."""
        if self.fwd is not None:
            self.fwd.stop()
        if self.traffic is not None:
            self.traffic.stop()
        if self.bpf is not None:
            code = self.bpf.stop()
            if code != 0:
                self.teardown_errors.append(
                    f"BPF backend (xsk_trace) {fwdmod.describe_exit(code)}: {self.bpf.stderr_tail()}")
            # Again: the kernel's late top-level enable may have come after setup's restore.
            problem = kernel_events.restore_toplevel_printk(self.root, self.reg.extra.get("bpf_printk_toplevel"))
            if problem:
                self.teardown_errors.append(problem)
        if self.probes_handle is not None:
            try:
                self.teardown_errors.extend(kernel_events.remove(self.probes_handle))
            except Exception as err:  # a probe backend failing must not stop the teardown
                self.teardown_errors.append(f"removing probes: {err}")
        if self.instance is not None:
            try:
                self.instance.close()
            except FlightrecError as err:
                self.teardown_errors.append(str(err))
        if self.topo is not None:
            left = topology.teardown(self.topo)
            if left:
                self.teardown_errors.append(f"namespaces not removed: {', '.join(left)}")
        for err in self.teardown_errors:
            self.obs.warning(err)
        if not self.teardown_errors and self.topo is not None:
            self.obs.step("teardown complete: namespaces, links, XDP programs and tracefs instance removed")

    # --- the result ------------------------------------------------------------------
    def _result(self, started: str, code: Optional[int], stopped_by: str, t_forwarding: float,
                trace_info: dict, interrupted: Optional[Interrupted],
                error: Optional[FlightrecError]) -> RecordResult:
        fwd = self.fwd
        anomalies = fwd.anomalies if fwd else []
        detected = bool(anomalies) or code == fwdmod.EXIT_ANOMALY or stopped_by == "trigger"
        if error is not None and not trace_info.get("bytes"):
            raise error
        if interrupted is not None:
            outcome, exit_code = "interrupted", 128 + interrupted.signum
            message = f"interrupted by {interrupted}"
        elif detected:
            outcome, exit_code = "anomaly", EXIT_ANOMALY
            message = "anomaly caught; tracing stopped"
        elif error is not None:
            outcome, exit_code, message = "error", EXIT_ERROR, str(error)
        elif code == fwdmod.EXIT_CLEAN and stopped_by == "duration" and t_forwarding >= self.opts.duration - 1:
            outcome, exit_code = "clean", EXIT_CLEAN
            message = f"ran {t_forwarding:.1f} s with no anomaly"
        elif code == fwdmod.EXIT_CLEAN:
            outcome, exit_code = "short", EXIT_ERROR
            message = f"recording ended ({stopped_by}) after {t_forwarding:.1f} s of {self.opts.duration:g}"
        else:
            outcome, exit_code = "forwarder-died", EXIT_ERROR
            tail = fwd.stderr_tail(3) if fwd else ""
            message = f"forwarder {fwdmod.describe_exit(code)} after {t_forwarding:.1f} s (stderr: {tail})"
        traffic = self.traffic.results() if self.traffic else []
        if outcome == "clean":
            counts = (fwd.exit_event or fwd.last_stats or {}) if fwd else {}
            failed = [f"{r.name} {r.error or f'exit {r.exit_code}'}" for r in traffic if r.exit_code != 0]
            if sum(int(n) for n in counts.get("rx", [])) == 0:
                outcome, exit_code = "no-traffic", EXIT_ERROR
                message = f"no packet reached the forwarder in {t_forwarding:.1f} s (iperf3: {'; '.join(failed)})"
            elif failed:
                message += f"; iperf3 trouble: {'; '.join(failed)} (logs in {self.logs})"
        if self.teardown_errors:
            message += f" (teardown: {'; '.join(self.teardown_errors)}; run `flightrec cleanup`)"
            if exit_code == EXIT_CLEAN:
                exit_code = EXIT_ERROR

        self.meta = {
            "flightrec": __version__,
            "started": started,
            "ended": _now(),
            "outcome": outcome,
            "exit_code": exit_code,
            "message": message,
            "kernel": {"release": platform.release(), "machine": platform.machine()},
            "kernel_events": {
                **self.choice.as_dict(),
                "installed": kernel_events.installed_events(self.probes_handle) if self.bpf is None
                else [f"{name} ({tp})" for name, tp in kernel_events.BPF_TRACEPOINTS.items()],
                "problems": list(self.probes_handle.get("problems", []))
                if isinstance(self.probes_handle, dict) else [],
                "bpf": None if self.bpf is None else {
                    "argv": self.bpf.argv(), "ready": self.bpf.ready, "exit": self.bpf.exit_event,
                    "exit_code": self.bpf.proc.returncode if self.bpf.proc else None,
                },
            },
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()},
            "topology": self.topo.as_dict() if self.topo else None,
            # Per socket: driver, queue, the mode read back (XDP_OPTIONS), XDP attach, rings, XDP_STATISTICS.
            "af_xdp": afxdp.summary(self.opts.mode, self.opts.nic, fwd.ready if fwd else None,
                                    fwd.read_stats_file() if fwd else None, self.nics),
            "trace": {
                "instance": self.instance.name if self.instance else None,
                "trigger": f'traceoff if buf ~ "{tracefs.DETECTION_GLOB}"',
                "stopped_by": "forwarder" if code == fwdmod.EXIT_ANOMALY else stopped_by,
                **trace_info,
            },
            "forwarder": {
                "binary": str(fwd.binary) if fwd else None,
                "argv": fwd.config.argv(fwd.binary) if fwd else None,
                "exit_code": code,
                "exit_reason": fwdmod.describe_exit(code),
                "forwarding_seconds": round(t_forwarding, 3),
                "last_stats": fwd.last_stats if fwd else None,
                "anomalies": anomalies,
                "exit_event": fwd.exit_event if fwd else None,
                # Ring producer/consumer/cached indexes and XDP_STATISTICS at exit.
                "stats_file": fwd.read_stats_file() if fwd else None,
                "flagged": self.flagged or None,
            },
            "traffic": [asdict(r) for r in traffic],
        }
        meta_path = self.out / "meta.json"
        meta_path.write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        trace_path = self.out / "trace.txt" if trace_info.get("bytes") is not None else None
        return RecordResult(exit_code, outcome, message, self.out, trace_path, self.meta)


def _count_fill_to_rx(path: Path) -> int:
    """How many ``FILL -> RX`` transition markers the saved trace holds."""
    count = 0
    with open(path, encoding="utf-8", errors="replace") as trace:
        for line in trace:
            if "tracing_mark_write:" in line and "FILL -> RX" in line:
                count += 1
    return count
