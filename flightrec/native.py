"""flightrec's C helpers (built by `make` beside this file), loaded with ctypes.

Each has a Python twin that produces the same output; FLIGHTREC_PURE_PYTHON
switches every C helper off, which the tests use to compare the two.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
from typing import Callable, Optional

HERE = pathlib.Path(__file__).resolve().parent

_loaded: dict[str, Optional[ctypes.CDLL]] = {}


def load(name: str, declare: Callable[[ctypes.CDLL], None]) -> Optional[ctypes.CDLL]:
    """flightrec/<name> with its functions' types declared, or None when it is
    not built, cannot be loaded, or FLIGHTREC_PURE_PYTHON is set."""
    if os.environ.get("FLIGHTREC_PURE_PYTHON"):
        return None
    if name not in _loaded:
        try:
            lib: Optional[ctypes.CDLL] = ctypes.CDLL(str(HERE / name))
        except OSError:
            lib = None
        if lib is not None:
            declare(lib)
        _loaded[name] = lib
    return _loaded[name]
