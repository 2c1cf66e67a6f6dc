"""Views of the timeline a report needs: a descriptor's life, the events
around a piece of evidence, and per-CPU statistics."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from flightrec.model.timeline import Timeline


def life(tl: Timeline, addr: int) -> pd.DataFrame:
    """The timeline rows about one descriptor (markers, notes, kernel events)."""
    df = tl.frame
    return df[df["addr"] == addr]


def rows_of(tl: Timeline, addr: int, before_row: int, count: int) -> list[int]:
    """The last `count` rows about `addr` up to `before_row`, and the next few after."""
    addrs = tl.addr
    earlier = [i for i in range(before_row, -1, -1) if addrs[i] == addr][:count]
    later = [i for i in range(before_row + 1, len(addrs)) if addrs[i] == addr][:3]
    return sorted(earlier) + later


def per_cpu(tl: Timeline) -> pd.DataFrame:
    """Events, first and last timestamp, and kernel/application mix per CPU."""
    # three columns, not tl.frame: that one decodes every line's strings
    df = pd.DataFrame({"cpu": tl.cpu, "ts": tl.ts, "kind": pd.Categorical(tl.kind)})
    g = df.groupby("cpu")
    out = pd.DataFrame({"events": g.size(), "first": g["ts"].min(), "last": g["ts"].max()})
    kinds = df.groupby(["cpu", "kind"], observed=True).size().unstack(fill_value=0)
    return out.join(kinds)


def context_rows(
    tl: Timeline, evidence: Iterable[int], story_cpus: Iterable[int], around: int
) -> tuple[list[int], list[int]]:
    """The CPUs of the story and the rows around the evidence rows on them, in
    time order: `around` events of those CPUs on each side of each piece."""
    rows_ev = sorted({r for r in evidence if r >= 0})
    cpus = list(story_cpus)
    for r in rows_ev:
        if tl.cpu[r] not in cpus:
            cpus.append(tl.cpu[r])
    chosen: set[int] = set(rows_ev)
    cpu_col = tl.cpu
    for r in rows_ev:
        for step in (-1, 1):
            i, taken = r + step, 0
            while 0 <= i < len(cpu_col) and taken < around:
                if cpu_col[i] in cpus:
                    chosen.add(i)
                    taken += 1
                i += step
    return cpus, sorted(chosen)
