"""What the recording said about itself (meta.json beside the trace), for the reports.

The analysis reads the trace alone; a report must still say plainly when the
run it explains was not a plain run: a race-window widener (flightrec vm
record --widen) is a fault amplifier, and a verdict from such a run must
carry that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def widened(source: str) -> Optional[str]:
    """The widener's summary from DIR/meta.json when the trace is DIR/trace.txt, else None."""
    meta = Path(source).parent / "meta.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    w = data.get("widened") if isinstance(data, dict) else None
    if isinstance(w, dict) and w.get("summary"):
        return str(w["summary"])
    return None
