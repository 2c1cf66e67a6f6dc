"""`flightrec vm record`: the whole recording, with real kprobes, inside a disposable VM.

Host: fetch the kernel (cached), resolve the probes in its debug vmlinux
with the probes resolver, boot the guest. Guest (flightrec/cli/guest.py, with flightrec/vm/guest.py):
install the host's probe definitions, run the ordinary recording into the
job folder. Host again: copy the trace back, analyze it, write vm.json with
the timings. The exit code is the recording's (0 clean, 1 anomaly, 2 error,
128+N stopped early by signal N).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from flightrec import locate, runfolder
from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import gnu_build_id
from flightrec.record import afxdp, nics, topology
from flightrec.vm import runner
from flightrec.vm.kernel import GuestKernel, guest_kernel
from flightrec.vm.qemu import VmConfig, tools_missing
from flightrec.vm.zerocopy import zerocopy_missing

# Seconds the guest may spend beyond --duration: python imports under TCG,
# namespaces, forwarder start, teardown, writing the trace to the host.
SLACK = 150.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class VmRecordOptions:
    out_dir: Path
    duration: float = 20.0
    kernel: Optional[str] = None  # None: Debian 12's newest 6.1 cloud kernel
    config: VmConfig = field(default_factory=VmConfig)
    record_args: tuple[str, ...] = ()  # more `flightrec record` options, passed through
    timeout: Optional[float] = None  # the guest's command; default duration + SLACK
    boot_timeout: float = runner.DEFAULT_BOOT_TIMEOUT
    # Boots in all when the guest dies before the recording starts (an intermittent
    # panic at boot under TCG); never retried once it has started.
    boot_attempts: int = 3
    stall_timeout: float = runner.STALL_TIMEOUT  # the progress watchdog (runner's notes)
    analyze: bool = True
    # Run the guest's recording under this command (e.g. a fault amplifier that
    # wraps it: ("python3", "-m", "flightrec.probes.widen", "run", "--")).
    guest_prefix: tuple[str, ...] = ()
    # More files for the guest's job folder ($FLIGHTREC_VM_JOB/<name>), e.g. a plan.
    guest_files: tuple[tuple[str, str], ...] = ()
    nic: str = "veth"  # or "virtio": the guest's own virtio-net NICs (flightrec/record/nics.py)
    mode: str = "copy"  # AF_XDP bind in the guest: copy, zerocopy or auto


@dataclass(frozen=True)
class VmRecordResult:
    exit_code: int
    out_dir: Path
    trace: Optional[Path]
    verdict_line: Optional[str]
    timings: dict
    stopped_by: Optional[int] = None  # a signal asked the guest to stop early (its trace is saved)


@dataclass(frozen=True)
class RecordArgs:
    """`flightrec record`'s options as its own command parsed them."""

    params: dict  # every option's value, defaults included
    given: frozenset[str]  # the options given on the command line


# record's parser: the command line is the CLI's, so `flightrec vm record` hands it in
# (flightrec.cli.record.parse_record_args). :raises FlightrecError: an option record would refuse.
ParseRecordArgs = Callable[[list[str]], RecordArgs]


def check_record_args(args: list[str], parse: ParseRecordArgs) -> dict:
    """Parse the passed-through options with record's own parser, before anything boots.

    :raises FlightrecError: an option record would refuse.
    """
    if any(a in ("-o", "--output") or a.startswith("--output=") for a in args):
        raise FlightrecError("give -o to `flightrec vm record` itself (the guest writes into a scratch folder)")
    return parse(list(args)).params


# The stamped traffic a TCG guest is asked for: at record's 20 kpps its sender
# got ~3 kpps out and starved iperf3's TCP (a 10-minute zero-copy run on 7.3:
# TCP received 0 bytes, stamp 1.7M of 6.0M packets).
VM_STAMP_RATE = 2000


def nic_record_args(nic: str, mode: str, record: RecordArgs) -> list[str]:
    """The guest recording's --nic/--mode (and, unless given, --queues 1 for virtio
    and VM_STAMP_RATE), ``record`` being the passed-through record options, parsed.

    :raises FlightrecError: a bad value, or more queues than QEMU's hub netdevs give a virtio NIC.
    """
    if nic not in topology.NIC_KINDS:
        raise FlightrecError(f"--nic must be one of {', '.join(topology.NIC_KINDS)}, got {nic!r}")
    if mode not in afxdp.MODES:
        raise FlightrecError(f"--mode must be one of {', '.join(afxdp.MODES)}, got {mode!r}")
    if {"nic", "mode"} & record.given:
        raise FlightrecError("give --nic and --mode to `flightrec vm record` itself (they set up the VM's NICs too)")
    args = ["--nic", nic, "--mode", mode]
    if nic == "virtio":
        queues = int(record.params["queues"]) if "queues" in record.given else None
        if queues is not None and queues > nics.QUEUE_PAIRS:
            raise FlightrecError(
                f"--nic virtio: QEMU's hubport netdevs give each virtio-net NIC {nics.QUEUE_PAIRS} "
                f"queue pair (a virtio-net device has as many as its peer), so --queues {queues} "
                f"cannot bind; pass --queues {nics.QUEUE_PAIRS}"
            )
        if queues is None:
            args += ["--queues", str(nics.QUEUE_PAIRS)]
    if "stamp_rate" not in record.given:
        args += ["--stamp-rate", str(VM_STAMP_RATE)]
    return args


def probe_definitions(kernel: GuestKernel, kernel_events: str, say: Say) -> Optional[dict]:
    """The kprobe_events definitions for the guest kernel, resolved here on the host.

    None when the recording runs without kernel probes (--kernel-events none,
    or auto with no debug vmlinux).

    :raises FlightrecError: --kernel-events kprobes and nothing could be resolved.
    """
    from flightrec import probes

    if kernel_events == "none":
        return None
    if kernel.vmlinux is None:
        why = f"no debug vmlinux for {kernel.release} (for a bzImage: put vmlinux beside it)"
        if kernel_events == "kprobes":
            raise FlightrecError(f"--kernel-events kprobes: {why}")
        say(f"warning: {why}; recording markers alone")
        return None
    t = time.monotonic()
    prepared = probes.prepare(kernel.vmlinux, for_running_kernel=False)
    for problem in prepared.problems:
        say(f"warning: {problem}")
    if not prepared.definitions:
        if kernel_events == "kprobes":
            raise FlightrecError(f"--kernel-events kprobes: no probe could be resolved in {kernel.vmlinux}")
        return None
    say(
        f"probes: {len(prepared.definitions)} kprobe definitions from {kernel.vmlinux} "
        f"in {time.monotonic() - t:.1f} s ({', '.join(d.event for d in prepared.definitions)})"
    )
    return {
        "release": kernel.release,
        "build_id": gnu_build_id(kernel.vmlinux),
        "vmlinux": str(kernel.vmlinux),
        "definitions": [asdict(d) for d in prepared.definitions],
        "problems": list(prepared.problems),
    }


def vm_record(
    opts: VmRecordOptions,
    parse_record_args: ParseRecordArgs,
    say: Say = lambda _: None,
    on_output: Say = lambda _: None,
) -> VmRecordResult:
    """Run `flightrec record` in a fresh VM and bring the trace back to ``opts.out_dir``;
    ``parse_record_args`` checks ``opts.record_args`` before anything boots.

    :raises FlightrecError: QEMU or a kernel missing, bad options, boot failure, watchdog.
    :raises runner.Interrupted: SIGINT/SIGTERM/SIGHUP before the recording ran, or a second one
        while the guest was stopping (the VM is stopped, nothing left behind). The first one
        during the recording stops it early: the trace is saved and analyzed, the exit code is 128+N.
    """
    from flightrec.record.forwarder import forwarder_missing

    t0 = time.monotonic()
    opts.config.check()
    nic_args = nic_record_args(opts.nic, opts.mode, parse_record_args(list(opts.record_args)))
    params = check_record_args(["--duration", str(opts.duration), *opts.record_args, *nic_args], parse_record_args)
    why = tools_missing() or forwarder_missing()
    if why:
        raise FlightrecError(why)
    # A previous run's files in DIR must not pass for this run's (the copy-back merges).
    runfolder.clear(runfolder.replaced_by_vm_record(opts.out_dir))
    if opts.boot_attempts < 1:
        raise FlightrecError(f"boot attempts must be at least 1, got {opts.boot_attempts}")
    kernel_events = params["kernel_events"]
    if kernel_events == "auto":
        kernel_events = "kprobes"  # the point of the VM: its kernel has them
    timings: dict = {}
    t = time.monotonic()
    kernel = guest_kernel(opts.kernel, say, with_vmlinux=kernel_events != "none")
    timings["kernel_s"] = round(time.monotonic() - t, 2)
    if opts.mode == "zerocopy":
        missing = zerocopy_missing(kernel, opts.nic)
        if missing:
            raise FlightrecError(f"--mode zerocopy: {missing}")
    config = opts.config
    if opts.nic == "virtio":
        config = replace(config, devices=config.devices + nics.qemu_devices())
        say(
            f"NICs: 4 virtio-net-pci (iommu_platform=on), client<->outer and inner<->server joined by QEMU hubs; "
            f"AF_XDP mode asked: {opts.mode}"
        )
    t = time.monotonic()
    defs = probe_definitions(kernel, kernel_events, say)
    timings["probes_s"] = round(time.monotonic() - t, 2)
    files = dict(opts.guest_files)
    if defs:
        files["probes.json"] = json.dumps(defs, indent=2)
    command = _guest_command(opts, nic_args, defs)
    timeout = opts.timeout or opts.duration + SLACK
    say(f"recording: {opts.duration:g} s in the guest (watchdog {timeout:g} s after boot)")
    guest = runner.run_in_guest(
        command,
        kernel,
        config,
        timeout=timeout,
        boot_timeout=opts.boot_timeout,
        out_dir=opts.out_dir,
        files=files,
        say=say,
        on_output=on_output,
        cwd=locate.IMPORT_ROOT,
        graceful_stop=True,
        boot_attempts=opts.boot_attempts,
        stall_timeout=opts.stall_timeout,
    )
    timings.update(
        boot_s=guest.boot_s,
        guest_command_s=guest.command_s,
        qemu_peak_rss_mb=guest.qemu_peak_rss_mb,
        recording_overhead_s=round(guest.command_s - opts.duration, 2),
    )
    trace = opts.out_dir / runfolder.TRACE
    _rewrite_paths(opts.out_dir, guest.guest_out)
    verdict = None
    exit_code = guest.exit_code
    # Exit 2 with a trace: a helper (or the --app program) died mid-run, and
    # the trace it left is analyzed as `record` does on the host.
    if opts.analyze and trace.is_file() and (guest.exit_code in (0, 1, 2) or guest.stopped_by is not None):
        from flightrec.report.summary import summarize

        say("analyzing the trace on the host")
        t = time.monotonic()
        summary = summarize(trace, opts.out_dir)
        timings["analysis_s"] = round(time.monotonic() - t, 2)
        verdict = summary.line
        exit_code = summary.exit_code(guest.exit_code)
        if exit_code != guest.exit_code:
            say(f"exit {exit_code}: the analysis found an anomaly the guest's recording did not stop on")
    timings["wall_s"] = round(time.monotonic() - t0, 2)
    _write_vm_json(opts, kernel, guest, defs, timings)
    return VmRecordResult(
        exit_code, opts.out_dir, trace if trace.is_file() else None, verdict, timings, guest.stopped_by
    )


def _guest_command(opts: VmRecordOptions, nic_args: list[str], defs: Optional[dict]) -> list[str]:
    """`flightrec record` as the guest runs it, under the guest prefix (e.g. the widener)."""
    args = [*opts.record_args, *nic_args, "--duration", str(opts.duration), "--plain"]
    if defs is None:
        args += ["--kernel-events", "none"]
    elif not any(a.startswith("--kernel-events") for a in opts.record_args):
        args += ["--kernel-events", "kprobes"]
    # The guest finds probes.json in its job folder ($FLIGHTREC_VM_JOB).
    return [*opts.guest_prefix, sys.executable, "-m", "flightrec.cli.guest", "record", "--", *args]


def _rewrite_paths(out_dir: Path, guest_out: str) -> None:
    """meta.json names the guest's scratch folder, gone now: name the host's copy instead."""
    if not guest_out:
        return
    host = str(out_dir.resolve())

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(guest_out, host)
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    runfolder.update_meta(out_dir, rewrite)


def _write_vm_json(
    opts: VmRecordOptions, kernel: GuestKernel, guest: runner.GuestRun, defs: Optional[dict], timings: dict
) -> None:
    data = {
        "kernel": kernel.as_dict(),
        "guest": guest.as_dict(),
        "timings": timings,
        # How many boots it took, and why each failed one failed (runner.run_in_guest's retry).
        "boots": guest.boots,
        "failed_boots": [asdict(b) for b in guest.failed_boots],
        "vcpus": opts.config.cpus,
        "memory_mb": opts.config.memory_mb,
        "nic": opts.nic,
        "mode": opts.mode,
        "probe_definitions": None if defs is None else [d["text"] for d in defs["definitions"]],
    }
    runfolder.write_json(opts.out_dir, runfolder.VM, data)
