"""Options that more than one command takes, spelled once."""

from __future__ import annotations

import click

# the per-CPU buffer of the recording's tracefs instance (record, attach)
buffer_kb = click.option(
    "-b",
    "--buffer-kb",
    type=click.IntRange(min=4),
    default=4096,
    show_default=True,
    help="Per-CPU trace buffer size in KB.",
)
