"""What the recording said about itself (meta.json beside the trace), for the reports.

The analysis reads the trace and, for the kernel-event source's end, meta.json
(flightrec.parse.meta); a report must still say plainly when the run it
explains was not a plain run: a race-window widener (flightrec vm record
--widen) is a fault amplifier, and a verdict from such a run must carry that.
"""

from __future__ import annotations

from typing import Optional

from flightrec.parse.meta import read_meta, widened_summary


def widened(source: str, meta: Optional[dict] = None) -> Optional[str]:
    """The widener's summary from DIR/meta.json when the trace is DIR/trace.txt
    (or from `meta`, already read), else None."""
    return widened_summary(meta if meta is not None else read_meta(source))
