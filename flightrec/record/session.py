"""One recording, from an empty machine back to an empty machine.

``can_run`` (flightrec.capabilities) says why a recording is impossible here; :func:`record` does
setup -> start -> wait -> stop -> save, and tears everything down on every
path out: success, anomaly, a helper dying, Ctrl-C, SIGTERM, SIGHUP
(signals are turned into an exception so they reach the same ``finally``).
A SIGKILL of flightrec itself is covered by the registry in state.py.

Every process the recording starts (the forwarder, c/xsk_trace, the iperf3
servers and clients) is watched (watch.py): one that dies before its time
ends the recording at once, which is then saved and analyzed like an
anomaly's and exits 2 naming what died (an iperf3 that gives up by itself
while other traffic flows is a warning, not a death). When the dead one is the BPF
kernel-event loader, meta.json's ``kernel_events.ended_at`` says when, on the
trace clock: the trace has no kernel events after it, whatever the kernel did.
"""

from __future__ import annotations

import os
import platform
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from flightrec import __version__, runfolder, tracefs
from flightrec.capabilities import can_run
from flightrec.errors import FlightrecError
from flightrec.parse.fields import parse_markers
from flightrec.parse.format import MARKER_FORMS
from flightrec.record import afxdp, kernel_events, state, topology
from flightrec.record import app as appmod
from flightrec.record import forwarder as fwdmod
from flightrec.record.forwarder import Forwarder, ForwarderConfig
from flightrec.record.traffic import STAMP_CORRUPT, STAMP_PORT, Traffic, TrafficPlan
from flightrec.record.watch import Exit, Watch
from flightrec.report import pcap

EXIT_CLEAN, EXIT_ANOMALY, EXIT_ERROR = 0, 1, 2
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SLACK = 10.0  # seconds the forwarder may outlive the traffic before it is stopped
# Seconds between the forwarder's start and the traffic's: its readiness and
# the iperf3 start, which take many seconds in a loaded TCG guest (9.4 s seen
# with vm record --nic virtio).
SETUP_ALLOWANCE = 60.0
CAUSE_WINDOW = 0.3  # seconds after a helper's death in which another's may be its cause
INJECT_FRAMES = 1024
TRAFFIC_GRACE = 3.0  # seconds the traffic may take past --duration before it is stopped


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
    stamp_rate: int = TrafficPlan.stamp_rate  # stamped UDP packets per second (flightrec/record/traffic.py)
    # The user's program in the forwarder's place (flightrec/record/app.py), and
    # how long it may take to attach XDP and open an AF_XDP socket.
    app: Optional[str] = None
    app_ready_timeout: float = appmod.READY_TIMEOUT
    markers: str = MARKER_FORMS[0]  # a trace_marker line per ring operation, or per descriptor (docs/markers.md)
    tx_twins: bool = False  # the forwarder's --tx-twins: two sockets a queue share one COMPLETION ring

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
        if not 1 <= self.stamp_rate <= 1_000_000:
            raise FlightrecError(f"--stamp-rate must be between 1 and 1000000 packets/s, got {self.stamp_rate}")
        if self.inject_after is not None and self.inject_after < 0:
            raise FlightrecError(f"--inject-after must be >= 0, got {self.inject_after}")
        if self.nic not in topology.NIC_KINDS:
            raise FlightrecError(f"--nic must be one of {', '.join(topology.NIC_KINDS)}, got {self.nic!r}")
        if self.mode not in afxdp.MODES:
            raise FlightrecError(f"--mode must be one of {', '.join(afxdp.MODES)}, got {self.mode!r}")
        if self.markers not in MARKER_FORMS:
            raise FlightrecError(f"--markers must be one of {', '.join(MARKER_FORMS)}, got {self.markers!r}")
        if self.kernel_events not in kernel_events.BACKENDS:
            raise FlightrecError(f"--kernel-events must be one of {', '.join(kernel_events.BACKENDS)}")
        if self.app is not None:
            if self.inject is not None:
                raise FlightrecError(
                    "--inject commits a bug in flightrec's forwarder; with --app the program is yours (inject in it)"
                )
            if self.nic != "veth":
                raise FlightrecError("--app runs on the veth pairs only (not --nic virtio yet)")
            if self.tx_twins:
                raise FlightrecError(
                    "--tx-twins is a mode of flightrec's forwarder; with --app give it to {forwarder} yourself"
                )
            if self.app_ready_timeout <= 0:
                raise FlightrecError(f"--app-ready-timeout must be above 0 s, got {self.app_ready_timeout:g}")
            appmod.check_command(self.app)


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

    def error(self, message: str) -> None:
        """Something ends the recording early (a helper died); said the moment it is known."""


@dataclass(frozen=True)
class RecordResult:
    exit_code: int
    outcome: str  # clean | anomaly | forwarder-died | app-died | helper-died | interrupted | short | no-traffic | error
    message: str
    out_dir: Path
    trace_path: Optional[Path]
    meta: dict = field(default_factory=dict)


class Interrupted(BaseException):
    """A handled signal arrived; carries its number.

    A BaseException, as KeyboardInterrupt is: the handler raises it wherever the
    main thread happens to be, and library code's ``except Exception`` (click's
    isatty() around every echo, for one) must not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class HelperDied(Exception):
    """A process the recording started ended before its time; carries its :class:`Exit`."""

    def __init__(self, exit: Exit, message: str) -> None:
        super().__init__(message)
        self.exit = exit


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
    old = {sig: signal.signal(sig, handler) for sig in HANDLED_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield mode
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(opts: RecordOptions, observer: Optional[Observer] = None) -> RecordResult:
    """Run one recording; see the module docstring.

    :raises FlightrecError: usage or environment error (nothing left behind).
    """
    obs = observer or Observer()
    opts.check()
    reason = can_run()
    if reason:
        raise FlightrecError(reason)
    root = tracefs.ensure_mounted()
    # The lock first: a second recording refuses at once, before probing
    # anything (the BPF probe below loads programs and touches a tracing setting).
    with state.Lock(), signals_raise() as mode:
        reg = fresh_registry(obs)
        rec: Optional[_Recording] = None
        try:
            if opts.kernel_events != "none":
                # Probing the BPF backend loads a bpf_trace_printk program, and the
                # kernel then switches the top-level printk event on: registered
                # first, so that a SIGKILL during the probe is undone by cleanup.
                reg.extra["bpf_printk_toplevel"] = tracefs.toplevel_printk(root)
                reg.save()
            choice = kernel_events.choose_backend(opts.kernel_events, root)
            rec = _Recording(opts, obs, reg, mode, root, choice)
            return rec.run()
        finally:
            # Kept when the teardown could not remove everything: `flightrec
            # cleanup` then knows what is left.
            if rec is None or not rec.left_behind:
                reg.remove()


def fresh_registry(obs: Observer) -> state.Registry:
    """Under the lock: remove (and say) what a killed flightrec left, then start
    this run's crash registry. `record` and `attach` begin with it.

    :raises FlightrecError: the leftovers could not be removed.
    """
    left = state.find_leftovers()
    if left:
        obs.warning(
            "removing leftovers of a killed flightrec: "
            + ", ".join(
                [
                    *left.netns,
                    *(f"instance {i}" for i in left.instances),
                    *(f"{p.what} pid {p.pid}" for p in left.processes),
                ]
            )
        )
        failed = state.remove_leftovers(left)
        failed += remove_leftover_probes(left.extra)
        if failed:
            raise FlightrecError(f"could not remove leftovers: {', '.join(failed)}")
    state.clear_registry()
    return state.new_registry()


def remove_leftover_probes(extra: dict) -> list[str]:
    """Remove kernel probes a killed recording installed (its registry's extra)."""
    problems: list[str] = []
    if not extra:
        return problems
    root = tracefs.find_root()
    if "bpf_printk_toplevel" in extra and root:
        # A BPF program was loaded (the backend, or its probe) before flightrec put this back.
        problem = tracefs.restore_toplevel_printk(root, extra["bpf_printk_toplevel"])
        if problem:
            problems.append(problem)
    if extra.get("probes") is not None:
        problems += kernel_events.remove(extra["probes"])
    elif extra.get("probes_pending") and root:
        problems += kernel_events.remove_all_flightrec_probes(root)
    return problems


class _Recording:
    """The state of one run; ``run`` owns every resource and frees it in ``finally``."""

    def __init__(
        self,
        opts: RecordOptions,
        obs: Observer,
        reg: state.Registry,
        mode: list,
        root: Path,
        choice: kernel_events.Choice,
    ) -> None:
        self.opts = opts
        self.root = root
        self.choice = choice
        self.obs = obs
        self.reg = reg
        self.mode = mode
        self.out = opts.out_dir
        self.logs = self.out / runfolder.LOGS
        self.topo: Optional[topology.Topology] = None
        self.instance: Optional[tracefs.TraceInstance] = None
        self.fwd: Optional[Forwarder | appmod.App] = None  # the forwarder, or the user's program (--app)
        self.role = "app" if opts.app is not None else "forwarder"  # its name in the exits
        self.traffic: Optional[Traffic] = None
        self.probes_handle: Any = None
        self.bpf: Optional[kernel_events.BpfTracer] = None
        self.meta: dict = {}
        self.flagged: dict = {}  # what _save_flagged wrote, for meta.json
        self.nics: list[dict] = []  # the VM's NICs before they were moved (--nic virtio)
        self.teardown_errors: list[str] = []  # something could not be removed: cleanup's job
        self.teardown_notes: list[str] = []  # went wrong while stopping, but nothing is left
        self.save_errors: list[str] = []  # the trace could not be frozen or saved
        self.watch = Watch()
        self.exited: list[Exit] = []  # every helper exit seen, earliest first
        self.gave_up: dict[int, bool] = {}  # iperf3 pid -> it gave up by itself while traffic went on
        self.gave_up_notes: list[str] = []  # what was said of each, for meta.json
        self.died: Optional[HelperDied] = None  # the helper death that ended the recording
        self.t0: Optional[float] = None  # time.monotonic() when the traffic started
        self.frozen_at: Optional[float] = None  # time.monotonic() when tracing was stopped
        self.frozen_by_death = False  # xsk_trace's death froze the trace before the stop
        self.clock_offset: Optional[float] = None  # trace clock minus time.monotonic(), seconds

    @property
    def left_behind(self) -> bool:
        """True when the teardown could not remove everything."""
        return bool(self.teardown_errors)

    # --- helpers that die ------------------------------------------------------------
    def _started(self, proc: Any, what: str) -> None:
        """A child exists: into the crash registry and the exit watch."""
        self.reg.add_process(proc.pid, what)
        self.watch.add(proc, what, on_exit=self._freeze_at_once if what == "xsk_trace" else None)

    def _freeze_at_once(self, exit: Exit) -> None:
        """xsk_trace died: freeze the trace now, from the watch thread. The
        markers go on without kernel events and, at their rate, would overwrite
        the last kernel events within a tenth of a second, long before the
        recording's loop gets round to stopping."""
        if "teardown" in self.mode or self.instance is None or not self.instance.created:
            return  # stopped by the teardown, or no trace yet
        self.instance.stop()
        self.frozen_by_death = True

    def _is_death(self, exit: Exit) -> bool:
        """Whether this exit, before tracing was frozen, ends the recording early."""
        if self.frozen_at is not None and exit.at >= self.frozen_at:
            return False  # stopped by the teardown, or at least after the trace was complete
        if exit.what == "forwarder":
            return exit.code != fwdmod.EXIT_ANOMALY  # an anomaly is the forwarder's way to stop
        if exit.what == "app":
            # Its detection line stopped tracing (the trigger): its way to stop.
            return self.instance is None or self.instance.tracing_on
        if exit.what == "xsk_trace":
            return True  # kernel events end with it, whatever its status
        if exit.what == "stamp-recv" and exit.code == STAMP_CORRUPT:
            return False  # a corrupt payload received: its way to stop, like the forwarder's anomaly
        # iperf3: clients end after -t (started just before t0), servers after
        # their one test. A failure once that time is up is told with the
        # results; a clean exit half a second early is as much a death as a kill.
        if self.t0 is None or self.traffic is None:
            return True
        due = self.t0 + self.traffic.seconds
        early = exit.at < due and (exit.code != 0 or exit.at < due - 0.5)
        return early and not self._gave_up(exit)

    def _gave_up(self, exit: Exit) -> bool:
        """An iperf3 that gave up by itself (not a kill, not an interrupt) while
        other traffic still flows: said once as a warning, and the recording
        goes on, since what it records is the forwarder, not iperf3. The last
        sender giving up is a death: nothing would be left to record."""
        if exit.pid not in self.gave_up:
            reason = None
            if exit.code is not None and exit.code >= 0 and self.traffic is not None:
                reason = self.traffic.own_failure(exit.what)
            left = self.traffic.senders_left() if reason is not None and self.traffic is not None else []
            self.gave_up[exit.pid] = bool(left)
            if left:
                note = (
                    f"{self._describe_death(exit)}; it gave up ({reason}), "
                    f"the recording goes on with the traffic left: {', '.join(left)}"
                )
                self.gave_up_notes.append(note)
                self.obs.warning(note)
        return self.gave_up[exit.pid]

    def _death(self, skip: tuple[str, ...] = ()) -> Optional[Exit]:
        """The death that ends the recording, or None.

        One death brings others (a killed iperf3 client makes its server exit
        cleanly, sometimes first): of the deaths within CAUSE_WINDOW of the
        first, the cause is a kill before a failure before a clean exit.
        """
        self.exited.extend(self.watch.exits())
        self.exited.sort(key=lambda e: e.at)
        deaths = [e for e in self.exited if e.what not in skip and self._is_death(e)]
        if not deaths:
            return None
        wait = deaths[0].at + CAUSE_WINDOW - time.monotonic()
        if wait > 0 and (deaths[0].code or 0) >= 0:  # a kill is the cause already: no wait
            time.sleep(wait)
            self.exited = sorted(self.exited + self.watch.exits(), key=lambda e: e.at)
            deaths = [e for e in self.exited if e.what not in skip and self._is_death(e)]
        window = [e for e in deaths if e.at <= deaths[0].at + CAUSE_WINDOW]
        return min(window, key=lambda e: (0 if (e.code or 0) < 0 else 1 if e.code else 2, e.at))

    def _check_helpers(self, skip: tuple[str, ...] = ()) -> None:
        """:raises HelperDied: a helper (other than ``skip``) ended before its time."""
        exit = self._death(skip)
        if exit is not None:
            self._raise_died(exit)

    def _raise_died(self, exit: Exit) -> None:
        message = self._describe_death(exit)
        self.obs.error(f"{message}; stopping and saving the trace")
        raise HelperDied(exit, message)

    def _describe_death(self, exit: Exit) -> str:
        names = {
            "forwarder": "the forwarder",
            "xsk_trace": "xsk_trace (the BPF kernel-event loader)",
            "app": f"the app ({self.fwd.argv[0]})" if isinstance(self.fwd, appmod.App) else "the app",
        }
        parts = exit.what.split("-")  # iperf3-client-tcp -> iperf3 tcp client
        name = names.get(exit.what, " ".join([parts[0], *reversed(parts[1:])]))
        how = exit.how()
        if exit.what == "forwarder" and self.fwd is not None and self.fwd.exit_event:
            reason = self.fwd.exit_event.get("reason")
            how += f", reason: {reason}" if reason else ""
        when = (
            f"{exit.at - self.t0:.1f} s into the recording"
            if self.t0 is not None and exit.at >= self.t0
            else "during set-up"
        )
        message = f"{name} (pid {exit.pid}) {how} {when}"
        last = self._last_stderr_line(exit.what)
        if last:
            message += f"; its last stderr line: {last}"
        if exit.what == "xsk_trace":
            ended = self._trace_time(exit.at)
            message += "; the trace holds no kernel events after " + (
                f"{ended:.6f} (trace clock)" if ended is not None else "that"
            )
        return message

    def _last_stderr_line(self, what: str) -> str:
        path = self.logs / f"{what}.stderr"  # forwarder.stderr, xsk_trace.stderr, iperf3-server-tcp.stderr ...
        try:
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def _trace_time(self, monotonic: float) -> Optional[float]:
        """A time.monotonic() value on the trace clock (the same numbers when the clock is mono)."""
        if self.clock_offset is None:
            return None
        return round(monotonic + self.clock_offset, 6)

    def _measure_clock(self, clock: str) -> None:
        """Trace clock minus time.monotonic().

        The mono trace clock is ktime_get_mono_fast_ns, CLOCK_MONOTONIC itself
        (tests/kernel/test_kills.py checks markers against time.monotonic()):
        0. Another clock is measured from the "now ts" of CPU 0's buffer
        statistics, read between two time.monotonic() readings; the tightest
        of a few readings (under load one read can take milliseconds).
        """
        if clock == "mono":
            self.clock_offset = 0.0
            return
        assert self.instance is not None
        stats = self.instance.path / "per_cpu" / "cpu0" / "stats"
        best: Optional[tuple[float, float]] = None  # (span, offset)
        for _ in range(5):
            try:
                before = time.monotonic()
                text = stats.read_text()
                after = time.monotonic()
            except OSError:
                return
            now_ts = tracefs.parse_cpu_stats(0, text).now_ts
            if now_ts > 0 and (best is None or after - before < best[0]):
                best = (after - before, now_ts - (before + after) / 2)
        if best is not None:
            self.clock_offset = best[1]

    # --- the run -----------------------------------------------------------------
    def run(self) -> RecordResult:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.watch.close()
            raise FlightrecError(f"cannot create {self.logs}: {err.strerror}") from err
        try:
            runfolder.clear(runfolder.replaced_by_record(self.out))
        except FlightrecError:
            self.watch.close()
            raise
        started = utc_now()
        interrupted: Optional[Interrupted] = None
        error: Optional[FlightrecError] = None
        t_forwarding = 0.0
        code: Optional[int] = None
        trace_info: dict = {}
        stopped_by = "flightrec"
        try:
            self._setup()
            self.t0 = time.monotonic()
            stopped_by = self._wait(self.t0)
        except Interrupted as sig:
            interrupted = sig
            self.obs.warning(f"got {sig}; stopping and saving the trace")
        except HelperDied as died:
            self.died = died
            stopped_by = f"{died.exit.what} died"
        except FlightrecError as err:
            error = err
        finally:
            # From here on signals are only noted: a second Ctrl-C must not cut
            # the cleanup short. The teardown itself is bounded in time.
            self.mode.append("teardown")
            t_forwarding = time.monotonic() - self.t0 if self.t0 is not None else 0.0
            try:
                code, trace_info = self._stop_and_save()
            finally:
                try:
                    self._teardown()
                finally:
                    self.watch.close()
                    self.exited = sorted(self.exited + self.watch.exits(), key=lambda e: e.at)
        return self._result(started, code, stopped_by, t_forwarding, trace_info, interrupted, error)

    def _setup(self) -> None:
        opts = self.opts
        if self.choice.backend == "none":
            self.obs.warning(f"kernel events: {self.choice.reason}; missing: {', '.join(self.choice.missing)}")

        self.topo = topology.make_topology(str(os.getpid()), opts.queues, opts.nic, one_fwd_ns=opts.app is not None)
        self.obs.step(f"creating namespaces {', '.join(self.topo.namespaces)}")
        self.nics = topology.setup(self.topo, on_netns=self.reg.add_netns, mode=opts.mode)

        self.instance = tracefs.TraceInstance(root=self.root)
        self.reg.set_instance(self.instance.name)  # registered before it exists: a crash in between is covered
        self.instance.create()
        clock = self.instance.set_clock()
        self.instance.set_buffer_size_kb(opts.buffer_kb)
        trigger = self.instance.arm_traceoff_on_detection()
        self.instance.start()
        self._measure_clock(clock)
        self.obs.step(
            f"tracing into {self.instance.path} (clock {clock}, {self.instance.buffer_size_kb} KB per CPU, "
            f"trigger `{trigger}`)"
        )

        if self.choice.backend == "kprobes":
            self.probes_handle, problems = kernel_events.install(
                self.choice, self.instance.path, opts.probe_definitions, self.reg
            )
            for problem in problems:
                self.obs.warning(problem)
            events = kernel_events.installed_events(self.probes_handle)
            self.obs.step(f"kernel events: {', '.join(events) if events else 'none installed'}")
        elif self.choice.backend == "bpf":
            self._start_bpf()

        if opts.app is not None:
            self._start_app()
        else:
            self._start_forwarder()

        plan = TrafficPlan(duration=opts.duration, stamp_rate=opts.stamp_rate)
        self.traffic = Traffic(
            self.topo,
            plan,
            self.logs,
            on_process=self._started,
            check=self._check_helpers,
            trace_dir=self.instance.path,
        )
        self.traffic.start()
        self._check_helpers()
        checked = "the forwarder and the receiver" if opts.app is None else "the receiver"
        self.obs.step(
            f"traffic: iperf3 TCP and UDP, stamped UDP ({plan.stamp_rate} pkt/s, payloads checked by {checked}), "
            f"{self.topo.client_addr} -> {self.topo.server_addr}, {opts.duration:g} s"
        )

    def _start_app(self) -> None:
        """The user's program in the forwarder's namespace, its placeholders filled."""
        assert self.topo is not None and self.instance is not None
        topo, opts = self.topo, self.opts
        values = {
            "outer": topo.outer_dev,
            "inner": topo.inner_dev,
            "queues": str(opts.queues),
            "marker": str(self.instance.path / "trace_marker"),
            "tracedir": str(self.instance.path),
            "out": str(self.out.resolve()),
            "netns": topo.outer_ns,
            "forwarder": str(fwdmod.forwarder_path()),
        }
        app = appmod.App(opts.app or "", values, topo.outer_ns, (topo.outer_dev, topo.inner_dev), self.logs)
        self.fwd = app
        self.obs.step(f"starting the app in {topo.outer_ns}: {' '.join(app.argv)}")
        app.start()
        assert app.proc is not None
        self._started(app.proc, "app")
        app.wait_ready(opts.app_ready_timeout, check=lambda: self._check_helpers(skip=("app",)))
        self._check_helpers()
        ready = app.ready or {}
        socks = ready.get("sockets", [])
        xdp = ", ".join(f"{dev} {how}" for dev, how in (ready.get("xdp") or {}).items() if how)
        self.obs.step(
            f"app ready (pid {app.pid}): XDP on {xdp}; {len(socks)} AF_XDP socket(s) so far, mode "
            + ", ".join(sorted({s["mode"] for s in socks}))
            + " (XDP_OPTIONS)"
        )

    def _start_forwarder(self) -> None:
        assert self.topo is not None and self.instance is not None
        opts = self.opts
        config = ForwarderConfig(
            outer=self.topo.outer_spec,
            inner=self.topo.inner_spec,
            queues=opts.queues,
            trace_dir=self.instance.path,
            inject=opts.inject,
            inject_after=opts.inject_after,
            stats_path=self.out / runfolder.FORWARDER_STATS,
            # flightrec stops the forwarder when the traffic is done; its own
            # --duration (counted from its start, before the traffic's set-up)
            # is only the safety net should flightrec hang.
            duration=opts.duration + SLACK + SETUP_ALLOWANCE,
            # An injected duplicate is caught when the kernel reaches it in FILL,
            # after up to a quarter of the UMEM's frames: a small UMEM keeps the
            # injection inside the trace buffer.
            frames=INJECT_FRAMES if opts.inject else None,
            flagged_path=self.logs / pcap.FLAGGED_NAME,
            mode=opts.mode,
            payload_port=STAMP_PORT,  # the stamped flows' payloads are checked before forwarding
            markers=opts.markers,
            tx_twins=opts.tx_twins,
        )
        self.fwd = Forwarder(config, stderr_path=self.logs / "forwarder.stderr")
        self.fwd.start()
        assert self.fwd.proc is not None
        self._started(self.fwd.proc, "forwarder")
        # Its own failure to start is told by wait_ready, with its stderr.
        self.fwd.wait_ready(check=lambda: self._check_helpers(skip=("forwarder",)))
        self._check_helpers()
        self.obs.step(f"forwarder ready (pid {self.fwd.pid}, {opts.queues} queues per side)")
        self.obs.step(afxdp.describe(opts.mode, self.fwd.ready))

    def _start_bpf(self) -> None:
        """Load the BPF tracepoint backend, its lines enabled in the instance only."""
        assert self.topo is not None and self.instance is not None
        topo = self.topo
        devices = [
            kernel_events.netns_device(dev, ns)[0]
            for ns, dev in ((topo.outer_ns, topo.outer_dev), (topo.inner_ns, topo.inner_dev))
        ]
        kernel_events.enable_in(self.instance)
        before = tracefs.toplevel_printk(self.root)
        self.reg.extra["bpf_printk_toplevel"] = before
        self.reg.save()
        self.bpf = kernel_events.BpfTracer(devices, self.logs / "xsk_trace.stderr")
        ready = self.bpf.start(on_process=self._started)
        problem = tracefs.restore_toplevel_printk(self.root, before, settle=1.0)
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
        course), "forwarder" (it stopped on an anomaly), "trigger" (the
        kernel stopped tracing and the forwarder hangs) or "timeout".

        :raises HelperDied: a helper died (the forwarder too), noticed within 0.25 s.
        """
        assert self.fwd is not None and self.instance is not None and self.traffic is not None
        deadline = t0 + self.opts.duration + SLACK
        last_stats = t0
        tracing_off_since: Optional[float] = None
        while True:
            event = self.fwd.next_event(0.25)
            self._check_helpers()
            if self.traffic.corrupt_seen():
                self.obs.anomaly(
                    {"kind": "payload", "sock": f"stamp recv udp:{STAMP_PORT}", "line": self.traffic.corrupt_line()}
                )
                return "receiver"  # it wrote its detection line and stopped tracing
            now = time.monotonic()
            if event is not None:
                if event.kind == "anomaly":
                    self.obs.anomaly(event.data)
                elif event.kind == "eof":
                    # stdout closes as it exits: its status tells an anomaly from a death.
                    code = self.fwd.wait(5.0)
                    self.exited.extend(self.watch.exits())
                    if not any(e.what == self.role for e in self.exited):  # the watch lags behind
                        self.exited.append(Exit(self.role, self.fwd.pid or 0, time.monotonic(), code))
                    self._check_helpers()
                    return "forwarder" if self.role == "forwarder" else "trigger"  # the app: tracing is off
                elif event.kind == "exit":
                    d = event.data
                    self.obs.step(
                        f"forwarder exit: code {d.get('code')} ({d.get('reason')}), markers {d.get('markers')}"
                    )
            # Stats come from the forwarder once a second; tick without them
            # only when it is silent, so the view still shows time passing.
            if event is not None and event.kind == "stats" or now - last_stats >= 2.0:
                last_stats = now
                self.obs.stats(self._live(now - t0))
                if self.bpf is not None:
                    # The kernel's late switch-on of the top-level printk
                    # event can come after the settle wait under load.
                    tracefs.restore_toplevel_printk(self.root, self.reg.extra.get("bpf_printk_toplevel"))
            # iperf3 clients can linger past their -t swapping results over a
            # slow control connection: the duration asked for is what counts.
            if self.traffic.finished() or now - t0 >= self.opts.duration + TRAFFIC_GRACE:
                return "duration"
            # The kernel trigger stops the buffer on a detection line even if
            # the forwarder hangs; give it a moment to exit by itself. With the
            # BPF backend the trigger may also be its online race detector's,
            # which no program exits on.
            if not self.instance.tracing_on:
                if tracing_off_since is None and self.bpf is not None:
                    self.obs.step(
                        "tracing stopped by a trigger (a detection line, or the BPF backend's online race detector)"
                    )
                tracing_off_since = tracing_off_since or now
                if now - tracing_off_since > (3.0 if self.bpf is None else 0.5):
                    self.obs.warning(f"tracing stopped (trigger) but the {self.role} keeps running; stopping it")
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
            elapsed=elapsed,
            duration=self.opts.duration,
            rx=tuple(int(x) for x in stats.get("rx", [])),
            tx=tuple(int(x) for x in stats.get("tx", [])),
            markers=int(stats.get("markers", 0)),
            buffer_fill=fill,
            tracing_on=on,
            # The forwarder lists the outer sockets by queue, then the inner ones.
            sockets=tuple(f"{side} q:{q}" for side in ("outer", "inner") for q in range(self.opts.queues)),
            drops=tuple(int(x) for x in stats.get("drops", [])),
        )

    # --- stop, save, tear down -------------------------------------------------------
    def _stop_and_save(self) -> tuple[Optional[int], dict]:
        """Freeze the buffer, stop the children, save trace and stats."""
        info: dict = {}
        if self.instance is not None and self.instance.created:
            self.obs.step("saving the trace")
            try:
                info["tracing_on_at_stop"] = self.instance.tracing_on
                self.instance.stop()  # freeze first: teardown traffic must not overwrite the story
            except (OSError, FlightrecError) as err:
                self.save_errors.append(f"stopping tracing: {err}")
        self.frozen_at = time.monotonic()
        if self.died is None and (info.get("tracing_on_at_stop") or self.frozen_by_death):
            # A death in the last moments before the freeze still cut the trace
            # short (not so when the forwarder or the trigger had frozen it already).
            exit = self._death()
            if exit is not None:
                try:
                    self._raise_died(exit)
                except HelperDied as died:
                    self.died = died
        # The senders before the forwarder: its exit closes its sockets, and a zero-copy
        # socket on virtio-net closed while packets still arrive has the driver refill an
        # empty FILL ring as it disables the pool, the suspected cause of a rare guest hang
        # here (issue #17, I9b). A forwarder that has stopped by itself keeps its exit code.
        if self.traffic is not None:
            self.traffic.stop()
        code = None
        if self.fwd is not None:
            code = self.fwd.wait(0.5)
            if code is None:
                code = self.fwd.stop()
        self._save_flagged()
        if self.instance is not None and self.instance.created:
            trace_path = self.out / runfolder.TRACE
            try:
                info["bytes"] = self.instance.save_trace(trace_path)
                info["path"] = str(trace_path)
                info["per_cpu"] = [asdict(s) for s in self.instance.cpu_stats()]
                info["clock"] = self.instance.clock
                info["buffer_size_kb"] = self.instance.buffer_size_kb
                info["fill_to_rx_markers"] = _count_fill_to_rx(trace_path)
            except (OSError, FlightrecError) as err:
                self.save_errors.append(f"saving the trace: {err}")
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
                self.flagged = {"packets": len(packets), "pcap": str(self.out / pcap.PCAP_NAME), "source": str(source)}
        except FlightrecError as err:  # the trace still stands: a warning, not a failed run
            self.obs.warning(f"no {pcap.PCAP_NAME}: {err}")

    def _teardown(self) -> None:
        """Undo everything in reverse order; collect, never raise."""
        if self.topo is not None:
            self.obs.step("tearing down")
        if self.fwd is not None:
            self.fwd.stop()
        if self.traffic is not None:
            self.traffic.stop()
        if self.bpf is not None:
            code = self.bpf.stop()
            reported = self.died is not None and self.died.exit.what == "xsk_trace"
            if code != 0 and not reported:
                # Its links went with the process: nothing is left, and the trace
                # was frozen before it stopped. Worth saying, not cleanup's business.
                self.teardown_notes.append(
                    f"xsk_trace {fwdmod.describe_exit(code)} while stopping: {self.bpf.stderr_tail() or 'no stderr'}"
                )
            # Again: the kernel's late top-level enable may have come after setup's restore.
            problem = tracefs.restore_toplevel_printk(self.root, self.reg.extra.get("bpf_printk_toplevel"))
            if problem:
                self.teardown_errors.append(problem)
        if self.probes_handle is not None:
            try:
                self.teardown_errors.extend(kernel_events.remove(self.probes_handle))
            except Exception as err:  # noqa: BLE001 - a probe backend failing must not stop the teardown
                self.teardown_errors.append(f"removing probes: {err}")
        if self.instance is not None:
            try:
                self.instance.close()
            except FlightrecError as err:
                self.teardown_errors.append(str(err))
            # A signal between its mkdir and the note that it was made.
            if not self.instance.created and self.instance.name in tracefs.list_instances(self.root):
                if not tracefs.remove_instance(self.instance.name, self.root):
                    self.teardown_errors.append(f"tracefs instance {self.instance.name} not removed")
        if self.topo is not None:
            left = topology.teardown(self.topo)
            if left:
                self.teardown_errors.append(f"namespaces not removed: {', '.join(left)}")
        for err in self.save_errors + self.teardown_notes + self.teardown_errors:
            self.obs.warning(err)
        if not self.teardown_errors and self.topo is not None:
            self.obs.step("teardown complete: namespaces, links, XDP programs and tracefs instance removed")

    def _forwarder_died_after_freeze(self, code: Optional[int]) -> bool:
        """The forwarder ended neither cleanly nor on an anomaly, but only once tracing was stopped."""
        if code in (fwdmod.EXIT_CLEAN, fwdmod.EXIT_ANOMALY, None) or self.frozen_at is None or self.died:
            return False
        exits = [e for e in self.exited if e.what == "forwarder"]
        return bool(exits) and exits[0].at >= self.frozen_at

    # --- the result ------------------------------------------------------------------
    def _result(
        self,
        started: str,
        code: Optional[int],
        stopped_by: str,
        t_forwarding: float,
        trace_info: dict,
        interrupted: Optional[Interrupted],
        error: Optional[FlightrecError],
    ) -> RecordResult:
        if error is not None and not trace_info.get("bytes"):
            raise error
        outcome, exit_code, message = self._outcome(code, stopped_by, t_forwarding, interrupted, error)
        fwd = self.fwd
        traffic = self.traffic.results() if self.traffic else []
        if outcome == "clean" and not isinstance(fwd, appmod.App):  # the app keeps no count flightrec can read
            counts = (fwd.exit_event or fwd.last_stats or {}) if fwd else {}
            failed = [f"{r.name} {r.error or f'exit {r.exit_code}'}" for r in traffic if r.exit_code != 0 or r.error]
            if sum(int(n) for n in counts.get("rx", [])) == 0:
                outcome, exit_code = "no-traffic", EXIT_ERROR
                message = f"no packet reached the forwarder in {t_forwarding:.1f} s (iperf3: {'; '.join(failed)})"
            elif failed:
                message += f"; iperf3 trouble: {'; '.join(failed)} (logs in {self.logs})"
        if self.save_errors:
            message += f" ({'; '.join(self.save_errors)})"
        if self.teardown_errors:
            message += f" (teardown: {'; '.join(self.teardown_errors)}; run `flightrec cleanup`)"
        if (self.save_errors or self.teardown_errors) and exit_code == EXIT_CLEAN:
            exit_code = EXIT_ERROR
        self.meta = self._meta(
            started, outcome, exit_code, message, code, stopped_by, t_forwarding, trace_info, traffic
        )
        runfolder.write_meta(self.out, self.meta)
        trace_path = self.out / runfolder.TRACE if trace_info.get("bytes") is not None else None
        return RecordResult(exit_code, outcome, message, self.out, trace_path, self.meta)

    def _outcome(
        self,
        code: Optional[int],
        stopped_by: str,
        t_forwarding: float,
        interrupted: Optional[Interrupted],
        error: Optional[FlightrecError],
    ) -> tuple[str, int, str]:
        """(outcome, exit code, message) from how the recording ended, before the traffic is counted."""
        fwd = self.fwd
        anomalies = fwd.anomalies if fwd else []
        detected = bool(anomalies) or code == fwdmod.EXIT_ANOMALY or stopped_by in ("trigger", "receiver")
        status = code  # what decides the outcome; meta.json keeps the real exit code
        if isinstance(fwd, appmod.App):
            # The app's own status decides nothing: it was stopped by flightrec
            # (whatever it returns on SIGINT), or it died (self.died), or its
            # detection line stopped tracing (detected).
            status = fwdmod.EXIT_CLEAN
        if self._forwarder_died_after_freeze(code):
            # The trace was complete: the run stands; only its exit statistics are missing.
            self.teardown_notes.append(
                f"the forwarder {fwdmod.describe_exit(code)} while being stopped, after "
                "the trace was frozen: no exit statistics"
            )
            self.obs.warning(self.teardown_notes[-1])
            status = fwdmod.EXIT_CLEAN
        if interrupted is not None:
            outcome, exit_code = "interrupted", 128 + interrupted.signum
            message = f"interrupted by {interrupted}"
        elif self.died is not None:
            outcome = {"forwarder": "forwarder-died", "app": "app-died"}.get(self.died.exit.what, "helper-died")
            exit_code, message = EXIT_ERROR, str(self.died)
        elif detected:
            outcome, exit_code = "anomaly", EXIT_ANOMALY
            message = "anomaly caught; tracing stopped"
        elif error is not None:
            outcome, exit_code, message = "error", EXIT_ERROR, str(error)
        elif status == fwdmod.EXIT_CLEAN and stopped_by == "duration" and t_forwarding >= self.opts.duration - 1:
            outcome, exit_code = "clean", EXIT_CLEAN
            message = f"ran {t_forwarding:.1f} s with no anomaly"
        elif status == fwdmod.EXIT_CLEAN:
            outcome, exit_code = "short", EXIT_ERROR
            message = f"recording ended ({stopped_by}) after {t_forwarding:.1f} s of {self.opts.duration:g}"
        else:
            outcome, exit_code = "forwarder-died", EXIT_ERROR
            tail = fwd.stderr_tail(3) if fwd else ""
            message = f"forwarder {fwdmod.describe_exit(code)} after {t_forwarding:.1f} s (stderr: {tail})"
        return outcome, exit_code, message

    def _meta(
        self,
        started: str,
        outcome: str,
        exit_code: int,
        message: str,
        code: Optional[int],
        stopped_by: str,
        t_forwarding: float,
        trace_info: dict,
        traffic: list,
    ) -> dict:
        """meta.json: the outcome, the kernel events, the options, the sockets, the trace, the processes."""
        fwd = self.fwd
        anomalies = fwd.anomalies if fwd else []
        died = self.died.exit if self.died is not None else None
        bpf_died = died is not None and died.what == "xsk_trace"

        return {
            "flightrec": __version__,
            "started": started,
            "ended": utc_now(),
            "outcome": outcome,
            "exit_code": exit_code,
            "message": message,
            "kernel": {"release": platform.release(), "machine": platform.machine()},
            "kernel_events": {
                **self.choice.as_dict(),
                "installed": kernel_events.installed_events(self.probes_handle)
                if self.bpf is None
                else [f"{name} ({tp})" for name, tp in kernel_events.BPF_TRACEPOINTS.items()],
                "problems": list(self.probes_handle.get("problems", []))
                if isinstance(self.probes_handle, dict)
                else [],
                "bpf": None
                if self.bpf is None
                else {
                    "argv": self.bpf.argv(),
                    "ready": self.bpf.ready,
                    "exit": self.bpf.exit_event,
                    "exit_code": self.bpf.proc.returncode if self.bpf.proc else None,
                },
                # When the kernel-event source died before tracing was stopped:
                # the moment it did, on the trace clock. No kernel event after
                # it reached the trace, whatever the kernel did.
                "ended_at": self._trace_time(died.at) if bpf_died and died is not None else None,
                "ended_by": f"xsk_trace {died.how()}" if bpf_died and died is not None else None,
            },
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()},
            "topology": self.topo.as_dict() if self.topo else None,
            # Per socket: driver, queue, the mode read back (XDP_OPTIONS), XDP attach, rings, XDP_STATISTICS.
            "af_xdp": (
                fwd.af_xdp()
                if isinstance(fwd, appmod.App)
                else afxdp.summary(
                    self.opts.mode,
                    self.opts.nic,
                    fwd.ready if fwd else None,
                    fwd.read_stats_file() if fwd else None,
                    self.nics,
                )
            ),
            "trace": {
                "instance": self.instance.name if self.instance else None,
                # Trace clock minus CLOCK_MONOTONIC (0 for the mono clock: the same clock).
                "clock_offset_s": None if self.clock_offset is None else round(self.clock_offset, 6),
                "trigger": f'traceoff if buf ~ "{tracefs.DETECTION_GLOB}"',
                # The BPF backend's online race detector (c/xsk_trace), when it ran.
                "kernel_trigger": kernel_events.RACE_TRIGGER if self.bpf is not None else None,
                "stopped_by": "forwarder" if code == fwdmod.EXIT_ANOMALY else stopped_by,
                runfolder.MARKERS_KEY: self.opts.markers,
                **trace_info,
            },
            "app": {**fwd.as_meta(), "forwarding_seconds": round(t_forwarding, 3)}
            if isinstance(fwd, appmod.App)
            else None,
            "forwarder": None
            if isinstance(fwd, appmod.App)
            else {
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
            # iperf3s that gave up by themselves while other traffic went on.
            "gave_up": list(self.gave_up_notes),
            # The helper whose death ended the recording early, if one did.
            "died": None
            if died is None
            else {
                "what": died.what,
                "pid": died.pid,
                "how": died.how(),
                "code": died.code,
                "seconds_into_recording": None if self.t0 is None or died.at < self.t0 else round(died.at - self.t0, 3),
                "trace_time": self._trace_time(died.at),
                "stderr": self._last_stderr_line(died.what) or None,
            },
        }


def _count_fill_to_rx(path: Path) -> int:
    """How many ``FILL -> RX`` transitions the saved trace's markers hold (a
    batched line's every descriptor counted)."""
    count = 0
    with open(path, encoding="utf-8", errors="replace") as trace:
        for line in trace:
            if "tracing_mark_write:" in line and "FILL -> RX" in line:
                events = parse_markers(line.rstrip("\n").split("tracing_mark_write: ", 1)[-1]) or ()
                count += sum(1 for m in events if m[3] == "FILL" and m[4] == "RX")
    return count
