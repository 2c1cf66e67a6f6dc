"""The real kernel bugs flightrec reproduces in its VMs (`flightrec vm bugs`).

Each entry is a recipe a kernel engineer can run against a tool, a driver or
a backport: the upstream fix, a kernel with the bug and one with the fix
(`vm record --kernel NAME`: one the project builds with the fix reverted,
flightrec/vm/build.py, or a stock Debian series that has it), the `vm record`
options that reproduce it, and what the analysis must say. The VM tests
(tests/vm/test_veth_race.py, tests/vm/test_cq_race.py) run each one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KnownBug:
    name: str
    title: str
    fix_commit: str  # upstream, abbreviated
    bug_kernel: str  # --kernel NAME without the fix (reverted, or never applied)
    fixed_kernel: str  # --kernel NAME with the fix
    record_args: tuple[str, ...]  # vm record options beside --kernel
    verdict: str
    kind: str  # the first anomaly's kind
    doc: str

    def as_json(self) -> dict:
        d = asdict(self)
        d["record_args"] = list(self.record_args)
        return d


BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        name="veth-race",
        title="veth: Fix race with AF_XDP exposing old or uninitialized descriptors",
        fix_commit="fa349e396e48",
        bug_kernel="veth-race",
        fixed_kernel="veth-fixed",
        record_args=("--widen", "--duration", "60"),
        verdict="kernel",
        kind="publish_race",
        doc="docs/veth-race.md",
    ),
    KnownBug(
        name="veth-race-no-markers",
        title="the same race in a program that writes no markers, from the kernel's BPF events alone",
        fix_commit="fa349e396e48",
        bug_kernel="veth-race",
        fixed_kernel="veth-fixed",
        record_args=(
            "--widen",
            "--kernel-events",
            "bpf",
            "--duration",
            "60",
            "--app",
            "{forwarder} --outer -:{outer} --inner -:{inner} --queues {queues} --no-markers",
        ),
        verdict="kernel",
        kind="kernel_publish_race",
        doc="docs/veth-race.md#without-markers-the-kernels-events-alone",
    ),
    KnownBug(
        name="cq-immature",
        title="xsk: Fix immature cq descriptor production (Debian 12's stock 6.12 has the bug too)",
        fix_commit="30f241fcf52a",
        bug_kernel="cq-immature",
        fixed_kernel="cq-fixed",
        # Two sockets on each queue share its COMPLETION ring; 8 s keeps every
        # CPU's kernel history whole in a 32 MB buffer, which the verdict needs.
        record_args=("--tx-twins", "--duration", "8", "-b", "32768"),
        verdict="kernel",
        kind="cq_cross_publish",
        doc="docs/cq-race.md",
    ),
)


def find(name: str) -> KnownBug:
    """:raises KeyError: no such bug."""
    for bug in BUGS:
        if bug.name == name:
            return bug
    raise KeyError(name)
