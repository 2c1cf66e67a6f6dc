"""The resolver on small ELF files built here with gcc: no big download needed.

mini_xsk.c mirrors net/xdp/xsk.c: rcv() calls the inlined reserve_desc()
(the line search must go through the inlining), struct sock has pointer
members (xs->pool->fq), flush() is inlined into two callers (every copy must
be found). Where perf is installed, each site is also checked against what
`perf probe -x ELF -D` resolves for the same request.
"""

import re
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from flightrec.errors import FlightrecError
from flightrec.probes import load_specs, resolve
from flightrec.probes.dwarf import Site, Vmlinux
from flightrec.probes.perfprobe import dwarf_definitions

from probekit import MINI_SRC, gcc


def _source_line(pattern: str) -> int:
    return next(i for i, line in enumerate(MINI_SRC.read_text().splitlines(), 1) if pattern in line)


def _by_name(resolved):
    return {r.spec.name: r for r in resolved}


def test_call_line_is_found_through_inlining(mini_elf, mini_specs):
    rx = _by_name(resolve(mini_elf, load_specs([mini_specs])))["rx_reserve"]
    assert rx.problem is None
    (site,) = rx.sites  # one site: each event counted once
    call_line = _source_line("/* CALL-LINE */")
    assert (site.file.rsplit("/", 1)[-1], site.line) == ("mini_xsk.c", call_line)
    # perf's relative numbering: the line of the function's declaration is 0.
    assert site.rel_line == call_line - _source_line("int rcv(struct sock *xs")
    assert rx.request == f"rcv:{site.rel_line} addr len xs xs->pool->fq xs->dev"
    assert site.symbol == "rcv" and site.location == f"rcv+{site.offset}"


def test_member_chains_follow_the_struct_layout(mini_elf, mini_specs):
    rx = _by_name(resolve(mini_elf, load_specs([mini_specs])))["rx_reserve"]
    args = {a.name: a.fetch for a in rx.sites[0].args}
    assert list(args) == ["addr", "len", "xs", "fq", "dev"]
    xs = args["xs"].removesuffix(":x64")
    assert re.fullmatch(r"%\w+|[+-]\d+\(%\w+\)", xs)
    # struct sock { int pad[3]; struct pool *pool; void *dev; }: pool at 16, dev at 24;
    # struct pool { long pad; void *fq; }: fq at 8. Always hex, sized by the type.
    assert args["fq"] == f"+8(+16({xs})):x64"
    assert args["dev"] == f"+24({xs}):x64"
    assert args["len"].endswith(":x32") and args["addr"].endswith(":x64")


def test_every_inlined_copy_of_flush_is_found(mini_elf, mini_specs):
    flush = _by_name(resolve(mini_elf, load_specs([mini_specs])))["flush"]
    assert flush.problem is None
    assert sorted(s.inlined_into for s in flush.sites) == ["generic_rcv", "map_flush"]
    assert {s.symbol for s in flush.sites} == {"generic_rcv", "map_flush"}
    assert flush.event_names() == ["flush", "flush_1"]
    assert all(s.line == _source_line("void flush(struct sock *xs)") for s in flush.sites)


def test_optimised_out_variable_is_one_line_saying_what_to_do(mini_elf, tmp_path):
    spec = tmp_path / "gone.toml"
    spec.write_text(
        '[[probe]]\nname = "rx_reserve"\nfunction = "rcv"\nat_call = "reserve_desc"\nargs = ["addr", "gone"]\n'
    )
    (rx,) = resolve(mini_elf, load_specs([spec]))
    assert rx.sites == ()
    assert "\n" not in rx.problem
    assert "gone" in rx.problem and "optimised out" in rx.problem and "flightrec vm record" in rx.problem


def test_optional_argument_is_dropped_with_a_note(mini_elf, tmp_path):
    spec = tmp_path / "opt.toml"
    spec.write_text(
        '[[probe]]\nname = "rx_reserve"\nfunction = "rcv"\nat_call = "reserve_desc"\n'
        'args = ["addr", "gone"]\noptional = ["gone"]\n'
    )
    (rx,) = resolve(mini_elf, load_specs([spec]))
    assert rx.problem is None and rx.args == ("addr",)
    assert any("gone dropped" in n for n in rx.notes)


def test_without_aranges_the_unit_is_still_found(mini_elf, mini_specs, tmp_path):
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy not installed (binutils)")
    bare = tmp_path / "no-aranges"
    subprocess.run(["objcopy", "--remove-section=.debug_aranges", str(mini_elf), str(bare)], check=True)
    want = [(r.spec.name, [s.location for s in r.sites]) for r in resolve(mini_elf, load_specs([mini_specs]))]
    assert [(r.spec.name, [s.location for s in r.sites]) for r in resolve(bare, load_specs([mini_specs]))] == want


def _file_offset(elf_path, addr: int) -> int:
    with open(elf_path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_memsz"]:
                return addr - seg["p_vaddr"] + seg["p_offset"]
    raise AssertionError(f"{addr:#x} in no segment")


def _perf_uprobe(elf, request: str) -> list[tuple[int, str]]:
    out = subprocess.run(
        ["perf", "--no-pager", "probe", "-x", str(elf), "-D", request], capture_output=True, text=True, check=True
    ).stdout
    sites = []
    for line in out.splitlines():
        m = re.match(r"p:\S+ \S+:(0x[0-9a-f]+)\s*(.*)$", line)
        assert m, line
        sites.append((int(m[1], 16), m[2]))
    return sites


def test_sites_agree_with_perf_probe(mini_elf, mini_specs):
    if shutil.which("perf") is None:
        pytest.skip("perf not installed (apt-get install linux-perf): no reference to compare with")
    for r in resolve(mini_elf, load_specs([mini_specs])):
        perf = _perf_uprobe(mini_elf, r.request)
        ours = {_file_offset(mini_elf, s.address): s for s in r.sites}
        if r.spec.at_call:
            # perf probes every address of the line; flightrec picks one of them.
            assert len(ours) == 1 and set(ours) <= {off for off, _ in perf}, (r.request, perf)
        else:
            assert set(ours) == {off for off, _ in perf}, (r.request, perf)
        # Same registers and member offsets as perf for the chosen address (perf may type them u/s).
        for off, args in perf:
            if off in ours:
                mine = " ".join(f"{a.name}={a.fetch}" for a in ours[off].args)
                assert re.sub(r":[xsu](\d+)", r":\1", mine) == re.sub(r":[xsu](\d+)", r":\1", args)


def test_dwarf_definitions_without_perf(mini_elf, mini_specs):
    defs = [d.text for r in resolve(mini_elf, load_specs([mini_specs])) for d in dwarf_definitions(r)]
    assert defs[0].startswith("p:flightrec/rx_reserve rcv+") and " fq=+8(+16(" in defs[0]
    assert [d.split()[0] for d in defs] == [
        "p:flightrec/rx_reserve",
        "p:flightrec/flush",
        "p:flightrec/flush_1",
        "p:flightrec/tx_get_data",
    ]


# --- bad input: one line, FlightrecError (the CLI turns it into exit 2) ---


def test_not_an_elf(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"\x1f\x8b compressed kernel, not an ELF")
    with pytest.raises(FlightrecError, match="not an ELF file"):
        Vmlinux(path)


def test_elf_without_dwarf(tmp_path):
    with pytest.raises(FlightrecError, match=r"no DWARF .*-dbg"):
        Vmlinux(gcc(tmp_path / "nodebug", "-O2"))


def test_kernel_without_the_functions(mini_elf):
    # mini_elf has DWARF but no __xsk_rcv_zc, xsk_flush or xp_raw_get_data.
    with pytest.raises(FlightrecError, match="not a kernel with AF_XDP"):
        resolve(mini_elf)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_file(mini_elf, tmp_path, keep):
    data = mini_elf.read_bytes()
    path = tmp_path / "truncated"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FlightrecError, match="truncated|corrupt"):
        resolve(path)


def test_corrupt_debug_info_is_an_error_not_a_traceback(mini_elf, mini_specs, tmp_path):
    data = bytearray(mini_elf.read_bytes())
    with open(mini_elf, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".debug_info")
        start, size = sec["sh_offset"], sec["sh_size"]
    data[start + 11 : start + size] = b"\xff" * (size - 11)  # keep the unit header, garble the DIEs
    path = tmp_path / "garbled"
    path.write_bytes(bytes(data))
    try:
        resolved = resolve(path, load_specs([mini_specs]))
    except FlightrecError as e:
        assert "\n" not in str(e)
    else:  # garbage that still parses must at least not produce sites
        assert all(r.problem for r in resolved)


def test_random_corruption_never_escapes_as_a_traceback(mini_elf, mini_specs, tmp_path):
    """Flip bytes in each debug section and the symbol table: a result or FlightrecError, nothing else."""
    import random

    data = mini_elf.read_bytes()
    with open(mini_elf, "rb") as f:
        sections = [
            (s.name, s["sh_offset"], s["sh_size"])
            for s in ELFFile(f).iter_sections()
            if s.name.startswith(".debug") or s.name in (".symtab", ".strtab")
        ]
    specs = load_specs([mini_specs])
    path = tmp_path / "flipped"
    outcomes = {"resolved": 0, "refused": 0}
    for seed in range(200):
        rnd = random.Random(seed)
        name, off, size = rnd.choice(sections)
        b = bytearray(data)
        for _ in range(rnd.randint(1, 20)):
            b[off + rnd.randrange(size)] = rnd.randrange(256)
        path.write_bytes(bytes(b))
        try:
            resolve(path, specs)
            outcomes["resolved"] += 1
        except FlightrecError as e:
            assert "\n" not in str(e), (seed, name)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 200


def test_dwarf4_gives_the_same_sites(mini_elf, mini_specs, tmp_path):
    """Older toolchains (and older kernels) write DWARF 4: .debug_loc/.debug_ranges, 1-based files."""
    v4 = gcc(tmp_path / "mini-dwarf4", "-gdwarf-4", "-O2")
    specs = load_specs([mini_specs])

    def sites(path):
        return [
            (r.spec.name, [(s.location, s.line, s.file.rsplit("/", 1)[-1], s.args) for s in r.sites])
            for r in resolve(path, specs)
        ]

    assert sites(v4) == sites(mini_elf)


def test_perf_is_asked_for_a_gcc_clone_by_its_dwarf_name():
    """A clone's symbol (Debian 7.3: __xsk_rcv_zc.constprop.0) names no DWARF function, so
    perf probe refuses it as FUNC; the kprobe itself goes on the symbol kallsyms has."""
    site = Site("__xsk_rcv_zc.constprop.0", 70, 0xFFFFFFFF820DEC16, "net/xdp/xsk.c", 198, 7, None, "", ())
    assert site.location == "__xsk_rcv_zc.constprop.0+70"
    assert site.perf_location == "__xsk_rcv_zc+70"
    plain = Site("rcv", 12, 0x401000, "mini_xsk.c", 30, 5, None, "", ())
    assert plain.perf_location == plain.location == "rcv+12"
