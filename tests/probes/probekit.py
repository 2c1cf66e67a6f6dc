"""Helpers for the probe tests: small ELF files built with gcc, cached debug kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MINI_SRC = HERE / "mini_xsk.c"
KERNEL_CACHE = Path(os.environ.get("FLIGHTREC_KERNEL_CACHE", "/var/cache/flightrec/kernels"))

# The mini source's probes, in the same TOML as flightrec/probes/specs/xsk.toml.
MINI_SPECS = """
[[probe]]
name = "rx_reserve"
function = "rcv"
at_call = "reserve_desc"
args = ["addr", "len", "xs", "xs->pool->fq", "xs->dev"]

[[probe]]
name = "flush"
function = "flush"
units_of = ["map_flush", "generic_rcv"]
args = ["xs"]

[[probe]]
name = "tx_get_data"
function = "ext"
args = ["v"]
"""


def gcc(out: Path, *flags: str, src: Path = MINI_SRC) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (apt-get install gcc): cannot build the test ELF files")
    subprocess.run(["gcc", *flags, "-fno-pie", "-no-pie", "-o", str(out), str(src)], check=True)
    return out


def cached_kernel(series: str) -> Path:
    """The debug vmlinux of a Debian kernel series, fetched into the cache on first use.

    scripts/fetch-debug-kernel.sh does the work (apt-get download, ~1-2 min the first
    time, < 1 s once cached); only a machine whose apt cannot give the package skips.
    """
    found = sorted(KERNEL_CACHE.glob(f"linux-image-{series}.*-cloud-amd64-dbg/vmlinux"))
    # A vmlinux the VM code fetched alone has no src/ beside it: the script adds it.
    if found and (found[-1].parent / "src" / "net" / "xdp" / "xsk.c").is_file():
        return found[-1]
    proc = subprocess.run(
        ["sh", str(ROOT / "scripts" / "fetch-debug-kernel.sh"), series], capture_output=True, text=True, timeout=1800
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        pytest.skip(f"cannot fetch Debian's {series} debug kernel: {why}")
    return Path(lines[-1])


def kernel_source(vmlinux: Path) -> Path:
    """net/xdp/ of the same source version, which fetch-debug-kernel.sh keeps beside the vmlinux."""
    src = vmlinux.parent / "src"
    if not (src / "net" / "xdp" / "xsk_queue.h").is_file():
        pytest.skip(f"no net/xdp source beside {vmlinux} (apt has no linux-source of that version)")
    return src
