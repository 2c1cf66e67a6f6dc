"""Find probe sites in a kernel's DWARF with pyelftools.

The resolver reads only the compilation units it needs: the ELF symbol table
gives a function's address, .debug_aranges the unit that holds it, and only
that unit's DIEs and line program are parsed. On Debian's 600 MB debug vmlinux
this takes seconds, not the minutes a walk over every unit would.

For each probe it picks exactly one address per place in the source, where the
probe's variables are live, so that each event is counted once: a source line
often maps to several addresses (Debian 6.1's ``__xsk_rcv_zc:7`` to +58 and
+65), and ``perf probe FUNC:LINE`` would probe all of them.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.construct import ConstructError
from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationExpr, LocationParser
from elftools.elf.elffile import ELFFile

from flightrec.errors import FlightrecError
from flightrec.probes.specs import ProbeSpec

# DWARF register numbers on x86-64 (System V psABI, table 3.36) -> kprobe names.
X86_64_REGS = (
    "%ax",
    "%dx",
    "%cx",
    "%bx",
    "%si",
    "%di",
    "%bp",
    "%sp",
    "%r8",
    "%r9",
    "%r10",
    "%r11",
    "%r12",
    "%r13",
    "%r14",
    "%r15",
)

ADVICE = (
    "install the kernel's -dbg package (apt-get install linux-image-$(uname -r)-dbg) "
    "or pass --vmlinux, or use `flightrec vm record`"
)

_VARS = ("DW_TAG_formal_parameter", "DW_TAG_variable")
_QUALIFIERS = (
    "DW_TAG_typedef",
    "DW_TAG_const_type",
    "DW_TAG_volatile_type",
    "DW_TAG_restrict_type",
    "DW_TAG_atomic_type",
)
PARSE_ERRORS = (
    ELFError,
    ELFParseError,
    DWARFError,
    ConstructError,
    struct.error,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    AssertionError,
    UnicodeDecodeError,
    TypeError,
    AttributeError,
    RecursionError,
    OverflowError,
    NotImplementedError,
)


@dataclass(frozen=True)
class FetchArg:
    """One probe argument at one site.

    ``fetch`` is the kprobe_events fetch argument flightrec derived itself
    from the DWARF location (``%di:x64``, ``+128(+872(%di)):x64``), or None
    when the location is live but of a form flightrec does not translate
    (perf probe then has to).
    """

    name: str
    expr: str
    fetch: str | None


@dataclass(frozen=True)
class Site:
    """Where one kprobe goes: ``symbol+offset``, and why there."""

    symbol: str
    offset: int
    address: int
    file: str
    line: int
    rel_line: int | None
    inlined_into: str | None
    why: str
    args: tuple[FetchArg, ...]

    @property
    def location(self) -> str:
        return f"{self.symbol}+{self.offset}"

    @property
    def perf_location(self) -> str:
        """The same place as perf probe takes it: FUNC+OFF by the DWARF function's name.

        A gcc clone's symbol (Debian 7.3: ``__xsk_rcv_zc.constprop.0``) is no
        DWARF name, so perf refuses it; asked for ``__xsk_rcv_zc+70`` it writes
        the clone's symbol back in its definition.
        """
        return f"{self.symbol.split('.')[0]}+{self.offset}"


@dataclass(frozen=True)
class ResolvedProbe:
    """A spec and the sites found for it; ``problem`` says why there are none."""

    spec: ProbeSpec
    sites: tuple[Site, ...] = ()
    problem: str | None = None
    notes: tuple[str, ...] = ()
    # The request a human would give perf probe for the same thing, e.g.
    # "__xsk_rcv_zc:7 addr len xs xs->pool->fq xs->dev" (tests compare with it).
    request: str = ""

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments every site fetches (optional ones may have been dropped)."""
        return tuple(a.expr for a in self.sites[0].args) if self.sites else ()

    def event_names(self) -> list[str]:
        """One event per site: name, name_1, name_2 ... (perf's own suffixes)."""
        return [self.spec.name if i == 0 else f"{self.spec.name}_{i}" for i in range(len(self.sites))]

    def perf_specs(self, group: str) -> list[str]:
        """perf probe requests for exactly the chosen sites, with flightrec's event names."""
        return [
            f"{group}:{event}={site.perf_location} {' '.join(self.args)}".rstrip()
            for event, site in zip(self.event_names(), self.sites)
        ]


class Vmlinux:
    """An open kernel image with DWARF; use as a context manager.

    :raises FlightrecError: not an ELF file, truncated, no symbol table or no DWARF.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise FlightrecError(f"{self.path}: {e.strerror}") from None
        try:
            self._open()
        except FlightrecError:
            self._file.close()
            raise
        except PARSE_ERRORS as e:
            self._file.close()
            raise FlightrecError(f"{self.path}: corrupt ELF or DWARF ({type(e).__name__}: {e})") from None

    def _open(self) -> None:
        if self._file.read(4) != b"\x7fELF":
            raise FlightrecError(f"{self.path}: not an ELF file (want a vmlinux with debug info, not a vmlinuz)")
        self._file.seek(0)
        self.elf = ELFFile(self._file)
        size = os.fstat(self._file.fileno()).st_size
        shoff, shnum, shentsize = (self.elf.header[k] for k in ("e_shoff", "e_shnum", "e_shentsize"))
        if shoff + shnum * shentsize > size:
            raise FlightrecError(
                f"{self.path}: truncated ({size} bytes, section headers end at {shoff + shnum * shentsize})"
            )
        for sec in self.elf.iter_sections():
            if sec["sh_type"] != "SHT_NOBITS" and sec["sh_offset"] + sec["sh_size"] > size:
                raise FlightrecError(f"{self.path}: truncated (section {sec.name} ends past the end of the file)")
        if self.elf.get_section_by_name(".debug_info") is None:
            raise FlightrecError(f"{self.path}: no DWARF (.debug_info): {ADVICE}")
        self._load_symbols()
        # vmlinux is linked: its DWARF already holds final addresses. Applying
        # the .rela.debug_* kept for KASLR would cost minutes and gigabytes.
        self.dwarf = self.elf.get_dwarf_info(relocate_dwarf_sections=False)
        self._aranges = self.dwarf.get_aranges()
        self._loclists = self.dwarf.location_lists()
        self._rnglists = self.dwarf.range_lists()
        self._lines: dict[int, list] = {}

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Vmlinux":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ELF symbols -----------------------------------------------------

    def _load_symbols(self) -> None:
        symtab = self.elf.get_section_by_name(".symtab")
        if symtab is None:
            raise FlightrecError(f"{self.path}: no symbol table (.symtab): {ADVICE}")
        funcs: list[tuple[int, int, str]] = []
        if self.elf.elfclass == 64 and self.elf.little_endian:
            # Raw Elf64_Sym records: ~10x faster than pyelftools' Symbol objects.
            strtab = self.elf.get_section(symtab["sh_link"]).data()
            for name, info, _other, _shndx, value, size in struct.iter_unpack("<IBBHQQ", symtab.data()):
                if info & 0xF == 2 and value:  # STT_FUNC
                    funcs.append((value, size, strtab[name : strtab.index(b"\0", name)].decode()))
        else:
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                    funcs.append((sym["st_value"], sym["st_size"], sym.name))
        funcs.sort()
        self._funcs = funcs
        self._func_addrs = [f[0] for f in funcs]
        self._by_name: dict[str, list[tuple[int, int, str]]] = {}
        for f in funcs:
            # gcc clones (foo.isra.0, foo.constprop.0) are still foo.
            self._by_name.setdefault(f[2].split(".")[0], []).append(f)

    def symbols(self, name: str) -> list[tuple[int, int, str]]:
        """(address, size, symbol) of every function symbol named ``name`` (or a clone of it)."""
        return self._by_name.get(name, [])

    def symbol_at(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset) of the function symbol that contains ``addr``."""
        i = bisect.bisect_right(self._func_addrs, addr) - 1
        while i >= 0:
            start, size, name = self._funcs[i]
            if start <= addr < start + max(size, 1):
                return name, addr - start
            if start < addr - (1 << 20):
                break
            i -= 1
        return None

    # --- DWARF units -----------------------------------------------------

    def unit_at(self, addr: int) -> CompileUnit | None:
        """The compilation unit whose code covers ``addr``, found via .debug_aranges."""
        off = self._aranges.cu_offset_at_addr(addr) if self._aranges else None
        if off is not None:
            return self.dwarf.get_CU_at(off)
        # No aranges entry: look at each unit's top DIE only (slower, still no full parse).
        for cu in self.dwarf.iter_CUs():
            if any(lo <= addr < hi for lo, hi in self.ranges(cu.get_top_DIE())):
                return cu
        return None

    def ranges(self, die: DIE) -> list[tuple[int, int]]:
        """The [low, high) address ranges of a DIE (low_pc/high_pc or DW_AT_ranges)."""
        a = die.attributes
        if "DW_AT_low_pc" in a and "DW_AT_high_pc" in a:
            lo = a["DW_AT_low_pc"].value
            hi = a["DW_AT_high_pc"]
            return [(lo, hi.value if hi.form == "DW_FORM_addr" else lo + hi.value)]
        if "DW_AT_ranges" in a and self._rnglists is not None:
            base = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
            base = base.value if base else 0
            out = []
            for entry in self._rnglists.get_range_list_at_offset(a["DW_AT_ranges"].value, cu=die.cu):
                if hasattr(entry, "base_address"):
                    base = entry.base_address
                elif entry.is_absolute:
                    out.append((entry.begin_offset, entry.end_offset))
                else:
                    out.append((base + entry.begin_offset, base + entry.end_offset))
            return out
        if "DW_AT_low_pc" in a:
            return [(a["DW_AT_low_pc"].value, a["DW_AT_low_pc"].value + 1)]
        return []

    def entry_pc(self, die: DIE) -> int | None:
        """Where a (possibly inlined) function is entered: DW_AT_entry_pc, else its lowest address."""
        rs = self.ranges(die)
        ep = die.attributes.get("DW_AT_entry_pc")
        if ep is not None:
            # DWARF 5 allows a constant: an offset from the DIE's low address.
            return ep.value if ep.form == "DW_FORM_addr" else (min(lo for lo, _ in rs) + ep.value if rs else None)
        if "DW_AT_low_pc" in die.attributes:
            return die.attributes["DW_AT_low_pc"].value
        return min(lo for lo, _ in rs) if rs else None

    def line_rows(self, cu: CompileUnit) -> list[tuple[int, str, int, bool]]:
        """The unit's line table as (address, file, line, is_stmt), parsed once per unit."""
        if cu.cu_offset not in self._lines:
            lp = self.dwarf.line_program_for_CU(cu)
            rows = []
            if lp is not None:
                names = self._file_names(lp)
                for entry in lp.get_entries():
                    st = entry.state
                    if st is not None and not st.end_sequence:
                        rows.append((st.address, names.get(st.file, "?"), st.line, st.is_stmt))
            self._lines[cu.cu_offset] = rows
        return self._lines[cu.cu_offset]

    def file_name(self, cu: CompileUnit, index: int) -> str:
        lp = self.dwarf.line_program_for_CU(cu)
        return self._file_names(lp).get(index, "?") if lp else "?"

    @staticmethod
    def _file_names(lp) -> dict[int, str]:
        dirs = [d.decode(errors="replace") if isinstance(d, bytes) else str(d) for d in lp["include_directory"]]
        first = 0 if lp.header.version >= 5 else 1  # DWARF 5 counts files (and dirs) from 0
        out = {}
        for i, fe in enumerate(lp["file_entry"]):
            name = fe.name.decode(errors="replace") if isinstance(fe.name, bytes) else str(fe.name)
            d = fe.dir_index
            # Directory 0 is the compilation directory (DWARF 5): keep the path relative to it.
            if not name.startswith("/") and d > 0 and d - first < len(dirs):
                name = f"{dirs[d - first]}/{name}"
            out[i + first] = name
        return out

    # --- DIEs --------------------------------------------------------------

    @staticmethod
    def origin(die: DIE) -> DIE:
        """Follow DW_AT_abstract_origin / DW_AT_specification to the DIE that has the name."""
        seen = 0
        while seen < 8 and "DW_AT_name" not in die.attributes:
            for key in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if key in die.attributes:
                    die = die.get_DIE_from_attribute(key)
                    break
            else:
                break
            seen += 1
        return die

    def name(self, die: DIE) -> str | None:
        attr = self.origin(die).attributes.get("DW_AT_name")
        return attr.value.decode(errors="replace") if attr else None

    def attr(self, die: DIE, key: str):
        """An attribute of the DIE or of its abstract origin (decl_line lives there when inlined)."""
        if key in die.attributes:
            return die.attributes[key].value
        o = self.origin(die)
        return o.attributes[key].value if key in o.attributes else None

    def function_dies(self, name: str) -> list[tuple[DIE, str, int]]:
        """The concrete out-of-line DW_TAG_subprogram of each symbol of ``name``: (die, symbol, address)."""
        out = []
        for addr, _size, sym in self.symbols(name):
            cu = self.unit_at(addr)
            if cu is None:
                continue
            for die in cu.get_top_DIE().iter_children():
                if (
                    die.tag == "DW_TAG_subprogram"
                    and any(lo == addr for lo, _ in self.ranges(die))
                    and self.name(die) == name
                ):
                    out.append((die, sym, addr))
                    break
        return out

    def walk(self, die: DIE, into_inlined: bool = True) -> Iterator[DIE]:
        """Every DIE below ``die`` (not into other functions' inlined bodies unless asked)."""
        for child in die.iter_children():
            yield child
            if child.tag in ("DW_TAG_lexical_block", "DW_TAG_subprogram") or (
                child.tag == "DW_TAG_inlined_subroutine" and into_inlined
            ):
                yield from self.walk(child, into_inlined)

    def inlined_copies(self, name: str, cu: CompileUnit) -> list[tuple[DIE, DIE]]:
        """(inlined_subroutine, the concrete function it sits in) for each copy of ``name`` in the unit."""
        out = []
        for top in cu.get_top_DIE().iter_children():
            if top.tag != "DW_TAG_subprogram" or not self.ranges(top):
                continue
            for d in self.walk(top):
                if d.tag == "DW_TAG_inlined_subroutine" and self.name(d) == name:
                    out.append((d, top))
        return out

    # --- variables and their locations ----------------------------------

    def scope_chain(self, root: DIE, addr: int) -> list[DIE]:
        """Scopes from ``root`` down to the innermost lexical block holding ``addr`` (innermost first).

        Inlined bodies of other functions are not entered: a probe in the
        caller at the call reads the caller's variables.
        """
        chain = [root]
        die = root
        while True:
            for child in die.iter_children():
                if child.tag == "DW_TAG_lexical_block" and any(lo <= addr < hi for lo, hi in self.ranges(child)):
                    chain.append(child)
                    die = child
                    break
            else:
                return chain[::-1]

    def find_variable(self, chain: list[DIE], name: str) -> DIE | None:
        for scope in chain:
            for child in scope.iter_children():
                if child.tag in _VARS and self.name(child) == name:
                    return child
        return None

    def location_at(self, var: DIE, addr: int) -> list | None:
        """The DWARF expression (parsed ops) that locates ``var`` at ``addr``, or None when not live."""
        attr = var.attributes.get("DW_AT_location")
        if attr is None:
            return None
        parsed = LocationParser(self._loclists).parse_from_attribute(attr, var.cu["version"], die=var)
        expr = None
        if isinstance(parsed, LocationExpr):
            expr = parsed.loc_expr
        else:
            base = var.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
            base = base.value if base else 0
            for entry in parsed:
                if isinstance(entry, BaseAddressEntry):
                    base = entry.base_address
                elif isinstance(entry, LocationEntry):
                    lo, hi = entry.begin_offset, entry.end_offset
                    if not entry.is_absolute:
                        lo, hi = lo + base, hi + base
                    if lo <= addr < hi:
                        expr = entry.loc_expr
                        break
        if not expr:
            return None
        return DWARFExprParser(var.cu.structs).parse_expr(expr)

    def type_of(self, die: DIE) -> DIE | None:
        """The type DIE, qualifiers and typedefs stripped (None is void)."""
        seen = 0
        while die is not None and seen < 32:
            if "DW_AT_type" not in die.attributes:
                # A variable of an inlined copy has its type on the abstract origin.
                o = self.origin(die)
                if o is die or "DW_AT_type" not in o.attributes:
                    return None
                die = o
            die = die.get_DIE_from_attribute("DW_AT_type")
            if die.tag not in _QUALIFIERS:
                return die
            seen += 1
        return None

    def member(self, struct_die: DIE, name: str) -> tuple[int, DIE] | None:
        """(offset, member DIE) of ``name`` in a struct/union, looking into anonymous members."""
        for m in struct_die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            loc = m.attributes.get("DW_AT_data_member_location")
            off = loc.value if loc is not None and isinstance(loc.value, int) else 0
            if "DW_AT_bit_size" in m.attributes:
                continue  # bitfields cannot be fetched as a whole
            if "DW_AT_name" not in m.attributes:
                inner = self.type_of(m)
                if inner is not None and inner.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                    found = self.member(inner, name)
                    if found:
                        return off + found[0], found[1]
            elif m.attributes["DW_AT_name"].value.decode(errors="replace") == name:
                return off, m
        return None


def _usable(ops: list) -> bool:
    """Can a kprobe read a variable located by these ops (through perf or flightrec)?

    Registers, memory at register+offset and frame-base offsets can be read;
    DW_OP_entry_value and computed (stack_value) values cannot.
    """
    return bool(ops) and not any(
        o.op_name
        in (
            "DW_OP_entry_value",
            "DW_OP_GNU_entry_value",
            "DW_OP_stack_value",
            "DW_OP_implicit_value",
            "DW_OP_implicit_pointer",
            "DW_OP_GNU_implicit_pointer",
            "DW_OP_piece",
        )
        for o in ops
    )


def _fetch_of_location(ops: list) -> str | None:
    """kprobe fetch syntax for a one-op location on x86-64: %reg or +off(%reg)."""
    if len(ops) != 1:
        return None
    op = ops[0]
    if op.op_name.startswith("DW_OP_reg") and op.op_name != "DW_OP_regx":
        n = int(op.op_name[len("DW_OP_reg") :])
        return X86_64_REGS[n] if n < len(X86_64_REGS) else None
    if op.op_name == "DW_OP_regx":
        return X86_64_REGS[op.args[0]] if op.args[0] < len(X86_64_REGS) else None
    if op.op_name.startswith("DW_OP_breg") and op.op_name != "DW_OP_bregx":
        n = int(op.op_name[len("DW_OP_breg") :])
        return f"{op.args[0]:+d}({X86_64_REGS[n]})" if n < len(X86_64_REGS) else None
    return None  # DW_OP_fbreg needs the CFA (perf reads .debug_frame for it)


def _type_suffix(vm: Vmlinux, t: DIE | None) -> str | None:
    """Always hex (x8..x64): the analyzer reads every field as 0x..."""
    if t is None:
        return None
    if t.tag == "DW_TAG_pointer_type":
        return f"x{8 * t.attributes['DW_AT_byte_size'].value}" if "DW_AT_byte_size" in t.attributes else "x64"
    if t.tag in ("DW_TAG_base_type", "DW_TAG_enumeration_type"):
        size = t.attributes.get("DW_AT_byte_size")
        if size is not None and size.value in (1, 2, 4, 8):
            return f"x{8 * size.value}"
    return None


def _member_piece(vm: Vmlinux, ops: list, t: DIE | None, member: str) -> tuple[list | None, DIE | None]:
    """The location of a struct's member where the struct is in pieces (DW_OP_piece), and its
    type; (None, None) when the member is not exactly one piece of its own."""
    if t is None or t.tag not in ("DW_TAG_structure_type", "DW_TAG_union_type"):
        return None, None
    found = vm.member(t, member)
    if found is None:
        return None, None
    off, m = found
    at, loc = 0, []
    for o in ops:
        if o.op_name != "DW_OP_piece":
            loc.append(o)
            continue
        if at == off:
            return (loc or None), vm.type_of(m)
        at, loc = at + o.args[0], []
    return None, None


def fetch_arg(
    vm: Vmlinux, chain: list[DIE], addr: int, expr: str, spec: ProbeSpec
) -> tuple[FetchArg | None, str | None]:
    """(FetchArg, None) when ``expr`` can be read at ``addr``, else (None, why not)."""
    parts = expr.rpartition("=")[2].replace("->", " -> ").replace(".", " . ").split()
    var = vm.find_variable(chain, parts[0])
    if var is None:
        return None, f"no variable '{parts[0]}' in scope"
    ops = vm.location_at(var, addr)
    t = vm.type_of(var)
    i = 1
    if ops and len(parts) > 2 and parts[1] == "." and any(o.op_name == "DW_OP_piece" for o in ops):
        # a struct kept in registers, a piece each (Debian 6.1's desc in __xsk_generic_xmit:
        # addr in %r12, len in %bp): var.member reads the member's piece
        ops, t = _member_piece(vm, ops, t, parts[2])
        i = 3
    if ops is None or not _usable(ops):
        return None, f"'{parts[0]}' is optimised out here"
    fetch = _fetch_of_location(ops)
    while i < len(parts):
        arrow, field = parts[i], parts[i + 1]
        if arrow == "->":
            if t is None or t.tag != "DW_TAG_pointer_type":
                return None, f"'{expr}': {parts[i - 1]} is not a pointer"
            t = vm.type_of(t)
        if t is None or t.tag not in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            return None, f"'{expr}': no struct before '{field}'"
        found = vm.member(t, field)
        if found is None:
            return None, f"'{expr}': no member '{field}' in this kernel"
        off, m = found
        if fetch is not None:
            if arrow == "->":
                fetch = f"+{off}({fetch})"
            elif fetch.endswith(")") and not fetch.startswith("%"):
                # var.member of a struct in memory at +o(%reg): same base, larger offset.
                o, rest = fetch.split("(", 1)
                fetch = f"{int(o) + off:+d}({rest}"
            else:
                fetch = None
        t = vm.type_of(m)
        i += 2
    suffix = _type_suffix(vm, t)
    if suffix is None:
        return None, f"'{expr}' is not a scalar or pointer"
    return FetchArg(spec.arg_name(expr), expr, f"{fetch}:{suffix}" if fetch else None), None


def _try_site(vm: Vmlinux, root: DIE, addr: int, spec: ProbeSpec) -> tuple[list[FetchArg], list[str], dict[str, str]]:
    """Args fetchable at addr, required args missing there, and why each missing arg is missing."""
    chain = vm.scope_chain(root, addr)
    got, missing, why = [], [], {}
    for expr in spec.args:
        arg, reason = fetch_arg(vm, chain, addr, expr, spec)
        if arg is not None:
            got.append(arg)
        else:
            why[expr] = reason or "unavailable"
            if expr not in spec.optional:
                missing.append(expr)
    return got, missing, why


def _site(
    vm: Vmlinux,
    addr: int,
    file: str,
    line: int,
    rel_line: int | None,
    inlined_into: str | None,
    why: str,
    args: list[FetchArg],
) -> Site | None:
    at = vm.symbol_at(addr)
    if at is None:
        return None
    if sum(1 for _a, _s, n in vm.symbols(at[0].split(".")[0]) if n == at[0]) > 1:
        # Since Linux 6.6 a kprobe on a name that kallsyms holds twice is refused (EADDRNOTAVAIL).
        why += f"; {at[0]} is not a unique symbol in this kernel, which may refuse {at[0]}+{at[1]}"
    return Site(at[0], at[1], addr, file, line, rel_line, inlined_into, why, tuple(args))


def _resolve_call(vm: Vmlinux, spec: ProbeSpec) -> ResolvedProbe:
    """rx_reserve-style probes: at the line of a call to ``at_call`` inside ``function``."""
    request_args = " ".join(spec.args)
    funcs = vm.function_dies(spec.function)
    if not funcs:
        return ResolvedProbe(
            spec,
            problem=f"probe {spec.name}: no out-of-line {spec.function} in this "
            f"kernel's DWARF: this kernel cannot be probed there; use `flightrec vm record`",
        )
    func, sym, _ = funcs[0]
    cu = func.cu
    decl_line = vm.attr(func, "DW_AT_decl_line")
    calls = []  # (file, line, entry address or None)
    for d in vm.walk(func, into_inlined=False):
        if d.tag == "DW_TAG_inlined_subroutine" and vm.name(d) == spec.at_call:
            calls.append(
                (vm.file_name(cu, vm.attr(d, "DW_AT_call_file")), vm.attr(d, "DW_AT_call_line"), vm.entry_pc(d))
            )
        elif d.tag in ("DW_TAG_call_site", "DW_TAG_GNU_call_site"):
            target = d.attributes.get("DW_AT_call_origin") or d.attributes.get("DW_AT_abstract_origin")
            if target is not None and vm.name(d.get_DIE_from_attribute(target.name)) == spec.at_call:
                # An out-of-line call: its line is that of the call instruction, just before the return pc.
                ret = vm.attr(d, "DW_AT_call_return_pc") or vm.attr(d, "DW_AT_low_pc")
                rows = [r for r in vm.line_rows(cu) if r[0] < ret]
                if rows:
                    last = max(rows, key=lambda r: r[0])
                    calls.append((last[1], last[2], None))
    if not calls:
        return ResolvedProbe(
            spec,
            problem=f"probe {spec.name}: {spec.function} does not call {spec.at_call} "
            f"in this kernel: the probe needs updating for it",
        )
    file, line, entry = min(calls, key=lambda c: c[1])
    rel = line - decl_line if decl_line is not None else None
    request = f"{spec.function}:{rel} {request_args}" if rel is not None else f"{spec.function} {request_args}"
    ranges = vm.ranges(func)
    addrs = sorted(
        {
            r[0]
            for r in vm.line_rows(cu)
            if r[3] and r[2] == line and r[1] == file and any(lo <= r[0] < hi for lo, hi in ranges)
        }
    )
    # Like perf's line walk, the entry of an inlined call counts as an address
    # of its call line (the line table there names the callee's body instead).
    if entry is not None and entry not in addrs:
        addrs = sorted(addrs + [entry])
    # The inlined call's own entry first: that is where the call happens; then in address order.
    order = ([entry] if entry is not None else []) + [a for a in addrs if a != entry]
    where = f"{file}:{line}"
    tried = []
    for addr in order:
        got, missing, why = _try_site(vm, func, addr, spec)
        off = addr - funcs[0][2]
        if missing:
            tried.append(f"+{off} lacks {', '.join(missing)}")
            continue
        reason = (
            f"entry of the inlined {spec.at_call}"
            if addr == entry
            else f"first address of {where} where the arguments are live"
        )
        if tried:
            reason += f" ({'; '.join(tried)})"
        others = [f"+{a - funcs[0][2]}" for a in addrs if a != addr]
        if others:
            reason += f"; {where} also maps to {', '.join(others)}: not probed, so each event counts once"
        notes = tuple(f"probe {spec.name}: {e} dropped: {why[e]}" for e in spec.args if e in why)
        site = _site(vm, addr, file, line, rel, None, reason, got)
        if site is None:
            break
        return ResolvedProbe(spec, (site,), notes=notes, request=request)
    detail = "; ".join(tried) if tried else "no address"
    return ResolvedProbe(
        spec,
        problem=f"probe {spec.name}: at {spec.function}:{rel} ({where}) {detail}: "
        f"the variables are optimised out on this kernel; use `flightrec vm record`",
        request=request,
    )


def _resolve_entry(vm: Vmlinux, spec: ProbeSpec) -> ResolvedProbe:
    """Entry probes: the out-of-line function and every copy inlined into its unit's neighbours."""
    request = f"{spec.function} {' '.join(spec.args)}".rstrip()
    instances: list[tuple[int, DIE, str | None, str, int]] = []  # (addr, scope, inlined into, file, line)
    units: dict[int, CompileUnit] = {}
    for die, sym, addr in vm.function_dies(spec.function):
        units[die.cu.cu_offset] = die.cu
        file = vm.file_name(die.cu, vm.attr(die, "DW_AT_decl_file") or 0)
        instances.append((addr, die, None, file, vm.attr(die, "DW_AT_decl_line") or 0))
    for anchor in spec.units_of:
        for addr, _size, _sym in vm.symbols(anchor):
            cu = vm.unit_at(addr)
            if cu is not None:
                units[cu.cu_offset] = cu
    for cu in units.values():
        for inl, outer in vm.inlined_copies(spec.function, cu):
            addr = vm.entry_pc(inl)
            if addr is not None:
                file = vm.file_name(cu, vm.attr(inl, "DW_AT_decl_file") or 0)
                instances.append((addr, inl, vm.name(outer), file, vm.attr(inl, "DW_AT_decl_line") or 0))
    if not instances:
        return ResolvedProbe(
            spec,
            problem=f"probe {spec.name}: no {spec.function} in this kernel, "
            f"neither out of line nor inlined: use `flightrec vm record`",
            request=request,
        )
    sites, notes, problems = [], [], []
    for addr, scope, into, file, line in sorted(instances, key=lambda i: i[0]):
        got, missing, why = _try_site(vm, scope, addr, spec)
        label = f"{spec.function} inlined into {into}" if into else spec.function
        if missing:
            problems.append(f"{label} lacks {', '.join(missing)}")
            continue
        reason = f"entry of {label}" + (" (every inlined copy is probed)" if into else "")
        site = _site(vm, addr, file, line, 0, into, reason, got)
        if site is not None:
            sites.append(site)
            notes.extend(f"probe {spec.name}: {e} dropped at {site.location}: {why[e]}" for e in spec.args if e in why)
    if problems:
        # A missed copy would hide events: better no probe than a partial one.
        return ResolvedProbe(
            spec,
            problem=f"probe {spec.name}: {'; '.join(problems)} (optimised out): use `flightrec vm record`",
            request=request,
        )
    # Every site must fetch the same fields, or the events would differ in format.
    common = set.intersection(*(set(a.expr for a in s.args) for s in sites))
    sites = [
        Site(
            s.symbol,
            s.offset,
            s.address,
            s.file,
            s.line,
            s.rel_line,
            s.inlined_into,
            s.why,
            tuple(a for a in s.args if a.expr in common),
        )
        for s in sites
    ]
    return ResolvedProbe(spec, tuple(sites), notes=tuple(notes), request=request)


def resolve_specs(vm: Vmlinux, specs: list[ProbeSpec]) -> list[ResolvedProbe]:
    """Resolve each spec in an open vmlinux; per-probe trouble goes in ``problem``.

    :raises FlightrecError: none of the specs' functions is in the kernel (not an AF_XDP kernel).
    """
    if specs and not any(vm.symbols(s.function) or any(vm.symbols(u) for u in s.units_of) for s in specs):
        wanted = ", ".join(sorted({s.function for s in specs}))
        raise FlightrecError(
            f"{vm.path}: none of {wanted} in its symbol table: not a kernel with AF_XDP (CONFIG_XDP_SOCKETS)"
        )
    out: list[ResolvedProbe] = []
    for spec in specs:
        if spec.or_else and out[-1].problem is None:
            continue  # an earlier form of the probe resolved
        try:
            r = _resolve_call(vm, spec) if spec.at_call else _resolve_entry(vm, spec)
        except PARSE_ERRORS as e:
            raise FlightrecError(f"{vm.path}: corrupt DWARF near {spec.function} ({type(e).__name__}: {e})") from None
        if spec.or_else:
            # every form's reason, when none resolves
            r = (
                r
                if r.problem is None
                else ResolvedProbe(spec, problem=f"{out[-1].problem}; or {r.problem}", request=r.request)
            )
            out[-1] = r
        else:
            out.append(r)
    return out


def gnu_build_id(path: Path) -> str | None:
    """The GNU build ID (hex) of an ELF file, to match a vmlinux with a kernel (None if unreadable).

    Only the note named "GNU": a vmlinux also carries Xen notes whose type 3
    reads as NT_GNU_BUILD_ID to pyelftools.
    """
    try:
        with open(path, "rb") as f:
            for sec in ELFFile(f).iter_sections():
                if sec["sh_type"] != "SHT_NOTE":
                    continue
                for note in sec.iter_notes():
                    if note["n_name"] == "GNU" and note["n_type"] == "NT_GNU_BUILD_ID":
                        desc = note["n_desc"]
                        return desc if isinstance(desc, str) else bytes(desc).hex()
    except (OSError, *PARSE_ERRORS):
        return None
    return None
