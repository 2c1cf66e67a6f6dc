"""Where the widener's kprobes go: each site found in a kernel's DWARF, by source line.

Never from offsets copied out of one build's disassembly: a spec names the
function, the inlined chain down to the site and the source text around it;
the line table and the scopes' ranges give the address, the variables' DWARF
locations give what the BPF program reads there (its key and queue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from elftools.dwarf.die import DIE

from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import PARSE_ERRORS, FetchArg, Vmlinux, fetch_arg, gnu_build_id
from flightrec.probes.specs import ProbeSpec
from flightrec.probes.widen.plan import SPEC_PATH, WidenPlan, WidenSite, WidenSpec, load_widen_specs


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
                raise FlightrecError(
                    f"widener site {spec.name}: {' > '.join([spec.function, *spec.inlined])}: "
                    f"this kernel has no {name}, inlined or not"
                )
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
    raise FlightrecError(
        f"widener: the kernel's source {file} is needed to find its sites by their text and "
        f"is not there: use --kernel veth-race or veth-fixed (built from source by flightrec)"
    )


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
        arg, reason = fetch_arg(vm, chain, addr, expr, spec)
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
        raise FlightrecError(
            f"widener site {spec.name}: {len(copies)} copies of {spec.inlined[-1]} in "
            f"{spec.function}: the spec must single one out"
        )
    die, above, trail = copies[0]
    ranges = vm.ranges(die)
    if not ranges:
        raise FlightrecError(f"widener site {spec.name}: {trail} has no code in this kernel")
    if spec.at == "entry":
        addr = vm.entry_pc(die)
        if addr is None or addr != min(lo for lo, _ in ranges):
            raise FlightrecError(
                f"widener site {spec.name}: code of {spec.inlined[-1]} precedes its entry "
                f"in this kernel: no single place is 'before' it"
            )
        file = vm.file_name(die.cu, vm.attr(die, "DW_AT_decl_file") or 0)
        line, why = vm.attr(die, "DW_AT_decl_line") or 0, f"entry of {trail}"
    else:
        assert spec.after is not None and spec.before is not None
        file, decl, lines = _source_lines(vm, die, source_dir)
        after = _line_of(lines, decl, spec.after, f"{file}:{spec.inlined[-1]}")
        before = _line_of(lines, decl, spec.before, f"{file}:{spec.inlined[-1]}")
        end = next((n for n in range(decl, len(lines) + 1) if lines[n - 1].startswith("}")), len(lines))
        own = [
            r
            for r in vm.line_rows(die.cu)
            if r[1] == file and decl <= r[2] <= end and any(lo <= r[0] < hi for lo, hi in ranges)
        ]
        at_before = [r[0] for r in own if r[2] == before]
        at_after = [r[0] for r in own if r[2] == after]
        if not at_before or not at_after:
            raise FlightrecError(f"widener site {spec.name}: no code for {file}:{after} or {file}:{before} in {trail}")
        addr = min(at_before)
        later = [r[0] for r in own if r[2] > after]
        # The compiler may interleave statements: the site counts only if all
        # of `after` is done before it and nothing past `after` started yet.
        if max(at_after) >= addr or min(later) < addr:
            raise FlightrecError(
                f"widener site {spec.name}: the compiler interleaved {file}:{after} "
                f"('{spec.after}') and {file}:{before} ('{spec.before}'): no address lies "
                f"between them in this kernel"
            )
        line = before
        why = f"first instruction of {file}:{before} ('{spec.before}') in {trail}, after all of {file}:{after}"
    chain = _chain(vm, die, above, addr)
    key, why_not = _fetch(vm, chain, addr, spec.key)
    if key is None:
        raise FlightrecError(f"widener site {spec.name}: no key readable at {file}:{line} ({'; '.join(why_not)})")
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
        except PARSE_ERRORS as e:
            raise FlightrecError(f"{vmlinux}: corrupt DWARF ({type(e).__name__}: {e})") from None
    return WidenPlan(str(vmlinux), gnu_build_id(Path(vmlinux)), flush, reserve)
