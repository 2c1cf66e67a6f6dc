"""`flightrec attach`: record an AF_XDP program that is already running.

No namespaces, no traffic, no forwarder: a private tracefs instance, the
kernel events scoped to the interface (the BPF backend filters by the
device's namespace and ifindex; kprobes see every socket), the two triggers
(the application's detection lines, the BPF backend's online race line), and
then nothing but waiting: until tracing stops on a trigger, ``--duration``,
the program's exit (with ``--pid``) or Ctrl-C. The trace is saved and
analyzed like a recording's. The program is never touched: flightrec reads
its sockets (mode, XDP_STATISTICS) through pidfd_getfd and writes nothing to
it. Every exit path removes what attach made; a SIGKILL of flightrec leaves
its registry for `flightrec cleanup`, as `record` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flightrec import runfolder, tracefs
from flightrec.errors import FlightrecError
from flightrec.record import kernel_events, state
from flightrec.record.app import xsk_sockets
from flightrec.record.session import (
    EXIT_ANOMALY,
    EXIT_CLEAN,
    EXIT_ERROR,
    Interrupted,
    Observer,
    fresh_registry,
    signals_raise,
    utc_now,
)

POLL = 0.1  # seconds between looks at tracing_on and the program


@dataclass(frozen=True)
class AttachOptions:
    iface: str
    out_dir: Path = Path("flightrec-attach")
    netns: Optional[str] = None  # a name under /run/netns; None: flightrec's own namespace
    pid: Optional[int] = None
    duration: Optional[float] = None  # None: until a trigger, the program's exit or Ctrl-C
    buffer_kb: int = 4096
    kernel_events: str = "auto"

    def check(self) -> None:
        """:raises FlightrecError: an option is out of range."""
        if self.duration is not None and not 0 < self.duration <= 7 * 24 * 3600:
            raise FlightrecError(f"--duration must be between 0 and 604800 s, got {self.duration:g}")
        if self.buffer_kb < 4:
            raise FlightrecError(f"-b must be at least 4 KB, got {self.buffer_kb}")
        if self.kernel_events not in kernel_events.BACKENDS or self.kernel_events == "none":
            raise FlightrecError("--kernel-events must be auto, kprobes or bpf: attach records the kernel's side")


@dataclass(frozen=True)
class AttachResult:
    exit_code: int
    outcome: str  # anomaly | duration | program-exited | interrupted
    message: str
    out_dir: Path
    trace_path: Optional[Path]
    meta: dict


def program_sockets(pid: int) -> list[dict]:
    """The AF_XDP sockets of process ``pid`` (mode, XDP_STATISTICS).

    :raises FlightrecError: no such process, or it holds no AF_XDP socket.
    """
    if not Path(f"/proc/{pid}").is_dir():
        raise FlightrecError(f"no process {pid}")
    socks = xsk_sockets([pid])
    if not socks:
        raise FlightrecError(f"process {pid} holds no AF_XDP socket: not an AF_XDP program (or not yet bound)")
    return [s.__dict__ for s in socks]


def attach(opts: AttachOptions, obs: Optional[Observer] = None) -> AttachResult:
    """Record the running program until a trigger, the duration, its exit or a signal.

    :raises FlightrecError: bad input or environment (nothing left behind).
    """
    obs = obs or Observer()
    opts.check()
    if os.geteuid() != 0:
        raise FlightrecError("must run as root (tracefs and BPF need it); try sudo")
    dev, ifindex = kernel_events.netns_device(opts.iface, opts.netns)
    sockets_before = program_sockets(opts.pid) if opts.pid is not None else []
    root = tracefs.ensure_mounted()
    with state.Lock(), signals_raise() as mode:
        reg = fresh_registry(obs)
        reg.extra["bpf_printk_toplevel"] = tracefs.toplevel_printk(root)
        reg.save()
        problems: list[str] = []
        try:
            return _run(opts, obs, reg, mode, root, dev, ifindex, sockets_before, problems)
        except BaseException:
            # Before _run's own teardown (choosing the backend failed): its BPF
            # probe may have switched the top-level printk event on.
            problem = tracefs.restore_toplevel_printk(root, reg.extra["bpf_printk_toplevel"])
            if problem:
                problems.append(problem)
                obs.warning(f"{problem}; run `flightrec cleanup`")
            raise
        finally:
            if not problems:
                reg.remove()


# Long by nature: set-up, wait and teardown in one try/finally, so every way out removes what was set up.
def _run(
    opts: AttachOptions,
    obs: Observer,
    reg: state.Registry,
    mode: list,
    root: Path,
    dev: str,
    ifindex: int,
    sockets_before: list[dict],
    problems: list[str],
) -> AttachResult:
    choice = kernel_events.choose_backend(opts.kernel_events, root)
    if choice.backend == "none":
        raise FlightrecError(f"no kernel events here ({choice.reason}): attach has nothing to record")
    logs = opts.out_dir / runfolder.LOGS
    try:
        logs.mkdir(parents=True, exist_ok=True)
        runfolder.clear(runfolder.replaced_by_record(opts.out_dir))
    except OSError as err:
        raise FlightrecError(f"cannot create {logs}: {err.strerror}") from err
    started = utc_now()
    instance = tracefs.TraceInstance(root=root)
    bpf: Optional[kernel_events.BpfTracer] = None
    probes_handle = None
    outcome, message, code = "duration", "", EXIT_CLEAN
    trace_info: dict = {}
    t0 = time.monotonic()
    try:
        reg.set_instance(instance.name)
        instance.create()
        clock = instance.set_clock()
        instance.set_buffer_size_kb(opts.buffer_kb)
        instance.arm_traceoff_on_detection()
        if choice.backend == "bpf":
            kernel_events.enable_in(instance)
            bpf = kernel_events.BpfTracer([dev], logs / "xsk_trace.stderr")
            bpf.start(on_process=lambda p, what: reg.add_process(p.pid, what))
            problem = tracefs.restore_toplevel_printk(root, reg.extra["bpf_printk_toplevel"], settle=1.0)
            if problem:
                obs.warning(problem)
        elif choice.backend == "kprobes":
            probes_handle, warned = kernel_events.install(choice, instance.path, reg=reg)
            for w in warned:
                obs.warning(w)
        instance.start()
        where = f"{opts.iface} (ifindex {ifindex}{f', namespace {opts.netns}' if opts.netns else ''})"
        obs.step(
            f"attached to {where}: kernel events {choice.backend} ({choice.reason}), tracing into "
            f"{instance.path} (clock {clock}); until "
            + ", ".join(
                [
                    *([f"{opts.duration:g} s"] if opts.duration else []),
                    *([f"pid {opts.pid} exits"] if opts.pid else []),
                    "a trigger",
                    "Ctrl-C",
                ]
            )
        )
        t0 = time.monotonic()
        outcome, message = _wait(opts, instance, bpf, t0)
        code = EXIT_ANOMALY if outcome == "anomaly" else EXIT_CLEAN
    except Interrupted as sig:
        outcome, message, code = "interrupted", f"interrupted by {sig}", 128 + sig.signum
    finally:
        mode.append("teardown")
        elapsed = time.monotonic() - t0
        sockets_after = []
        if opts.pid is not None and Path(f"/proc/{opts.pid}").is_dir():
            sockets_after = [s.__dict__ for s in xsk_sockets([opts.pid])]
        if instance.created:
            try:
                instance.stop()
                path = opts.out_dir / runfolder.TRACE
                trace_info = {
                    "bytes": instance.save_trace(path),
                    "path": str(path),
                    "clock": instance.clock,
                    "per_cpu": [s.__dict__ for s in instance.cpu_stats()],
                }
            except (OSError, FlightrecError) as err:
                obs.warning(f"saving the trace: {err}")
        if bpf is not None:
            bpf.stop()
        if probes_handle is not None:
            problems.extend(kernel_events.remove(probes_handle))
        try:
            instance.close()
        except FlightrecError as err:
            problems.append(str(err))
        problem = tracefs.restore_toplevel_printk(root, reg.extra.get("bpf_printk_toplevel"))
        if problem:
            problems.append(problem)
        for p in problems:
            obs.warning(f"{p}; run `flightrec cleanup`")
    meta = {
        "flightrec_attach": True,
        "started": started,
        "ended": utc_now(),
        "outcome": outcome,
        "exit_code": code,
        "message": message,
        "seconds": round(elapsed, 3),
        "attach": {
            "iface": opts.iface,
            "ifindex": ifindex,
            "netns": opts.netns,
            "pid": opts.pid,
            "device_filter": dev if bpf is not None else None,
        },
        "kernel_events": {
            **choice.as_dict(),
            "installed": (
                [f"{n} ({tp})" for n, tp in kernel_events.BPF_TRACEPOINTS.items()]
                if bpf is not None
                else kernel_events.installed_events(probes_handle)
            ),
        },
        # Read through pidfd_getfd, before and after: the mode and the kernel's counters.
        "af_xdp": {"sockets_at_start": sockets_before, "sockets_at_end": sockets_after},
        "trace": {
            "instance": instance.name,
            "trigger": f'traceoff if buf ~ "{tracefs.DETECTION_GLOB}"',
            "kernel_trigger": kernel_events.RACE_TRIGGER if bpf is not None else None,
            **trace_info,
        },
    }
    runfolder.write_meta(opts.out_dir, meta)
    trace = opts.out_dir / runfolder.TRACE
    if problems and code == EXIT_CLEAN:
        code = EXIT_ERROR
    return AttachResult(code, outcome, message, opts.out_dir, trace if trace.is_file() else None, meta)


def _wait(
    opts: AttachOptions, instance: tracefs.TraceInstance, bpf: Optional[kernel_events.BpfTracer], t0: float
) -> tuple[str, str]:
    """Until a trigger stopped tracing, the duration, the program's exit or the BPF loader's."""
    while True:
        if not instance.tracing_on:
            return "anomaly", "tracing stopped by a trigger (a detection line, or the online race detector)"
        if opts.duration is not None and time.monotonic() - t0 >= opts.duration:
            return "duration", f"attached {opts.duration:g} s"
        if opts.pid is not None and not Path(f"/proc/{opts.pid}").is_dir():
            return "program-exited", f"process {opts.pid} exited after {time.monotonic() - t0:.1f} s"
        if bpf is not None and bpf.proc is not None and bpf.proc.poll() is not None:
            instance.stop()
            raise FlightrecError(
                f"xsk_trace (the BPF kernel-event loader) exited with {bpf.proc.returncode}: "
                f"{bpf.stderr_tail() or 'no stderr'}"
            )
        time.sleep(POLL)
