"""The terminal report: verdict first, then the cross-CPU picture, then lives.

Rendering only; everything it shows was decided by the checks.
"""

from __future__ import annotations

from typing import Optional

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flightrec.analysis import Result
from flightrec.checks.anomaly import Anomaly
from flightrec.model.history import History
from flightrec.model.lives import context_rows, life, per_cpu, rows_of
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds
from flightrec.parse.format import POISON
from flightrec.report.recording import sockets, widened

VERDICT_STYLE = {
    "kernel": "bold red",
    "application": "bold yellow",
    "undetermined": "bold magenta",
    "clean": "bold green",
}


def summary(tl: Timeline, row: int) -> str:
    """One event in a few words, for a narrow column."""
    k = tl.kind[row]
    if k == kinds.MARKER:
        s = f"{tl.sock[row]} {tl.addr[row]:#x} {tl.frm[row]} -> {tl.to[row]}"
        detail = tl.detail[row]
        if detail:
            # the remaining list can hold a hundred addresses: the evidence shows it whole
            s += ": " + detail.split("remaining")[0].strip()[:48]
        return s
    if k == kinds.NOTE:
        return f"{tl.addr[row]:#x} {tl.detail[row]}"
    if k == kinds.RESERVE:
        ln = f" len {tl.length[row]:#x}" if tl.length[row] is not None else ""
        return f"reserve {tl.addr[row]:#x}{ln} xs …{tl.xs[row] & 0xFFFF:04x}"
    if k == kinds.FLUSH:
        return f"xsk_flush xs …{tl.xs[row] & 0xFFFF:04x}"
    if k == kinds.TX:
        return f"tx {tl.addr[row]:#x}"
    p = tl.parsed
    return f"{p.event[row]}: {p.body[row][:40]}"


def anomaly_facts(a: Anomaly) -> list[str]:
    """The descriptors and CPUs of an anomaly, in words (both reports use them)."""
    facts = []
    for label, value in (("descriptor", a.addr), ("read", a.read_addr), ("expected", a.expected)):
        if value is not None:
            facts.append(f"{label} {value:#x}")
    for label, cpu in (("reserved on", a.reserve_cpu), ("published on", a.flush_cpu)):
        if cpu is not None:
            facts.append(f"{label} CPU {cpu}")
    return facts


def history_words(h: History) -> list[str]:
    """Per CPU, where its history begins, and when the kernel side stopped (both reports use them)."""
    if not h.overrun:
        out = ["every CPU's history is the whole trace (no buffer overran)"]
    else:
        out = [
            "buffers overran; each CPU's history begins at its first event: "
            + ", ".join(f"CPU {c.cpu} from {c.since:.6f} (line {c.line})" for c in h.cpus.values())
        ]
    if h.idle:
        out.append(
            f"CPU{'s' if len(h.idle) > 1 else ''} {', '.join(map(str, h.idle))}: no event, so nothing "
            "written: a whole, empty history"
        )
    if h.kernel_until != float("inf"):
        out.append(
            f"kernel events end at {h.kernel_until:.6f}: the kernel-event source stopped then "
            "(meta.json), so their absence after it proves nothing"
        )
    return out


def claims_table(a: Anomaly) -> Optional[Table]:
    """Each step of the verdict and whose history it leaned on."""
    if not a.claims:
        return None
    grid = Table.grid(padding=(0, 1))
    grid.add_column()
    grid.add_column()
    for c in a.claims:
        mark = Text("✓", style="green") if c.holds else Text("✗", style="bold magenta")
        body = Text(c.text) + Text(f"  ← {c.leans_on()}", style="cyan")
        for g in c.gaps:
            body.append(f"\n  missing: {g.describe()}", style="magenta")
        grid.add_row(mark, body)
    return grid


def side_by_side(tl: Timeline, a: Anomaly, around: int) -> Optional[Table]:
    """The post's "CPU 2 | CPU 0" figure: the events around the evidence,
    one column per CPU involved, one row per event, in time order."""
    cpus, rows = context_rows(tl, (e.row for e in a.evidence), a.cpus, around)
    if not rows:
        return None
    t0 = tl.ts[rows[0]]
    table = Table(title=f"around line {a.line}: " + " | ".join(f"CPU {c}" for c in cpus), expand=False)
    table.add_column("line", justify="right", style="dim")
    table.add_column("+µs", justify="right")
    for c in cpus:
        table.add_column(f"CPU {c}", overflow="fold", max_width=58)
    evidence_rows = {e.row: e.why for e in a.evidence}
    for r in rows:
        cells = [""] * len(cpus)
        text = Text(summary(tl, r))
        if r in evidence_rows:
            text.stylize("bold")
            text.append(f"\n  ← {evidence_rows[r]}", style="cyan")
        cells[cpus.index(tl.cpu[r])] = text
        table.add_row(str(tl.line[r]), f"{(tl.ts[r] - t0) * 1e6:.0f}", *cells)
    return table


def life_table(tl: Timeline, addr: int, rows: list[int], title: str) -> Table:
    table = Table(title=title, expand=False)
    for name, just in (("line", "right"), ("time", "right"), ("CPU", "right"), ("task", "left"), ("event", "left")):
        table.add_column(name, justify=just)
    for r in rows:
        table.add_row(
            str(tl.line[r]),
            f"{tl.ts[r]:.6f}",
            str(tl.cpu[r]),
            f"{tl.parsed.task[r]}-{tl.parsed.pid[r]}",
            summary(tl, r),
        )
    return table


def anomaly_panel(tl: Timeline, a: Anomaly, around: int, index: int, total: int) -> Panel:
    head = Text()
    head.append(f"{a.verdict.upper()}", style=VERDICT_STYLE.get(a.verdict, "bold"))
    head.append(f"  {a.kind}  line {a.line}")
    if a.sock:
        head.append(f"  {a.sock}")
    if a.xs is not None:
        head.append(f"  xs {a.xs:#x}")
    parts: list = [head, Text(", ".join(anomaly_facts(a)), style="dim"), Text(a.explanation)]
    if a.missing:
        parts.append(Text("missing from the trace: " + "; ".join(a.missing), style="magenta"))
    ev = Table.grid(padding=(0, 1))
    ev.add_column(justify="right", style="dim")
    ev.add_column()
    for e in a.evidence:
        text = e.text if len(e.text) <= 200 else e.text[:200] + " …"
        ev.add_row(str(e.line), Text(text, style="bold") + Text(f"  ← {e.why}", style="cyan"))
    parts += [Text("evidence:"), ev]
    claims = claims_table(a)
    if claims is not None:
        parts += [Text("claims (✓ holds; each leans on the history named):"), claims]
    table = side_by_side(tl, a, around)
    if table is not None:
        parts.append(table)
    for addr in dict.fromkeys(x for x in (a.addr, a.expected, a.read_addr) if x not in (None, POISON)):
        rows = rows_of(tl, addr, max((e.row for e in a.evidence), default=0), around)
        if rows:
            parts.append(life_table(tl, addr, rows, f"life of {addr:#x} (last {around} events)"))
    return Panel(Group(*parts), title=f"anomaly {index}/{total}", expand=False)


def sockets_table(source: str, meta: Optional[dict] = None) -> Optional[Table]:
    """The recording's AF_XDP sockets (meta.json beside the trace): the mode each one
    really got, read back from the kernel, and its XDP_STATISTICS."""
    rows = sockets(source, meta)
    if not rows:
        return None
    at_anomaly = any(r.at_anomaly for r in rows)
    caption = (
        "FILL order not checked on the zero-copy sockets: the driver reorders (docs/markers.md)"
        if any(r.mode == "zerocopy" for r in rows)
        else None
    )
    table = Table(title="AF_XDP sockets (meta.json; mode read back with XDP_OPTIONS)", caption=caption, expand=False)
    for name in (
        "socket",
        "device",
        "queue",
        "mode",
        "asked",
        "XDP",
        "rings rx/tx/fill/comp",
        "XDP_STATISTICS at end",
        *(["at the anomaly"] if at_anomaly else []),
    ):
        table.add_column(name)
    for r in rows:
        mode = Text(r.mode, style="bold green" if r.mode == "zerocopy" else "bold")
        table.add_row(
            r.sock, r.device, r.queue, mode, r.asked, r.xdp, r.rings, r.stats, *([r.at_anomaly] if at_anomaly else [])
        )
    return table


def print_result(console: Console, result: Result, around: int = 8, descriptor: Optional[int] = None) -> None:
    tl = result.timeline
    v = result.verdict
    title = Text(f"{result.source}: ", style="bold")
    if result.anomalies:
        first = result.anomalies[0]
        title.append(f"{v.upper()}", style=VERDICT_STYLE[v])
        title.append(
            f" — {len(result.anomalies)} anomal{'y' if len(result.anomalies) == 1 else 'ies'}, first: "
            f"{first.kind} at line {first.line}"
        )
    else:
        title.append("CLEAN", style=VERDICT_STYLE["clean"])
        title.append(" — no anomaly")
    console.print(title)
    amplified = widened(result.source, result.meta)
    if amplified:
        console.print(Text(amplified, style="bold magenta"))
    socket_table = sockets_table(result.source, result.meta)
    if socket_table is not None:
        console.print(socket_table)
    if descriptor is not None:
        df_rows = life(tl, descriptor).index.tolist()
        console.print(life_table(tl, descriptor, df_rows, f"life of {descriptor:#x} ({len(df_rows)} events)"))
    else:
        for i, a in enumerate(result.anomalies, 1):
            console.print(anomaly_panel(tl, a, around, i, len(result.anomalies)))
    _print_stats(console, result)


def _print_stats(console: Console, result: Result) -> None:
    s = result.stats()
    w = result.timeline.window
    ev = s["events"]
    console.print(
        f"[dim]{s['lines']} lines ({s['format']}), {ev['total']} events: {ev['reserve']} reserve, "
        f"{ev['flush']} flush, {ev['tx']} tx, {ev['marker']} markers, {ev['other']} other; "
        f"CPUs {s['cpus']}; window {w.start:.6f}–{w.end:.6f}[/dim]"
    )
    for said in history_words(result.timeline.history):
        console.print(Text(f"history: {said}", style="dim"))
    if not ev["reserve"] and not ev["flush"]:
        console.print("[magenta]no kernel events in this trace: kernel-side verdicts are undetermined[/magenta]")
    unmarked = [n for n in s["checks_not_run"] if n.get("needs", "markers") == "markers"]
    if unmarked:
        console.print(
            f"[magenta]no application markers in this trace: not run: "
            f"{', '.join(n['check'] for n in unmarked)} (they follow the application's "
            f"descriptors); the kernel events alone are no proof of a clean run[/magenta]"
        )
    for n in s["checks_not_run"]:
        if n not in unmarked:
            console.print(Text(f"not run: {n['check']}: {n['why']}", style="magenta"))
    for loss in result.timeline.losses:
        count = loss.count if loss.count is not None else "some"
        console.print(f"[magenta]CPU {loss.cpu} lost {count} events at line {loss.line}[/magenta]")
    if s["unparsed_lines"]:
        console.print(f"[dim]{s['unparsed_lines']} lines were not ftrace events and were skipped[/dim]")
    if result.cut_last_line:
        console.print("[dim]the last line was cut short and was skipped[/dim]")


def print_cpu_stats(console: Console, result: Result) -> None:
    """Per-CPU statistics (`--stats`)."""
    df = per_cpu(result.timeline)
    table = Table(title="per CPU")
    table.add_column("CPU", justify="right")
    for c in df.columns:
        table.add_column(str(c), justify="right")
    for cpu, row in df.iterrows():
        table.add_row(str(cpu), *[f"{v:.6f}" if isinstance(v, float) else str(v) for v in row.tolist()])
    console.print(table)
