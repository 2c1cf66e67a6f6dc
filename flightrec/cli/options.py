"""What more than one command shares, spelled once: options, and running without the collector."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import click


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The garbage collector off, then as it was. An analysis leaves next to no
    cycles (14 objects a trace), and the collector's passes over its objects
    cost ~5% of a million-line trace's (bench/analyze --real); back on after,
    as the tests run commands in-process."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """numpy's huge-page hint (madvise MADV_HUGEPAGE on large arrays) off, then
    as it was. The export makes many large short-lived arrays and touches some
    only in part; each huge-page fault zeroes 2 MiB. On bench/export's trace
    (development VM, median of 8) the export's system time was 0.52 s with
    the hint and 0.24 s without; user time unchanged. Best effort: numpy may
    drop this private setter."""
    from numpy._core import multiarray

    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    was = setter(False) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None:
            setter(was)


# the per-CPU buffer of the recording's tracefs instance (record, attach)
buffer_kb = click.option(
    "-b",
    "--buffer-kb",
    type=click.IntRange(min=4),
    default=4096,
    show_default=True,
    help="Per-CPU trace buffer size in KB.",
)
