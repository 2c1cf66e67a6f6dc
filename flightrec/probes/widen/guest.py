"""The widener in a VM: the host's setup for `flightrec vm record --widen`, and the guest's wrapper.

On the host :func:`guest_setup` resolves the plan and hands the guest a
command prefix and ``widen.json``; in the guest ``python3 -m
flightrec.probes.widen run -- COMMAND...`` (:func:`main`) runs the recording,
attaches the widener once the recording's kernel events are on, and notes
the widening in the run folder's meta.json and widen.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from flightrec import runfolder
from flightrec import tracefs as tracefs_files
from flightrec.errors import FlightrecError
from flightrec.probes import running_build_id
from flightrec.probes.kprobe_events import group_events
from flightrec.probes.perfprobe import GROUP
from flightrec.probes.widen.loader import Widener, describe, loader_argv
from flightrec.probes.widen.plan import WidenOptions, WidenPlan
from flightrec.probes.widen.sites import resolve_widen


def meta(plan: WidenPlan, options: WidenOptions, stats: Optional[dict]) -> dict:
    """What meta.json's "widened" says: the line, the sites, the settings and the counters."""
    return {
        "summary": describe(plan, options),
        "options": asdict(options),
        "sites": {
            s.name: {"location": s.location, "source": f"{s.file}:{s.line}", "why": s.why}
            for s in (plan.flush, plan.reserve)
        },
        "stats": stats or {},
    }


def guest_setup(
    vmlinux: Optional[Path], options: WidenOptions, say=lambda _: None
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """For `flightrec vm record --widen`: resolve on the host, return (guest command prefix, job files).

    The prefix runs the recording under ``python3 -m flightrec.probes.widen run``,
    which finds the plan in ``$FLIGHTREC_VM_JOB/widen.json``.

    :raises FlightrecError: no debug vmlinux, a site not found, bad options.
    """
    if vmlinux is None:
        raise FlightrecError("--widen needs the kernel's debug vmlinux: its sites come from DWARF")
    plan = resolve_widen(vmlinux)
    loader_argv(plan, options)  # checks the options before anything boots
    say(f"widen: {describe(plan, options)}")
    plan_json = json.dumps({"plan": plan.as_dict(), "options": asdict(options)}, indent=2)
    return (sys.executable, "-m", "flightrec.probes.widen", "run", "--"), (("widen.json", plan_json),)


PROBES_WAIT = 120.0  # seconds for the recording to define its kprobes (python under TCG is slow)


def _wait_for_recording_probes(
    child: subprocess.Popen, tracefs: Path = Path("/sys/kernel/tracing"), timeout: float = PROBES_WAIT
) -> bool:
    """Wait until the recording has its kernel events (or exited); False on timeout.

    The widener must attach after the recording's kprobes: where two kprobes
    share an address (the flush site is the recording's flush probe), the
    kernel runs the newest first (kernel/kprobes.c add_new_kprobe,
    list_add_rcu). So the flush-side delay comes before the flush event, and
    the trace shows the flush when it really reads cached_prod, after the
    other CPU's reserve. With the BPF backend (--kernel-events bpf) there are
    no kprobes to wait for: its printk lines enabled in the recording's
    instance say its kernel events are on.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if group_events(tracefs, GROUP):  # the recording's kprobes
            return True
        for enable in (tracefs / "instances").glob("flightrec-*/events/bpf_trace/bpf_trace_printk/enable"):
            try:
                # "1*": enabled, in soft mode because a trigger sits on the event
                if tracefs_files.read_control(enable).strip().startswith("1"):
                    return True
            except OSError:
                pass
        time.sleep(0.05)
    return False


def run(plan_file: Path, command: list[str], out_dir: Optional[Path]) -> int:
    """Run ``command`` with the widener attached once its kprobes are defined; note it in
    ``out_dir``/meta.json and widen.json. Returns the command's exit code.

    :raises FlightrecError: unreadable plan, a plan for another kernel, the loader refused.
    """
    try:
        data = json.loads(plan_file.read_text())
    except (OSError, ValueError) as e:
        raise FlightrecError(f"cannot read the widener plan {plan_file}: {e}") from None
    plan = WidenPlan.from_dict(data.get("plan", {}))
    try:
        options = WidenOptions(**data.get("options", {}))
    except TypeError as e:
        raise FlightrecError(f"{plan_file}: bad widener options ({e})") from None
    running = running_build_id()
    if plan.build_id and running and plan.build_id != running:
        raise FlightrecError(
            f"the widener's sites come from a vmlinux with build ID {plan.build_id[:12]}, "
            f"the running kernel's is {running[:12]}: its offsets would be wrong"
        )
    widener = Widener(plan, options)
    child = subprocess.Popen(command)
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        waited = _wait_for_recording_probes(child)
        if child.poll() is not None:
            return child.returncode
        widener.start()
        t = time.monotonic()
        print(
            f"flightrec: {describe(plan, options)}"
            + ("" if waited else " (the recording's kernel events did not appear: attached anyway)"),
            file=sys.stderr,
            flush=True,
        )
        code = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        stats = widener.stop()
    stats["seconds"] = round(time.monotonic() - t, 2)
    print(
        f"flightrec: widener: {stats.get('flush_delays', 0)} flush delays, "
        f"{stats.get('reserve_delays', 0)} reserve delays (a reserve that met a flush of its own queue "
        f"on another CPU), {stats.get('flush_hits', 0)} flushes and {stats.get('reserve_hits', 0)} "
        f"reserves seen",
        file=sys.stderr,
        flush=True,
    )
    if out_dir is not None and out_dir.is_dir():
        note = meta(plan, options, stats)
        try:
            runfolder.write_json(out_dir, runfolder.WIDEN, note)
            runfolder.update_meta(out_dir, lambda m: {**m, "widened": note})
        except FlightrecError as e:
            print(f"flightrec: widener: cannot note it in {out_dir}: {e}", file=sys.stderr)
    return code


def main(argv: Optional[list[str]] = None) -> int:
    """``run [--plan FILE] [--out DIR] -- COMMAND...`` (guest) or ``resolve VMLINUX [SOURCE_TREE]`` (host)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python3 -m flightrec.probes.widen run [--plan FILE] [--out DIR] -- COMMAND...\n"
        "       python3 -m flightrec.probes.widen resolve VMLINUX [SOURCE_TREE]"
    )
    try:
        if argv[:1] == ["resolve"] and len(argv) in (2, 3):
            plan = resolve_widen(Path(argv[1]), source_dir=Path(argv[2]) if len(argv) == 3 else None)
            print(json.dumps(plan.as_dict(), indent=2))
            print(describe(plan, WidenOptions()), file=sys.stderr)
            return 0
        if argv[:1] == ["run"] and "--" in argv:
            opts, command = argv[1 : argv.index("--")], argv[argv.index("--") + 1 :]
            job = os.environ.get("FLIGHTREC_VM_JOB")
            plan_file = Path(job) / "widen.json" if job else None
            out = Path(os.environ["FLIGHTREC_VM_OUT"]) if os.environ.get("FLIGHTREC_VM_OUT") else None
            while opts:
                if opts[0] in ("--plan", "--out") and len(opts) >= 2:
                    if opts[0] == "--plan":
                        plan_file = Path(opts[1])
                    else:
                        out = Path(opts[1])
                    opts = opts[2:]
                else:
                    print(usage, file=sys.stderr)
                    return 2
            if plan_file is None or not command:
                print(usage, file=sys.stderr)
                return 2
            return run(plan_file, command, out)
        print(usage, file=sys.stderr)
        return 2
    except FlightrecError as e:
        print(f"flightrec: {e}", file=sys.stderr)
        return 2
