"""A recording's summaries beside its trace: analysis.json, report.html, the Perfetto file.

`flightrec record` and `flightrec vm record` call :func:`summarize` once the
trace is saved; the trace is analyzed once and the three files are written
from that one result (each whole or not at all), with the same content as
`flightrec analyze --json`, `flightrec report` and `flightrec export perfetto`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from flightrec import runfolder
from flightrec.errors import FlightrecError

if TYPE_CHECKING:
    from flightrec.analysis import Result


@dataclass(frozen=True)
class Summary:
    """What the analysis of a saved trace said: the line to print, and its verdict
    (None when there is none: the analysis failed)."""

    line: str
    verdict: Optional[str]

    def exit_code(self, recorded: int) -> int:
        """The run's exit code once the analysis is in: a recording that ended clean
        (0) whose trace the analysis finds an anomaly in exits 1, as when the
        forwarder catches one itself; a CI job must not pass on it."""
        return 1 if recorded == 0 and self.verdict not in (None, "clean") else recorded


def analysis_document(result: "Result") -> dict:
    """`flightrec analyze --json`'s object for one trace (analysis.json)."""
    from flightrec.report.recording import widened

    doc = result.to_json()
    amplified = widened(result.source, result.meta)
    if amplified:
        doc["widened"] = amplified
    return doc


def verdict_line(doc: dict) -> str:
    """The one line record prints: the verdict and the first anomaly."""
    line = f"verdict: {doc.get('verdict')}"
    if doc.get("anomalies"):
        first = doc["anomalies"][0]
        sock = first.get("sock") or (f"xs {first['xs']}" if first.get("xs") else "?")
        if first.get("queue") is not None and "q:" not in sock:
            sock += f" q:{first['queue']}"
        line += f" ({first.get('kind')}, descriptor {first.get('addr')}, {sock})"
    not_run = (doc.get("stats") or {}).get("checks_not_run") or []
    unmarked = [n for n in not_run if n.get("needs", "markers") == "markers"]
    if unmarked:
        line += f" (no application markers: {len(unmarked)} checks not run; kernel events only)"
    others = [n["check"] for n in not_run if n not in unmarked]
    if others:
        line += f" (not run: {', '.join(others)}: see analysis.json)"
    return line


def summarize(trace: Path, out_dir: Path) -> Summary:
    """Analyze ``trace``; write DIR/analysis.json, report.html and trace.pftrace;
    return the verdict and its line, or one line saying why there is none.

    Never raises for a bad trace or a failed write, nor for a bug in the analysis:
    the recording's own result and exit code stand whatever happens here.
    """
    from flightrec.analysis import analyze_path
    from flightrec.report.html import write_report
    from flightrec.report.pftrace import write_trace_file

    try:
        result = analyze_path(str(trace))
        doc = analysis_document(result)
        runfolder.write_json(out_dir, runfolder.ANALYSIS, doc)
    except FlightrecError as e:
        return Summary(f"analysis failed: {e}", None)
    except Exception as e:  # noqa: BLE001 - a bug in the analysis must not cost the recording
        return Summary(f"analysis failed: {type(e).__name__}: {e}", None)
    line = verdict_line(doc)
    # Beside the trace, what a CI artifact opens in a browser.
    for name, write in ((runfolder.REPORT, write_report), (runfolder.PERFETTO, write_trace_file)):
        try:
            write(result, str(out_dir / name))
        except Exception as e:  # noqa: BLE001 - as above: the verdict is already known
            line += f"; {name} not written ({type(e).__name__}: {e})"
    return Summary(line, doc.get("verdict"))
