"""The resolver on Debian's real debug kernels, checked against perf probe and the source.

The kernels come from scripts/fetch-debug-kernel.sh (cached under
/var/cache/flightrec/kernels); without them these tests skip and say so.
Debian 12's 6.1 is the post's kernel family; 6.12 (bookworm-security) is a
newer layout of the same code; 7.3 (trixie-backports, which `make setup`
adds to apt's sources) calls __xsk_rcv_zc only with flags 0, so gcc probes
a clone of it, ``__xsk_rcv_zc.constprop.0``.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.probes import definitions, resolve
from flightrec.probes.perfprobe import dwarf_definitions, perf_definitions

from probekit import ROOT, cached_kernel

pytestmark = pytest.mark.slow
SERIES = ["6.1", "6.12", "7.3"]


@pytest.fixture(scope="module", params=SERIES)
def kernel(request):
    vmlinux = cached_kernel(request.param)
    return vmlinux, {r.spec.name: r for r in resolve(vmlinux)}


def _perf(vmlinux: Path, request: str) -> list[tuple[str, str]]:
    """(symbol+offset, args) of each definition perf probe -D writes for a request."""
    if shutil.which("perf") is None:
        pytest.skip("perf not installed (apt-get install linux-perf): no reference to compare with")
    out = []
    for line in perf_definitions(vmlinux, [request]):
        _, where, args = line.split(" ", 2) if line.count(" ") >= 2 else (*line.split(" ", 1), "")
        out.append((where, args))
    return out


def _args(site) -> str:
    return " ".join(f"{a.name}={a.fetch}" for a in site.args)


TX_PROBES = ("tx_xmit", "skb_destruct", "cq_reserve", "cq_submit")
# The fields each TX/COMPLETION probe gets per kernel (docs/markers.md): where the
# kernel keeps them live, and what it keeps where (6.12 writes the address at reserve).
TX_FIELDS = {
    "6.1": {
        "tx_xmit": ["addr", "xs", "skb"],
        "skb_destruct": ["skb", "xs"],
        "cq_reserve": ["addr", "xs"],
        "cq_submit": ["addr", "xs", "cq", "slot"],
    },
    "6.12": {
        "tx_xmit": ["addr", "len", "xs"],
        "skb_destruct": ["skb", "xs"],
        "cq_reserve": ["addr", "xs", "cq", "slot"],
        "cq_submit": ["xs", "n", "cq", "slot"],
    },
    "7.3": {
        "tx_xmit": ["addr", "len"],
        "skb_destruct": ["skb", "xs"],
        "cq_reserve": ["cq", "slot"],
        "cq_submit": ["skb", "xs", "cq", "slot"],
    },
}


def test_every_probe_resolves(kernel):
    _, resolved = kernel
    assert {n: r.problem for n, r in resolved.items()} == dict.fromkeys(
        ("rx_reserve", "flush", "tx_get_data") + TX_PROBES
    )
    assert [a.name for a in resolved["rx_reserve"].sites[0].args] == ["addr", "len", "xs", "fq", "dev"]


def test_tx_and_completion_probes_get_the_fields_each_kernel_keeps(kernel):
    vmlinux, resolved = kernel
    series = next(s for s in SERIES if f"linux-image-{s}." in str(vmlinux))
    got = {n: [a.name for a in resolved[n].sites[0].args] for n in TX_PROBES}
    assert got == TX_FIELDS[series]
    # every inlined copy fetches the same fields (7.3 reserves at two calls)
    assert all(len({tuple(a.name for a in s.args) for s in resolved[n].sites}) == 1 for n in TX_PROBES)
    # the COMPLETION ring and its index come from the same queue in both probes
    reserve, submit = resolved["cq_reserve"].sites[0].args, resolved["cq_submit"].sites[0].args
    cq = {a.name: a.fetch for a in submit}["cq"].rsplit(":", 1)[0]
    assert {a.name: a.fetch for a in submit}["slot"].startswith("+0(+16(" + cq)  # cq->ring->producer
    if "slot" in {a.name for a in reserve}:
        r_cq = {a.name: a.fetch for a in reserve}["cq"].rsplit(":", 1)[0]
        assert {a.name: a.fetch for a in reserve}["slot"] == f"+8({r_cq}):x32"  # cq->cached_prod


def test_rx_reserve_is_one_of_perfs_sites_for_the_same_line(kernel):
    vmlinux, resolved = kernel
    rx = resolved["rx_reserve"]
    (site,) = rx.sites
    assert rx.request.startswith(f"__xsk_rcv_zc:{site.rel_line} ")
    perf = _perf(vmlinux, rx.request)
    # perf probes every address of the line (Debian 6.1: +58 and +65); flightrec one of them,
    # with the very same fetch arguments.
    assert len(perf) >= 2
    assert (site.location, _args(site)) in perf


def test_rx_reserve_line_is_the_call_in_the_source(kernel):
    vmlinux, resolved = kernel
    site = resolved["rx_reserve"].sites[0]
    src = vmlinux.parent / "src" / site.file
    if not src.is_file():
        pytest.skip(f"no {src}: scripts/fetch-debug-kernel.sh takes it from linux-source when apt has it")
    lines = src.read_text().splitlines()
    assert "xskq_prod_reserve_desc(" in lines[site.line - 1]
    decl = next(i for i, line in enumerate(lines, 1) if re.match(r"static int __xsk_rcv_zc\(", line))
    assert site.line - decl == site.rel_line  # perf's FUNC:N counts from the declaration line


def test_flush_sites_are_every_inlined_copy_perf_finds(kernel):
    vmlinux, resolved = kernel
    flush = resolved["flush"]
    assert {s.inlined_into for s in flush.sites} == {"__xsk_map_flush", "xsk_generic_rcv"}
    assert sorted((s.location, _args(s)) for s in flush.sites) == sorted(_perf(vmlinux, "xsk_flush xs"))


def test_tx_get_data_is_the_function_entry(kernel):
    vmlinux, resolved = kernel
    (site,) = resolved["tx_get_data"].sites
    assert site.location == "xp_raw_get_data+0"
    assert [(site.location, _args(site))] == _perf(vmlinux, "xp_raw_get_data addr")


def test_perf_and_dwarf_definitions_agree(kernel):
    vmlinux, resolved = kernel
    if shutil.which("perf") is None:
        pytest.skip("perf not installed (apt-get install linux-perf)")
    defs, problems = definitions(list(resolved.values()), vmlinux)
    assert problems == []
    # perf writes them all but 6.1's two on a struct kept in registers (desc.addr in a
    # DW_OP_piece), which perf refuses and flightrec writes itself
    dwarf = [d.probe for d in defs if d.source == "dwarf"]
    assert dwarf in ([], ["tx_xmit", "cq_reserve"]), dwarf
    # where flightrec can write a site itself, it writes what perf does (7.3's
    # frame-base locations only perf translates)
    for r in resolved.values():
        try:
            ours = [d.text for d in dwarf_definitions(r)]
        except FlightrecError:
            continue
        assert [d.text for d in defs if d.probe == r.spec.name] == ours
    # The fields come out as the analyzer reads them (docs/markers.md).
    rx = next(d.text for d in defs if d.event == "rx_reserve")
    assert re.fullmatch(
        r"p:flightrec/rx_reserve __xsk_rcv_zc(\.constprop\.\d+)?\+\d+ "
        r"addr=\S+:x64 len=\S+:x32 xs=\S+:x64 fq=\+\d+\(\+\d+\(\S+\)\):x64 dev=\+\d+\(\S+\):x64",
        rx,
    )


def test_bench_stays_within_budget():
    vmlinux = cached_kernel("6.1")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "probes"), str(vmlinux)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r": ([\d.]+) s, peak RSS (\d+) MB", out.stdout)
    assert m and float(m[1]) < 30 and int(m[2]) < 1024, out.stdout


def test_cli_show(kernel):
    vmlinux, _ = kernel
    out = subprocess.run(
        [sys.executable, "-m", "flightrec", "probes", "show", "--vmlinux", str(vmlinux)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(
        r"site +__xsk_rcv_zc(\.constprop\.\d+)?\+\d+ +net/xdp/xsk\.c:\d+ +\(event rx_reserve\)", out.stdout
    )
    assert out.stdout.count("(event flush") == 2
