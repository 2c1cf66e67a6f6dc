"""The report as one self-contained HTML page: verdict first, then the picture.

No network, no script: inline CSS and HTML tables only, so the file opens
from a CI artifact store or a mail attachment as it is. Rendering only;
every verdict and piece of evidence was decided by the checks.

Element ids and classes are an interface (tests and scripts read them):
  #verdict[data-verdict]            the first anomaly's verdict, or "clean"
  section.anomaly[data-kind][data-verdict][data-line]   one per anomaly
  section#sockets tr[data-sock][data-mode]              one per AF_XDP socket (mode read back), when meta.json says
  table.evidence tr[data-line]      the lines that prove it
  table.claims tr[data-holds][data-cpus]   each step of the verdict and whose history it leans on
  table.cpu-timeline[data-cpus]     the side-by-side per-CPU view; td[data-cpu],
                                    tr.evidence for the evidence rows
  table.life[data-addr]             a descriptor's recent life
  #stats, table.per-cpu             the trace's statistics
  table.history tr[data-cpu][data-from]    where each CPU's history begins (data-from "": the whole trace)
"""

from __future__ import annotations

import html

from flightrec import __version__
from flightrec.analysis import Result
from flightrec.checks.anomaly import Anomaly
from flightrec.hexaddr import hex_or
from flightrec.model.lives import context_rows, per_cpu, rows_of
from flightrec.model.timeline import Timeline
from flightrec.model.trips import descriptor_trips
from flightrec.parse import format as kinds
from flightrec.parse.format import POISON
from flightrec.report.console import anomaly_facts, history_words, summary
from flightrec.report.recording import sockets, widened
from flightrec.runfolder import write_atomically

AROUND = 8  # events of context per CPU on each side of the evidence
LONG_LINE = 240  # evidence lines longer than this fold the rest away

CSS = """
:root { --kernel:#c62828; --application:#b26a00; --undetermined:#7b1fa2; --clean:#2e7d32; --ev:#fff3c4; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.source { color: #555; margin: 0 0 14px; font-family: ui-monospace, monospace; }
#verdict { display: inline-block; padding: 10px 18px; border-radius: 8px; color: #fff;
           font-size: 22px; font-weight: 700; }
#verdict .headline { font-size: 15px; font-weight: 400; margin-left: 12px; }
.kernel { background: var(--kernel); } .application { background: var(--application); }
.undetermined { background: var(--undetermined); } .clean { background: var(--clean); }
.badge { color: #fff; padding: 1px 8px; border-radius: 4px; font-weight: 700; font-size: 13px; }
section.anomaly { border: 1px solid #ddd; border-radius: 8px; padding: 14px 18px; margin: 18px 0; }
.facts { color: #444; } .missing { color: var(--undetermined); }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border: 1px solid #d8d8d8; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; color: #666; font-variant-numeric: tabular-nums; }
code, td.ev-text, table.cpu-timeline td.cpu, table.life td.event {
  font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
table.evidence td.ev-text { word-break: break-all; max-width: 900px; }
.why { color: #00695c; display: block; font-family: system-ui, sans-serif; font-size: 12.5px; }
table.cpu-timeline td.cpu { min-width: 330px; max-width: 460px; }
table.cpu-timeline th.cpu { text-align: center; font-size: 15px; }
tr.evidence td.cpu:not(:empty) { background: var(--ev); font-weight: 700; border: 2px solid #e0a800; }
tr.evidence td.ev-text { background: var(--ev); }
table.claims td.mark { font-weight: 700; text-align: center; } tr[data-holds="true"] td.mark { color: var(--clean); }
tr[data-holds="false"] td.mark { color: var(--undetermined); } table.claims td.leans { color: #00695c; }
td.cpu:empty { background: #fafafa; }
details summary { cursor: pointer; color: #555; }
footer { color: #888; margin-top: 28px; font-size: 12px; }
"""

# The page must not reach the network: the browser enforces it.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _cpu_timeline(tl: Timeline, a: Anomaly, around: int) -> str:
    cpus, rows = context_rows(tl, (e.row for e in a.evidence), a.cpus, around)
    if not rows:
        return ""
    why: dict[int, str] = {}
    for e in a.evidence:
        if e.row >= 0:
            why.setdefault(e.row, e.why)
    t0 = tl.ts[rows[0]]
    title = " | ".join(f"CPU {c}" for c in cpus)
    out = [
        f"<h3>Around line {a.line}: {_e(title)}</h3>",
        f'<table class="cpu-timeline" data-cpus="{",".join(map(str, cpus))}">',
        "<thead><tr><th>line</th><th>+µs</th>"
        + "".join(f'<th class="cpu">CPU {c}</th>' for c in cpus)
        + "</tr></thead><tbody>",
    ]
    for r in rows:
        cells = []
        for c in cpus:
            if tl.cpu[r] != c:
                cells.append(f'<td class="cpu" data-cpu="{c}"></td>')
                continue
            text = _e(summary(tl, r))
            if r in why:
                text += f'<span class="why">← {_e(why[r])}</span>'
            cells.append(f'<td class="cpu" data-cpu="{c}" title="{_e(tl.text(r))}">{text}</td>')
        cls = ' class="evidence"' if r in why else ""
        out.append(
            f'<tr{cls} data-line="{tl.line[r]}"><td class="num">{tl.line[r]}</td>'
            f'<td class="num">{(tl.ts[r] - t0) * 1e6:.0f}</td>{"".join(cells)}</tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _evidence(a: Anomaly) -> str:
    out = ['<table class="evidence"><thead><tr><th>line</th><th>trace line and why it matters</th></tr></thead><tbody>']
    for e in a.evidence:
        if len(e.text) > LONG_LINE:
            text = f"<details><summary>{_e(e.text[:LONG_LINE])} …</summary><code>{_e(e.text)}</code></details>"
        else:
            text = _e(e.text)
        out.append(
            f'<tr data-line="{e.line}"><td class="num">{e.line}</td>'
            f'<td class="ev-text">{text}<span class="why">← {_e(e.why)}</span></td></tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _claims(a: Anomaly) -> str:
    if not a.claims:
        return ""
    out = [
        '<h3>Claims</h3><table class="claims"><thead><tr><th></th><th>claim</th><th>leans on</th></tr></thead><tbody>'
    ]
    for c in a.claims:
        missing = "".join(f'<span class="why missing">missing: {_e(g.describe())}</span>' for g in c.gaps)
        out.append(
            f'<tr data-holds="{"true" if c.holds else "false"}" data-cpus="{",".join(map(str, c.cpus))}" '
            f'data-absence="{"true" if c.absence else "false"}"><td class="mark">{"✓" if c.holds else "✗"}</td>'
            f'<td>{_e(c.text)}{missing}</td><td class="leans">{_e(c.leans_on())}</td></tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _history(result: Result) -> str:
    h = result.timeline.history
    out = ["<h3>History per CPU</h3>"]
    out += [f"<p>{_e(said)}</p>" for said in history_words(h)]
    out.append(
        '<table class="history"><thead><tr><th>CPU</th><th>history from</th><th>line</th><th>events</th>'
        "</tr></thead><tbody>"
    )
    for c in h.cpus.values():
        since = "" if c.since == float("-inf") else f"{c.since:.6f}"
        out.append(
            f'<tr data-cpu="{c.cpu}" data-from="{since}"><td class="num">{c.cpu}</td>'
            f'<td class="num">{since or "the whole trace"}</td><td class="num">{c.line or ""}</td>'
            f'<td class="num">{c.events}</td></tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _lives(tl: Timeline, a: Anomaly, trips_by_addr: dict[int, list[list[int]]], around: int) -> str:
    """Each descriptor the anomaly names: its recent events, with the flushes
    that published it (the Perfetto export's trips)."""
    before = max((e.row for e in a.evidence if e.row >= 0), default=len(tl) - 1)
    out = []
    for addr in dict.fromkeys(x for x in (a.addr, a.expected, a.read_addr) if x not in (None, POISON)):
        rows = set(rows_of(tl, addr, before, around))
        if not rows:
            continue
        last = max(max(rows), before)
        for trip in trips_by_addr.get(addr, ()):
            if not rows.isdisjoint(trip):
                rows.update(r for r in trip if tl.kind[r] == kinds.FLUSH and r <= last)
        out.append(
            f'<h3>Life of {addr:#x}</h3><table class="life" data-addr="{addr:#x}"><thead><tr>'
            "<th>line</th><th>time</th><th>CPU</th><th>task</th><th>event</th></tr></thead><tbody>"
        )
        for r in sorted(rows):
            p = tl.parsed
            out.append(
                f'<tr data-line="{tl.line[r]}"><td class="num">{tl.line[r]}</td>'
                f'<td class="num">{tl.ts[r]:.6f}</td>'
                f'<td class="num">{tl.cpu[r]}</td><td>{_e(f"{p.task[r]}-{p.pid[r]}")}</td>'
                f'<td class="event">{_e(summary(tl, r))}</td></tr>'
            )
        out.append("</tbody></table>")
    return "\n".join(out)


def _anomaly(tl: Timeline, a: Anomaly, index: int, total: int, trips_by_addr, around: int) -> str:
    facts = []
    if a.sock:
        facts.append(f"socket {a.sock}")
    if a.xs is not None:
        facts.append(f"xs {a.xs:#x}")
    facts += anomaly_facts(a)
    if a.read_cpu is not None:
        facts.append(f"read on CPU {a.read_cpu}")
    parts = [
        f'<section class="anomaly" id="anomaly-{index}" data-kind="{_e(a.kind)}" data-verdict="{_e(a.verdict)}" '
        f'data-line="{a.line}" data-addr="{hex_or(a.addr, "")}">',
        f'<h2>Anomaly {index}/{total}: <span class="badge {_e(a.verdict)}">{_e(a.verdict.upper())}</span> '
        f"{_e(a.kind)} at line {a.line}</h2>",
        f'<p class="facts">{_e(", ".join(facts))}</p>',
        f'<p class="explanation">{_e(a.explanation)}</p>',
    ]
    if a.missing:
        parts.append(f'<p class="missing">Missing from the trace: {_e("; ".join(a.missing))}</p>')
    parts += [
        "<h3>Evidence</h3>",
        _evidence(a),
        _claims(a),
        _cpu_timeline(tl, a, around),
        _lives(tl, a, trips_by_addr, around),
        "</section>",
    ]
    return "\n".join(p for p in parts if p)


def _stats(result: Result) -> str:
    s = result.stats()
    tl = result.timeline
    w = tl.window
    ev = s["events"]
    rows = [
        ("trace", result.source),
        ("lines", f"{s['lines']} ({s['format']})"),
        (
            "events",
            f"{ev['total']}: {ev['reserve']} reserve, {ev['flush']} flush, {ev['tx']} tx, "
            f"{ev['marker']} markers, {ev['note']} notes, {ev['other']} other",
        ),
        ("CPUs", ", ".join(map(str, s["cpus"]))),
        ("window", f"{w.start:.6f} – {w.end:.6f} ({(w.end - w.start) * 1e3:.3f} ms)"),
    ]
    if s["entries"]:
        rows.append(("entries in buffer / written", f"{s['entries']['in_buffer']} / {s['entries']['written']}"))
    for sock, x in s["sockets"].items():
        rows.append((f"socket {sock}", f"xs {x}"))
    for loss in s["losses"]:
        rows.append(
            (
                "lost events",
                f"CPU {loss['cpu']} lost {loss['count'] if loss['count'] is not None else 'some'} "
                f"events at line {loss['line']}",
            )
        )
    if not ev["reserve"] and not ev["flush"]:
        rows.append(("kernel events", "none in this trace: kernel-side verdicts are undetermined"))
    if s["unparsed_lines"]:
        rows.append(("skipped", f"{s['unparsed_lines']} lines were not ftrace events"))
    out = ['<section id="stats"><h2>Trace statistics</h2><table class="stats"><tbody>']
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</tbody></table>")
    out.append(_history(result))
    if len(tl):
        df = per_cpu(tl)
        out.append(
            '<h3>Per CPU</h3><table class="per-cpu"><thead><tr><th>CPU</th>'
            + "".join(f"<th>{_e(c)}</th>" for c in df.columns)
            + "</tr></thead><tbody>"
        )
        # itertuples keeps each column's type (iterrows would make the counts floats)
        for cpu, *values in df.itertuples(name=None):
            cells = "".join(
                f'<td class="num">{v:.6f}</td>' if isinstance(v, float) else f'<td class="num">{_e(v)}</td>'
                for v in values
            )
            out.append(f'<tr data-cpu="{cpu}"><td class="num">{cpu}</td>{cells}</tr>')
        out.append("</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


def _sockets(result: Result) -> str:
    """The recording's AF_XDP sockets and the mode each really got (meta.json beside the trace)."""
    rows = sockets(result.source, result.meta)
    if not rows:
        return ""
    at_anomaly = any(r.at_anomaly for r in rows)
    heads = [
        "socket",
        "device",
        "queue",
        "mode (read back)",
        "asked",
        "XDP",
        "rings rx/tx/fill/comp",
        "XDP_STATISTICS at end",
        *(["at the anomaly"] if at_anomaly else []),
    ]
    out = [
        '<section id="sockets"><h2>AF_XDP sockets</h2>',
        "<p>The mode each socket got, read back from the kernel after bind (<code>XDP_OPTIONS</code>), "
        "and its <code>XDP_STATISTICS</code>, from the recording's meta.json."
        + (
            " FILL order is not checked on the zero-copy sockets: the driver takes FILL ahead of the "
            "packets and reuses the buffers it drops first, so only ownership is (docs/markers.md)."
            if any(r.mode == "zerocopy" for r in rows)
            else ""
        )
        + "</p>",
        '<table class="stats"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr></thead><tbody>",
    ]
    for r in rows:
        cells = [
            r.sock,
            r.device,
            r.queue,
            r.mode,
            r.asked,
            r.xdp,
            r.rings,
            r.stats,
            *([r.at_anomaly] if at_anomaly else []),
        ]
        out.append(
            f'<tr data-sock="{_e(r.sock)}" data-mode="{_e(r.mode)}">'
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + "</tr>"
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


def render(result: Result, around: int = AROUND) -> str:
    """The whole page."""
    tl = result.timeline
    v = result.verdict
    n = len(result.anomalies)
    if result.anomalies:
        first = result.anomalies[0]
        headline = f"{n} anomal{'y' if n == 1 else 'ies'}, first: {first.kind} at line {first.line}"
    else:
        headline = "no anomaly"
    trips_by_addr: dict[int, list[list[int]]] = {}
    named = {x for a in result.anomalies for x in (a.addr, a.expected, a.read_addr) if x not in (None, POISON)}
    if named:
        for trip in descriptor_trips(tl, named):
            trips_by_addr.setdefault(tl.addr[trip[0]], []).append(trip)
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>flightrec: {_e(v.upper())} — {_e(result.source)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>flightrec report</h1>",
        f'<p class="source">{_e(result.source)}</p>',
        f'<div id="verdict" class="{_e(v)}" data-verdict="{_e(v)}" data-anomalies="{n}">{_e(v.upper())}'
        f'<span class="headline">{_e(headline)}</span></div></header>',
    ]
    amplified = widened(result.source, result.meta)
    if amplified:
        body.append(f'<p id="widened" class="missing"><strong>{_e(amplified)}</strong></p>')
    body += [
        '<main id="anomalies">',
    ]
    if not result.anomalies:
        body.append('<p class="none">No anomaly: every descriptor followed the rings as the checks expect.</p>')
    for i, a in enumerate(result.anomalies, 1):
        body.append(_anomaly(tl, a, i, n, trips_by_addr, around))
    body += [
        "</main>",
        _sockets(result),
        _stats(result),
        f"<footer>flightrec {_e(__version__)} · open the same trace in ui.perfetto.dev with "
        f"<code>flightrec export perfetto</code></footer>",
        "</body></html>",
    ]
    return "\n".join(body) + "\n"


def write_report(result: Result, path: str, around: int = AROUND) -> None:
    """Write the page to `path` ("-": standard output), whole or not at all."""
    page = render(result, around)
    if path == "-":
        import sys

        sys.stdout.write(page)
        return
    write_atomically(path, lambda f: f.write(page.encode()))
