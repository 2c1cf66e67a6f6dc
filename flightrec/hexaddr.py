"""How flightrec writes a value that may be unknown (an address, a socket): ``0x``-prefixed hex.

One place, so analysis.json, simulate's JSON, the HTML report and the checks'
prose spell an address alike; each caller says what stands for an unknown one.
"""

from __future__ import annotations

from typing import Optional, overload


@overload
def hex_or(v: Optional[int]) -> Optional[str]: ...
@overload
def hex_or(v: Optional[int], missing: str) -> str: ...
def hex_or(v: Optional[int], missing: Optional[str] = None) -> Optional[str]:
    """``v`` as ``0x…``, or ``missing`` when ``v`` is None."""
    return missing if v is None else f"{v:#x}"


def hexa(v: Optional[int]) -> str:
    """``v`` as ``0x…`` in prose, ``?`` when unknown."""
    return hex_or(v, "?")
