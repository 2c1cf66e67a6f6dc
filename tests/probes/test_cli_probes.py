"""`flightrec probes` from the outside: output, exit codes, one-line errors."""

import json
import re
import subprocess
import sys

import pytest

from probekit import ROOT, gcc


def flightrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flightrec", "probes", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def _one_line_exit_2(out: subprocess.CompletedProcess, pattern: str) -> None:
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("flightrec: ") and pattern in out.stderr, out.stderr


def test_show_prints_sites_and_definitions(mini_elf, mini_specs):
    out = flightrec("show", "--vmlinux", str(mini_elf), "--specs", str(mini_specs), "--no-perf")
    assert out.returncode == 0, out.stderr
    assert "asked     rcv:" in out.stdout
    assert "(event flush_1)" in out.stdout
    assert "dwarf     p:flightrec/rx_reserve rcv+" in out.stdout


def test_show_json(mini_elf, mini_specs):
    out = flightrec("show", "--json", "--vmlinux", str(mini_elf), "--specs", str(mini_specs), "--no-perf")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    probes = {p["name"]: p for p in doc["probes"]}
    assert len(probes["flush"]["sites"]) == 2 and doc["problems"] == []
    assert probes["rx_reserve"]["sites"][0]["args"]["fq"].startswith("+8(+16(")


def test_not_an_elf(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    _one_line_exit_2(flightrec("show", "--vmlinux", str(bad)), "not an ELF file")


def test_elf_without_dwarf(tmp_path):
    _one_line_exit_2(flightrec("show", "--vmlinux", str(gcc(tmp_path / "nodebug", "-O2"))), "no DWARF")


def test_kernel_without_xsk_rcv_zc(mini_elf):
    _one_line_exit_2(flightrec("show", "--vmlinux", str(mini_elf)), "__xsk_rcv_zc")


def test_truncated(mini_elf, tmp_path):
    cut = tmp_path / "cut"
    cut.write_bytes(mini_elf.read_bytes()[:4096])
    _one_line_exit_2(flightrec("show", "--vmlinux", str(cut)), "truncated")


def test_missing_file(tmp_path):
    _one_line_exit_2(flightrec("show", "--vmlinux", str(tmp_path / "nope")), "No such file")


def test_variable_optimised_out_is_one_line_per_probe(mini_elf, tmp_path):
    spec = tmp_path / "gone.toml"
    spec.write_text('[[probe]]\nname = "rx_reserve"\nfunction = "rcv"\nat_call = "reserve_desc"\nargs = ["gone"]\n')
    out = flightrec("show", "--vmlinux", str(mini_elf), "--specs", str(spec), "--no-perf")
    _one_line_exit_2(out, "probe rx_reserve: ")
    assert "optimised out" in out.stderr and "flightrec vm record" in out.stderr


@pytest.mark.parametrize("cmd", [(), ("show",), ("install",), ("remove",)])
def test_help_ends_with_examples(cmd):
    out = flightrec(*cmd, "--help")
    assert out.returncode == 0
    assert re.search(r"Examples:\n( +flightrec probes .*\n)+", out.stdout), out.stdout


def test_install_without_kprobes_says_why(tmp_path):
    from flightrec.probes import kprobes_unavailable_reason

    why = kprobes_unavailable_reason()
    if why is None:
        pytest.skip("this kernel has kprobes: tests/probes/test_kprobe_events.py installs for real")
    _one_line_exit_2(flightrec("install"), why)
    _one_line_exit_2(flightrec("remove"), why)
