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

# The mini source's probes, in the same TOML as probes/xsk.toml.
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
    """The cached debug vmlinux of a Debian kernel series, or skip saying how to get it."""
    found = sorted(KERNEL_CACHE.glob(f"linux-image-{series}.*-cloud-amd64-dbg/vmlinux"))
    if not found:
        pytest.skip(f"no Debian {series} debug kernel in {KERNEL_CACHE}: run scripts/fetch-debug-kernel.sh {series}")
    return found[-1]
