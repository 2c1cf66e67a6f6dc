"""A descriptor's life: every event that names its address, in time order."""

from __future__ import annotations

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
    df = tl.frame
    g = df.groupby("cpu")
    out = pd.DataFrame({"events": g.size(), "first": g["ts"].min(), "last": g["ts"].max()})
    kinds = df.groupby(["cpu", "kind"], observed=True).size().unstack(fill_value=0)
    return out.join(kinds)
