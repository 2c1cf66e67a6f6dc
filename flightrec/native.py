"""flightrec's C helpers (built by `make build` or the package build), loaded with ctypes.

Each has a Python twin that produces the same output; FLIGHTREC_PURE_PYTHON
switches every C helper off, which the tests use to compare the two.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Callable, Optional, Union

import numpy as np

from flightrec import locate

# What the C helpers read in place: bytes, or a file mapped read-only (a trace
# file: its pages are the page cache's, not a copy, and need not all stay resident)
Buffer = Union[bytes, mmap.mmap]

_loaded: dict[str, Optional[ctypes.CDLL]] = {}


def load(name: str, declare: Callable[[ctypes.CDLL], None]) -> Optional[ctypes.CDLL]:
    """The C helper ``name`` (``_scan``, ``_bulk``, ``_replay``, ``_trips``) with its functions' types declared,
    or None when it is not built, cannot be loaded, or FLIGHTREC_PURE_PYTHON is set."""
    if os.environ.get("FLIGHTREC_PURE_PYTHON"):
        return None
    if name not in _loaded:
        path = locate.native_library(name)
        try:
            lib: Optional[ctypes.CDLL] = ctypes.CDLL(str(path)) if path is not None else None
        except OSError:
            lib = None
        if lib is not None:
            declare(lib)
        _loaded[name] = lib
    return _loaded[name]


def address(data: Buffer) -> int:
    """Where the first byte of `data` is (ctypes cannot pass a read-only
    mapping), for a C helper that reads it while `data` lives."""
    return np.frombuffer(data, np.uint8).ctypes.data
