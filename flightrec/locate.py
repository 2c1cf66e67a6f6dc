"""Where flightrec's own files are: the one place that knows the install layout.

flightrec runs from two layouts:

- a source checkout (``make setup``: an editable install), where ``make build``
  leaves the programs and BPF objects in ``build/c/`` and the C helpers as
  ``flightrec/_scan.so``, ``flightrec/_bulk.so``, ``flightrec/_replay.so`` and
  ``flightrec/_trips.so``;
- an installed wheel (``pip install .``, ``pipx install .``), where the package
  build put the programs and BPF objects in ``flightrec/bin/`` and the C helpers
  beside this file under the interpreter's extension suffix
  (``_scan.cpython-311-x86_64-linux-gnu.so``).

Data files (the probe specs, the VM kernels' config and patches, the marker
library's C header) live inside
the package in both. Every other module asks here; nothing else derives a
path from ``__file__``.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
# What a child Python (the VM guest's) needs on sys.path to import this flightrec.
IMPORT_ROOT = PACKAGE_DIR.parent
BIN_DIR = PACKAGE_DIR / "bin"
PROBE_SPECS_DIR = PACKAGE_DIR / "probes" / "specs"
VM_KERNELS_DIR = PACKAGE_DIR / "vm" / "kernels"
# The marker library's C header (flightrec/xsk_markers.h under it), package data in both layouts.
INCLUDE_DIR = PACKAGE_DIR / "include"

# The programs and BPF objects c/Makefile builds that flightrec runs or loads,
# with the variable that points at another build of each. The objects are found
# by the programs themselves, beside their own executable.
PROGRAMS = {
    "forwarder": "FLIGHTREC_FORWARDER",  # the AF_XDP forwarder; loads xdp_meta.bpf.o
    "xsk_trace": "FLIGHTREC_XSK_TRACE",  # the BPF kernel-event loader (skeleton inside)
    "widen": "FLIGHTREC_WIDEN",  # the race-window widener's loader; loads widen.bpf.o
    "stamp": "FLIGHTREC_STAMP",  # the stamped, self-verifying UDP traffic (send and recv)
}
BPF_OBJECTS = ("xdp_meta.bpf.o", "widen.bpf.o")

# Debian 12 packages that building c/ needs (c/Makefile's header says why each).
BUILD_PACKAGES = "clang llvm gcc make pkg-config libxdp-dev libbpf-dev libelf-dev zlib1g-dev bpftool"


def source_tree() -> Optional[Path]:
    """The checkout this package is imported from, or None for an installed wheel."""
    root = IMPORT_ROOT
    if (root / "pyproject.toml").is_file() and (root / "c" / "Makefile").is_file():
        return root
    return None


def program(name: str) -> Path:
    """The program ``name`` (a key of PROGRAMS): $FLIGHTREC_<NAME> when set, else the
    checkout's build/c/<name> in a source tree, else the installed flightrec/bin/<name>."""
    env = os.environ.get(PROGRAMS[name])
    if env:
        return Path(env)
    tree = source_tree()
    return tree / "build" / "c" / name if tree is not None else BIN_DIR / name


def native_library(stem: str) -> Optional[Path]:
    """The C helper ``stem`` (``_scan``, ``_bulk``, ``_replay``, ``_trips``) as built, or None when it is not.

    ``make build``'s ``_scan.so`` comes first: in a checkout it is the one rebuilt
    when the source changes; the package build names it with the extension suffix.
    """
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for name in (f"{stem}.so", f"{stem}{suffix}"):
        if (PACKAGE_DIR / name).is_file():
            return PACKAGE_DIR / name
    return None


def build_fix(what: str = "c/", packages: str = BUILD_PACKAGES) -> str:
    """How to get the built parts on this layout, as a doctor's fix says it."""
    tree = source_tree()
    if tree is not None:
        return f"apt-get install {packages}; then make -C {tree} build"
    return (
        f"apt-get install {packages}; then reinstall flightrec from its source "
        f"(pip install --force-reinstall --no-deps SOURCE, or pipx reinstall flightrec): "
        f"the package build builds {what} when these are present"
    )
