"""Tiny hand-written traces for unit tests: ftrace lines from short specs."""

from __future__ import annotations

XS = 0xFFFF888012345600


def line(ts: float, cpu: int, event: str, body: str, task: str = "fwd", pid: int = 100, flags: str = ".....") -> str:
    return f"{task:>16}-{pid:<6} [{cpu:03d}] {flags} {ts:.6f}: {event}: {body}\n"


def reserve(ts: float, cpu: int, addr: int, xs: int = XS, task: str = "ksoftirqd/0") -> str:
    return line(
        ts,
        cpu,
        "__xsk_rcv_zc_L7",
        f"(__xsk_rcv_zc+0x9b/0x250) addr={addr:#x} len=0x4e xs={xs:#x} fq=0xffff888000001000",
        task=task,
        pid=15,
        flags="d.Z1.",
    )


def flush(ts: float, cpu: int, xs: int = XS) -> str:
    return line(
        ts, cpu, "xsk_flush", f"(__xsk_map_flush+0x4e/0x180) xs={xs:#x}", task="ksoftirqd", pid=15, flags="d.Z1."
    )


def mark(ts: float, cpu: int, text: str, task: str = "fwd") -> str:
    return line(ts, cpu, "tracing_mark_write", text, task=task)
