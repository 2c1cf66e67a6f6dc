"""The race-window widener: where to busy-wait (from DWARF), and running c/widen.

The veth/AF_XDP race (docs/veth-race.md) is two store instructions wide: a
recording at full speed never hits it. The widener is a fault amplifier:
two kprobe BPF programs (c/widen/widen.bpf.c) that busy-wait

- ``flush``: at the entry of ``xsk_flush()`` (inlined into ``__xsk_map_flush``),
  about to read ``xs->rx->cached_prod`` and publish it: ``flush_ms`` on every
  ``flush_every``-th hit, marking that queue "being flushed" meanwhile (attached
  after the recording's own flush probe there, so the delay precedes its event);
- ``reserve``: in ``__xsk_rcv_zc`` between ``cached_prod++`` and the
  descriptor writes of the inlined ``xskq_prod_reserve_desc()``: ``reserve_ms``,
  only while the same queue is being flushed on another CPU.

With the fix (fa349e396e48) a queue is never reserved in while it is being
flushed, so the reserve side never waits and the recording stays clean.

The sites come from flightrec/probes/specs/widen/veth-race.toml and the kernel's DWARF, by
source line, never from offsets copied out of one build's disassembly::

    plan = resolve_widen(vmlinux)                 # WidenPlan; raises FlightrecError
    with Widener(plan, WidenOptions()) as w:      # in the guest: loads c/widen
        ...                                       # record
    w.stats                                       # the BPF programs' counters

and in the guest, around any command (what `flightrec vm record --widen` runs)::

    python3 -m flightrec.probes.widen run [--plan FILE] -- COMMAND...
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from elftools.dwarf.die import DIE

from flightrec import locate, runfolder
from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import _PARSE_ERRORS, FetchArg, Vmlinux, _fetch_arg, gnu_build_id
from flightrec.probes.specs import SPECS_DIR, ProbeSpec, load_toml

SPEC_PATH = SPECS_DIR / "widen" / "veth-race.toml"
LOADER = locate.program("widen")
MAX_MS = 1000.0  # c/widen/widen.h WIDEN_MAX_NS: a longer busy-wait would stall the guest
READY_TIMEOUT = 120.0  # seconds for the loader to load and attach (the verifier under TCG)


@dataclass(frozen=True)
class WidenSpec:
    """One site as flightrec/probes/specs/widen/*.toml asks for it."""

    name: str
    function: str
    inlined: tuple[str, ...]
    key: tuple[str, ...]
    at: Optional[str] = None
    after: Optional[str] = None
    before: Optional[str] = None
    queue: tuple[str, ...] = ()
    shows: str = ""


@dataclass(frozen=True)
class WidenSite:
    """Where one widener kprobe goes, why there, and what it reads there."""

    name: str
    symbol: str
    offset: int
    address: int
    file: str
    line: int
    why: str
    key: FetchArg
    queue: Optional[FetchArg] = None

    @property
    def location(self) -> str:
        return f"{self.symbol}+{self.offset}"


@dataclass(frozen=True)
class WidenPlan:
    """Both sites in one kernel; ``build_id`` ties them to it."""

    vmlinux: str
    build_id: Optional[str]
    flush: WidenSite
    reserve: WidenSite

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "WidenPlan":
        """:raises FlightrecError: not a plan written by :meth:`as_dict`."""
        try:
            sites = {}
            for name in ("flush", "reserve"):
                s = dict(data[name])
                s["key"] = FetchArg(**s["key"])
                s["queue"] = FetchArg(**s["queue"]) if s.get("queue") else None
                sites[name] = WidenSite(**s)
            return WidenPlan(str(data["vmlinux"]), data.get("build_id"), sites["flush"], sites["reserve"])
        except (KeyError, TypeError, ValueError) as e:
            raise FlightrecError(f"not a widener plan ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class WidenOptions:
    """How wide: the defaults hit the race within seconds on a 2-vCPU TCG guest."""

    flush_ms: float = 10.0
    flush_every: int = 1000
    reserve_ms: float = 50.0
    queue: Optional[int] = None  # only flushes of sockets bound to this queue id; None: any

    def check(self) -> None:
        """:raises FlightrecError: a delay out of (0, 1000] ms, a rate below 1, a negative queue."""
        for name, ms in (("flush delay", self.flush_ms), ("reserve delay", self.reserve_ms)):
            if not 0 < ms <= MAX_MS:
                raise FlightrecError(f"widener {name} must be in (0, {MAX_MS:g}] ms, got {ms:g}")
        if self.flush_every < 1:
            raise FlightrecError(f"widener flush rate must be 1 or more (every Nth flush), got {self.flush_every}")
        if self.queue is not None and self.queue < 0:
            raise FlightrecError(f"widener queue must be a queue id (0 or more), got {self.queue}")


# --- specs -------------------------------------------------------------------


def _strs(table: dict, key: str, where: str, required: bool = False) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (required and not value):
        raise FlightrecError(f"{where}: '{key}' must be a{' non-empty' if required else ''} list of strings")
    return tuple(value)


def load_widen_specs(path: Path = SPEC_PATH) -> dict[str, WidenSpec]:
    """The ``flush`` and ``reserve`` sites of a widener spec file.

    :raises FlightrecError: missing, not TOML, or a site malformed.
    """
    data = load_toml(path)
    specs = {}
    for i, t in enumerate(data.get("site", [])):
        where = f"{path}: site {i + 1}"
        name, function = t.get("name"), t.get("function")
        if not (isinstance(name, str) and isinstance(function, str) and function.isidentifier()):
            raise FlightrecError(f"{where}: 'name' and 'function' must be given ('function' a C identifier)")
        at, after, before = t.get("at"), t.get("after"), t.get("before")
        if not ((at == "entry" and after is None and before is None) or
                (at is None and isinstance(after, str) and isinstance(before, str) and after and before)):
            raise FlightrecError(f"{where}: give either at = \"entry\" or both 'after' and 'before'")
        specs[name] = WidenSpec(name, function, _strs(t, "inlined", where, True), _strs(t, "key", where, True),
                                at, after, before, _strs(t, "queue", where), str(t.get("shows", "")))
    missing = {"flush", "reserve"} - set(specs)
    if missing:
        raise FlightrecError(f"{path}: no site named {', '.join(sorted(missing))}")
    return specs


# --- resolving ---------------------------------------------------------------


def _inlined_children(vm: Vmlinux, scope: DIE, name: str) -> list[tuple[DIE, list[DIE]]]:
    """Inlined copies of ``name`` anywhere below ``scope``, each with the scopes above it (outermost first)."""
    out = []

    def walk(die: DIE, above: list[DIE]) -> None:
        for child in die.iter_children():
            if child.tag == "DW_TAG_inlined_subroutine" and vm.name(child) == name:
                out.append((child, above + [die]))
            elif child.tag in ("DW_TAG_lexical_block", "DW_TAG_inlined_subroutine"):
                walk(child, above + [die])

    walk(scope, [])
    return out


def _follow(vm: Vmlinux, spec: WidenSpec) -> list[tuple[DIE, list[DIE], str]]:
    """Every copy of the innermost function of ``spec.inlined``: (its DIE, the scopes above, trail)."""
    funcs = vm.function_dies(spec.function)
    if not funcs:
        raise FlightrecError(f"widener site {spec.name}: no out-of-line {spec.function} in this kernel's DWARF")
    current = [(funcs[0][0], [], spec.function)]
    for name in spec.inlined:
        found = []
        for scope, above, trail in current:
            for die, between in _inlined_children(vm, scope, name):
                found.append((die, above + between, f"{trail} > {name} (inlined)"))
        if not found:
            # Not inlined here: go on in its own out-of-line copy.
            out_of_line = vm.function_dies(name)
            if not out_of_line:
                raise FlightrecError(f"widener site {spec.name}: {' > '.join([spec.function, *spec.inlined])}: "
                                     f"this kernel has no {name}, inlined or not")
            found = [(out_of_line[0][0], [], f"{name} (out of line)")]
        current = found
    return current


def _source_lines(vm: Vmlinux, die: DIE, source_dir: Optional[Path]) -> tuple[str, int, list[str]]:
    """(file as the line table names it, declaration line, the file's lines) of an inlined function.

    The file is looked up where the kernel was built (DW_AT_comp_dir), else
    under ``source_dir`` (a tree of the same source), dropping leading folders
    of its name until one matches.
    """
    cu = die.cu
    file = vm.file_name(cu, vm.attr(die, "DW_AT_decl_file") or 0)
    decl = vm.attr(die, "DW_AT_decl_line") or 0
    comp_dir = cu.get_top_DIE().attributes.get("DW_AT_comp_dir")
    base = Path(comp_dir.value.decode(errors="replace")) if comp_dir else Path(".")
    tries = [Path(file) if file.startswith("/") else base / file]
    if source_dir is not None:
        parts = Path(file).parts
        tries += [Path(source_dir, *parts[i:]) for i in range(len(parts))]
    for path in tries:
        try:
            return file, decl, path.read_text(errors="replace").splitlines()
        except OSError:
            continue
    raise FlightrecError(f"widener: the kernel's source {file} is needed to find its sites by their text and "
                         f"is not there: use --kernel veth-race or veth-fixed (built from source by flightrec)")


def _line_of(lines: list[str], decl: int, text: str, what: str) -> int:
    """The 1-based line of ``text`` in the function body starting at line ``decl``."""
    for n in range(decl, len(lines) + 1):
        if text in lines[n - 1]:
            return n
        if lines[n - 1].startswith("}"):
            break
    raise FlightrecError(f"widener: no '{text}' in {what} (line {decl} on): the spec needs updating for this kernel")


def _fetch(vm: Vmlinux, chain: list[DIE], addr: int, exprs: tuple[str, ...]) -> tuple[Optional[FetchArg], list[str]]:
    """The first of ``exprs`` a kprobe can read at ``addr`` (with a fetch string), and why the others not."""
    why = []
    for expr in exprs:
        spec = ProbeSpec(name="widen", function="widen", args=(expr,))
        arg, reason = _fetch_arg(vm, chain, addr, expr, spec)
        if arg is not None and arg.fetch is not None:
            return arg, why
        why.append(f"{expr}: {reason or 'a location flightrec cannot translate'}")
    return None, why


def _chain(vm: Vmlinux, die: DIE, above: list[DIE], addr: int) -> list[DIE]:
    """Scopes whose variables are visible at ``addr``, innermost first: lexical blocks
    of ``die`` holding addr, ``die``, then the inlined callers and blocks above it."""
    return vm.scope_chain(die, addr) + [d for d in reversed(above) if d.tag != "DW_TAG_subprogram" or d is above[0]]


def _resolve_site(vm: Vmlinux, spec: WidenSpec, source_dir: Optional[Path]) -> WidenSite:
    copies = _follow(vm, spec)
    if len(copies) != 1:
        raise FlightrecError(f"widener site {spec.name}: {len(copies)} copies of {spec.inlined[-1]} in "
                             f"{spec.function}: the spec must single one out")
    die, above, trail = copies[0]
    ranges = vm.ranges(die)
    if not ranges:
        raise FlightrecError(f"widener site {spec.name}: {trail} has no code in this kernel")
    if spec.at == "entry":
        addr = vm.entry_pc(die)
        if addr is None or addr != min(lo for lo, _ in ranges):
            raise FlightrecError(f"widener site {spec.name}: code of {spec.inlined[-1]} precedes its entry "
                                 f"in this kernel: no single place is 'before' it")
        file = vm.file_name(die.cu, vm.attr(die, "DW_AT_decl_file") or 0)
        line, why = vm.attr(die, "DW_AT_decl_line") or 0, f"entry of {trail}"
    else:
        assert spec.after is not None and spec.before is not None
        file, decl, lines = _source_lines(vm, die, source_dir)
        after = _line_of(lines, decl, spec.after, f"{file}:{spec.inlined[-1]}")
        before = _line_of(lines, decl, spec.before, f"{file}:{spec.inlined[-1]}")
        end = next((n for n in range(decl, len(lines) + 1) if lines[n - 1].startswith("}")), len(lines))
        own = [r for r in vm.line_rows(die.cu)
               if r[1] == file and decl <= r[2] <= end and any(lo <= r[0] < hi for lo, hi in ranges)]
        at_before = [r[0] for r in own if r[2] == before]
        at_after = [r[0] for r in own if r[2] == after]
        if not at_before or not at_after:
            raise FlightrecError(f"widener site {spec.name}: no code for {file}:{after} or {file}:{before} "
                                 f"in {trail}")
        addr = min(at_before)
        later = [r[0] for r in own if r[2] > after]
        # The compiler may interleave statements: the site counts only if all
        # of `after` is done before it and nothing past `after` started yet.
        if max(at_after) >= addr or min(later) < addr:
            raise FlightrecError(f"widener site {spec.name}: the compiler interleaved {file}:{after} "
                                 f"('{spec.after}') and {file}:{before} ('{spec.before}'): no address lies "
                                 f"between them in this kernel")
        line = before
        why = f"first instruction of {file}:{before} ('{spec.before}') in {trail}, after all of {file}:{after}"
    chain = _chain(vm, die, above, addr)
    key, why_not = _fetch(vm, chain, addr, spec.key)
    if key is None:
        raise FlightrecError(f"widener site {spec.name}: no key readable at {file}:{line} "
                             f"({'; '.join(why_not)})")
    queue = _fetch(vm, chain, addr, spec.queue)[0] if spec.queue else None
    at = vm.symbol_at(addr)
    if at is None:
        raise FlightrecError(f"widener site {spec.name}: {addr:#x} is in no function symbol")
    return WidenSite(spec.name, at[0], at[1], addr, file, line, why, key, queue)


def resolve_widen(vmlinux: Path, spec_path: Path = SPEC_PATH, source_dir: Optional[Path] = None) -> WidenPlan:
    """Both widener sites in ``vmlinux`` (with DWARF), its source where it was built or in ``source_dir``.

    :raises FlightrecError: no DWARF, a site missing, or one the compiler left no room for.
    """
    specs = load_widen_specs(spec_path)
    with Vmlinux(Path(vmlinux)) as vm:
        try:
            flush = _resolve_site(vm, specs["flush"], source_dir)
            reserve = _resolve_site(vm, specs["reserve"], source_dir)
        except _PARSE_ERRORS as e:
            raise FlightrecError(f"{vmlinux}: corrupt DWARF ({type(e).__name__}: {e})") from None
    return WidenPlan(str(vmlinux), gnu_build_id(Path(vmlinux)), flush, reserve)


# --- running -----------------------------------------------------------------


def describe(plan: WidenPlan, options: WidenOptions) -> str:
    """One plain line: that windows were widened, where and by how much."""
    queue = "any queue" if options.queue is None else f"queue {options.queue}"
    return (f"race windows WIDENED (fault amplifier): flush side {options.flush_ms:g} ms busy-wait on every "
            f"{options.flush_every}th hit at {plan.flush.location} ({plan.flush.file}:{plan.flush.line}, {queue}); "
            f"reserve side {options.reserve_ms:g} ms at {plan.reserve.location} "
            f"({plan.reserve.file}:{plan.reserve.line}) only while its queue is being flushed on another CPU")


def loader_argv(plan: WidenPlan, options: WidenOptions, loader: Path = LOADER) -> list[str]:
    """c/widen's command line for ``plan`` and ``options``.

    :raises FlightrecError: bad options, or --queue without a queue id at the flush site.
    """
    options.check()
    argv = [str(loader), "--flush", plan.flush.location, "--flush-key", str(plan.flush.key.fetch),
            "--reserve", plan.reserve.location, "--reserve-key", str(plan.reserve.key.fetch),
            "--flush-ns", str(int(options.flush_ms * 1e6)), "--flush-every", str(options.flush_every),
            "--reserve-ns", str(int(options.reserve_ms * 1e6))]
    if options.queue is not None:
        if plan.flush.queue is None or plan.flush.queue.fetch is None:
            raise FlightrecError("widener: the socket's queue id is not readable at the flush site in this "
                                 "kernel: widen every queue (leave the queue option out)")
        argv += ["--flush-queue", plan.flush.queue.fetch, "--queue", str(options.queue)]
    return argv


@dataclass
class Widener:
    """c/widen attached for the life of a ``with`` block (in the guest: it needs kprobes)."""

    plan: WidenPlan
    options: WidenOptions = field(default_factory=WidenOptions)
    loader: Path = LOADER
    stats: Optional[dict] = None
    _proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """:raises FlightrecError: no loader, or the kernel refused (its one line in the message)."""
        argv = loader_argv(self.plan, self.options, self.loader)
        if not self.loader.is_file():
            raise FlightrecError(f"{self.loader} not built; {locate.build_fix()}")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if '"ready"' not in line:
            self._proc.kill()
            _, err = self._proc.communicate()
            self._proc = None
            why = (err.strip().splitlines() or [f"no ready line in {timeout:g} s"])[-1]
            raise FlightrecError(f"widener: {why}")

    def stop(self) -> dict:
        """Detach; returns the programs' counters (hits, delays and time spent on each side)."""
        if self._proc is None:
            return self.stats or {}
        self._proc.send_signal(signal.SIGINT)
        try:
            out, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        self._proc = None
        self.stats = {}
        for line in out.splitlines():
            if '"exit"' in line:
                self.stats = {k: v for k, v in json.loads(line).items() if k != "event"}
        if not self.stats and err.strip():
            self.stats = {"error": err.strip().splitlines()[-1]}
        return self.stats

    def __enter__(self) -> "Widener":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def meta(plan: WidenPlan, options: WidenOptions, stats: Optional[dict]) -> dict:
    """What meta.json's "widened" says: the line, the sites, the settings and the counters."""
    return {"summary": describe(plan, options), "options": asdict(options),
            "sites": {s.name: {"location": s.location, "source": f"{s.file}:{s.line}", "why": s.why}
                      for s in (plan.flush, plan.reserve)},
            "stats": stats or {}}


def guest_setup(vmlinux: Optional[Path], options: WidenOptions,
                say=lambda _: None) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
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


# --- the guest's wrapper -------------------------------------------------------


def _running_build_id() -> Optional[str]:
    from flightrec.probes import running_build_id

    return running_build_id()


KPROBE_GROUP = "flightrec"  # flightrec.probes.perfprobe.GROUP: the recording's kprobes
PROBES_WAIT = 120.0  # seconds for the recording to define its kprobes (python under TCG is slow)


def _wait_for_recording_probes(child: subprocess.Popen, tracefs: Path = Path("/sys/kernel/tracing"),
                               timeout: float = PROBES_WAIT) -> bool:
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
        try:
            if f":{KPROBE_GROUP}/" in (tracefs / "kprobe_events").read_text():
                return True
        except OSError:
            pass
        for enable in (tracefs / "instances").glob("flightrec-*/events/bpf_trace/bpf_trace_printk/enable"):
            try:
                # "1*": enabled, in soft mode because a trigger sits on the event
                if enable.read_text().strip().startswith("1"):
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
    running = _running_build_id()
    if plan.build_id and running and plan.build_id != running:
        raise FlightrecError(f"the widener's sites come from a vmlinux with build ID {plan.build_id[:12]}, "
                             f"the running kernel's is {running[:12]}: its offsets would be wrong")
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
        print(f"flightrec: {describe(plan, options)}"
              + ("" if waited else " (the recording's kernel events did not appear: attached anyway)"),
              file=sys.stderr, flush=True)
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
    print(f"flightrec: widener: {stats.get('flush_delays', 0)} flush delays, "
          f"{stats.get('reserve_delays', 0)} reserve delays (a reserve that met a flush of its own queue "
          f"on another CPU), {stats.get('flush_hits', 0)} flushes and {stats.get('reserve_hits', 0)} "
          f"reserves seen", file=sys.stderr, flush=True)
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
    usage = ("usage: python3 -m flightrec.probes.widen run [--plan FILE] [--out DIR] -- COMMAND...\n"
             "       python3 -m flightrec.probes.widen resolve VMLINUX [SOURCE_TREE]")
    try:
        if argv[:1] == ["resolve"] and len(argv) in (2, 3):
            plan = resolve_widen(Path(argv[1]), source_dir=Path(argv[2]) if len(argv) == 3 else None)
            print(json.dumps(plan.as_dict(), indent=2))
            print(describe(plan, WidenOptions()), file=sys.stderr)
            return 0
        if argv[:1] == ["run"] and "--" in argv:
            opts, command = argv[1:argv.index("--")], argv[argv.index("--") + 1:]
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


if __name__ == "__main__":
    sys.exit(main())
