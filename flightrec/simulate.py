"""A simulated AF_XDP forwarder under ftrace: trace text plus the ground truth.

The analyzer must be tested on traces it has never seen, with a known answer.
This module plays both sides of the post's story (docs/markers.md is the
contract it writes):

- the kernel: a softirq on some CPU takes descriptors from the head of a
  socket's FILL ring, emits one reserve kprobe event per descriptor
  (`__xsk_rcv_zc_L7: (...) addr= len= xs= fq=`), then publishes them with
  `xsk_flush: (...) xs=`; on transmit it emits `xp_raw_get_data: (...) addr=`
  in the sending thread's context, and for the sent frame the skb
  destructor's `cq_submit: (...) addr= xs= cq= slot=` (Debian 6.1's form);
- the application: one thread per socket pair writes a marker for every
  transition, keeps its own FILL-order deque and a state per descriptor,
  poisons every RX slot it consumed, and on its first anomaly writes the
  detection line and stops tracing.

Faults are planted near the end; the simulation then runs until the
application notices. Ring buffers are per CPU: `wrap` keeps only the newest
entries of each CPU (all CPUs have the same capacity, so a busy CPU's data
starts later, before the fault's story), `tight` makes each CPU's buffer begin
at its own point a few events before the fault (the racing CPU's exactly at
its reserve), as a long recording ends, and `loss` drops a run of events
inside one CPU's stream. The ground truth then says what the surviving events
prove (`_judge`): a story whose needed events are gone is `undetermined`.

Output is the text of /sys/kernel/tracing/trace (`fmt="ftrace"`) or of
`trace-cmd report` (`fmt="trace-cmd"`, no latency columns, markers as the
`print` event, probe IPs in hex, wrap and loss as `CPU:N [M EVENTS DROPPED]`;
both checked against trace-cmd 3.1.6 reports of a real instance).
Everything is drawn from one `random.Random(seed)`: same config, same bytes.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Optional

from flightrec.errors import FlightrecError
from flightrec.hexaddr import hex_or
from flightrec.parse.format import BATCH_LINE_MAX, MARKER_FORMS, NOTE_SEP

POISON = 0xDEADBEEFDEADBEEF

FAULTS = (
    "none",
    "publish-race",
    "stale-slot",
    "double-fill",
    "fill-and-tx",
    "invalid-transition",
    "reuse-in-flight",
    "early-completion",
    "double-completion",
)
KERNEL_FAULTS = ("publish-race", "stale-slot")
# the kernel publishes a frame's COMPLETION entry before it sends the frame (30f241fcf52a)
TX_KERNEL_FAULTS = ("early-completion", "double-completion")
# two insertions whose story needs no marker lost between them
PAIR_FAULTS = ("double-fill", "fill-and-tx", "reuse-in-flight")
PROBES = ("all", "no-flush", "none")
FORMATS = ("ftrace", "trace-cmd")

# The header of /sys/kernel/tracing/trace as kernel 6.18 prints it.
FTRACE_LEGEND = """\
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""

# Application thread names: TASK_COMM_LEN is 16, so at most 15 characters;
# spaces and dashes are legal and must not confuse a parser.
APP_COMMS = ("flowtrackd-p9zw", "my fwd-thr 2", "flowtrackd-9chS", "xsk fwd-q", "fwd-worker-3", "af xdp-rx 0")
# Whatever runs on a CPU when the NAPI softirq fires there.
TRAFFIC_COMMS = ("iperf2", "iperf3", "ksoftirqd/{cpu}", "<idle>", "kworker/{cpu}:1")
SOCKET_PAIRS = (("ingress", "egress"), ("outer", "inner"), ("rx-a", "tx-b"))
MARK = "tracing_mark_write: "


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. `packets` counts packets the kernel delivers, over all socket pairs."""

    seed: int = 1
    cpus: int = 4
    packets: int = 2000
    fault: str = "none"
    wrap: bool = False
    loss: bool = False
    tight: bool = False  # each CPU's buffer begins a few of its events before the fault
    probes: str = "all"
    fmt: str = "ftrace"
    pairs: int = 0  # socket pairs (rx socket -> tx socket); 0: 1..3 drawn from the seed
    # the application's marker lines: one per descriptor, or one per ring operation
    # (docs/markers.md "Batched lines"); the same run, events and truth either way
    markers: str = "per-descriptor"

    def check(self) -> None:
        """Raise FlightrecError for a configuration the simulator cannot honour."""
        if not 2 <= self.cpus <= 8:
            raise FlightrecError(f"--cpus must be 2..8, not {self.cpus}")
        if self.packets < 50:
            raise FlightrecError(f"--packets must be at least 50, not {self.packets}")
        if self.fault not in FAULTS:
            raise FlightrecError(f"unknown fault {self.fault!r}; one of: {', '.join(FAULTS)}")
        if self.probes not in PROBES:
            raise FlightrecError(f"unknown probes {self.probes!r}; one of: {', '.join(PROBES)}")
        if self.fmt not in FORMATS:
            raise FlightrecError(f"unknown format {self.fmt!r}; one of: {', '.join(FORMATS)}")
        if self.markers not in MARKER_FORMS:
            raise FlightrecError(f"unknown marker form {self.markers!r}; one of: {', '.join(MARKER_FORMS)}")
        if not 0 <= self.pairs <= 3:
            raise FlightrecError(f"pairs must be 0..3, not {self.pairs}")
        if self.wrap and self.tight:
            raise FlightrecError("--wrap and --tight are two kinds of overrun: give one")


@dataclass(frozen=True)
class Truth:
    """The ground truth of one simulated trace.

    `anomaly` is None for a clean trace; otherwise the root cause the analyzer
    must report first, in the shape of `flightrec analyze --json` (addresses
    as "0x..." strings). `addr` is the root-cause descriptor for application
    faults and the address the application read for kernel faults (the
    poison or the stale address), `expected` what the FILL order predicted.
    """

    config: dict
    lines: int
    events: int
    anomaly: Optional[dict]
    sockets: dict = field(default_factory=dict)
    detection_line: Optional[int] = None
    evidence_lines: dict = field(default_factory=dict)
    loss: list = field(default_factory=list)
    wrap: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Simulation:
    """The trace text (as one string, lines ending in a newline) and its ground truth."""

    text: str
    truth: Truth


def _rr(rng: random.Random, lo: int, hi: int) -> int:
    """rng.randrange(lo, hi) for the hot loop: random() is several times cheaper."""
    return lo + int(rng.random() * (hi - lo))


class _Pair:
    """One rx socket whose packets are forwarded to one tx socket, with its frames and rings."""

    def __init__(
        self,
        idx: int,
        rng: random.Random,
        cpus: int,
        app_cpu: int,
        names: tuple[str, str],
        queue: int,
        comm: str,
        pid: int,
    ) -> None:
        self.idx = idx
        self.rx = f"{names[0]} q:{queue}"
        self.tx = f"{names[1]} q:{queue}"
        self.queue = queue
        self.xs = 0xFFFF888100000000 | (_rr(rng, 0x10000, 0xFFFFF) << 12) | (_rr(rng, 0, 16) << 8)
        self.fq = 0xFFFF888100000000 | (_rr(rng, 0x10000, 0xFFFFF) << 12) | (_rr(rng, 0, 64) << 6)
        self.app_cpu = app_cpu
        self.comm = comm
        self.pid = pid
        nframes = rng.choice((128, 256, 512))
        # Each pair's frames in a region of its own (at most 512 * 2 KiB = 0x100000).
        base = (0x100 + 0x40 * idx + _rr(rng, 0, 0x30)) << 16
        # 2 KiB frames, 256 bytes of headroom: addresses look like 0x16ce900, 0x160a100.
        frames = [base + i * 0x800 + 0x100 for i in range(nframes)]
        rng.shuffle(frames)
        self.frames = frames
        self.kfill: deque[int] = deque()  # FILL as the kernel sees it
        self.afill: deque[int] = deque()  # the application's FILL-order deque
        self.state: dict[int, str] = {}
        # Smaller than the frame count: a frame comes back once every nframes
        # deliveries, so a stale slot never holds the very address expected.
        self.rx_size = min(rng.choice((64, 128)), nframes // 2)
        self.slots = [0] * self.rx_size
        self.rx_prod = 0
        self.delivered = 0
        self.pkts = 0  # stamped packets forwarded: the forward notes' `pkt N`
        self.pkt_of: dict[int, int] = {}  # frame -> the packet it forwards
        # the tx socket and its COMPLETION ring (no draw from rng: the other events stay as they were)
        self.txs = self.xs ^ 0x400
        self.cq = self.fq ^ 0x10000
        self.cq_prod = 0
        self.softirq_cpu = rng.randrange(cpus)
        self.poison = True

    def take_slot(self) -> int:
        """The kernel reserves the next RX slot (unpublished until a flush)."""
        slot = self.rx_prod % self.rx_size
        self.rx_prod += 1
        return slot


class _Sim:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.ev: list[tuple] = []  # (ts, seq, cpu, task, flags, name_body, tag, op)
        self.seq = 0
        self.ops = 0  # ring operations: the markers of one may share a batched line
        self.tags: dict[str, tuple] = {}
        self.tasks: list[tuple[str, int]] = []
        rng = self.rng
        self.kbase = 0xFFFFFFFF81000000 + (_rr(rng, 0, 0x3F0) << 21)
        self.sym_rcv = self.kbase + 0xB2D400
        self.sym_flush = self.kbase + 0xB2E880
        self.sym_raw = self.kbase + 0xB31C20
        self.rcv_name = rng.choice(("__xsk_rcv_zc_L7", "__xsk_rcv_zc_L7", "__xsk_rcv_zc_L8"))
        self.flush_name = rng.choice(("xsk_flush", "xsk_flush", "xsk_flush_0"))
        self.raw_name = rng.choice(("xp_raw_get_data", "xp_raw_get_data", "xp_raw_get_data_0"))
        self.rcv_off = rng.choice((0x9B, 0x9B, 0xA3))
        self.marker_flags = rng.choice((".....", "...1."))
        # Per CPU: the task interrupted by the softirq there.
        self.traffic: list[int] = []
        for c in range(cfg.cpus):
            name = rng.choice(TRAFFIC_COMMS).format(cpu=c)
            pid = 0 if name == "<idle>" else _rr(rng, 1000, 400000)
            self.traffic.append(self._task(name, pid))

    def _task(self, comm: str, pid: int) -> int:
        self.tasks.append((comm, pid))
        return len(self.tasks) - 1

    # ---- emitting ------------------------------------------------------
    def emit(
        self, ts: int, cpu: int, task: int, flags: str, body: str, tag: Optional[str] = None, op: Optional[int] = None
    ) -> None:
        self.seq += 1
        self.ev.append((ts, self.seq, cpu, task, flags, body, tag, op))

    def new_op(self) -> int:
        """A ring operation's id, for the markers it writes (None: a line of its own)."""
        self.ops += 1
        return self.ops

    def last_seq(self, before: int) -> Optional[int]:
        """The sequence number of the event just emitted, None if nothing was (a probe left out)."""
        return self.seq if self.seq > before else None

    def marker(self, p: _Pair, ts: int, text: str, tag: Optional[str] = None, op: Optional[int] = None) -> None:
        if self.cfg.fmt == "ftrace":
            body = MARK + text
        else:
            body = f"{'print:':<21} {MARK}" + text
        self.emit(ts, p.app_cpu, p.task, self.marker_flags, body, tag, op)

    def _probe(self, name: str, sym: str, ip: int, args: str) -> str:
        if self.cfg.fmt == "ftrace":
            return f"{name}: ({sym}) {args}"
        return f"{name + ':':<21} ({ip:x}) {args}"

    def reserve(self, p: _Pair, ts: int, cpu: int, addr: int, tag: Optional[str] = None) -> None:
        if self.cfg.probes == "none":
            return
        task = p.task if cpu == p.app_cpu else self.traffic[cpu]
        flags = self.rng.choice(("d.Z1.", "d.Z1.", "..s1.", "d.s1."))
        args = f"addr={addr:#x} len={self.rng.choice((0x42, 0x4E, 0x5A, 0x5EA)):#x} xs={p.xs:#x} fq={p.fq:#x}"
        self.emit(
            ts,
            cpu,
            task,
            flags,
            self._probe(self.rcv_name, f"__xsk_rcv_zc+{self.rcv_off:#x}/0x250", self.sym_rcv + self.rcv_off, args),
            tag,
        )

    def flush(self, p: _Pair, ts: int, cpu: int, tag: Optional[str] = None) -> None:
        if self.cfg.probes != "all":
            return
        task = p.task if cpu == p.app_cpu else self.traffic[cpu]
        self.emit(
            ts,
            cpu,
            task,
            "d.Z1.",
            self._probe(self.flush_name, "__xsk_map_flush+0x4e/0x180", self.sym_flush + 0x4E, f"xs={p.xs:#x}"),
            tag,
        )

    def txget(self, p: _Pair, ts: int, addr: int, tag: Optional[str] = None) -> None:
        if self.cfg.probes == "none":
            return
        self.emit(
            ts,
            p.app_cpu,
            p.task,
            ".....",
            self._probe(self.raw_name, "xp_raw_get_data+0x0/0x60", self.sym_raw, f"addr={addr:#x}"),
            tag,
        )

    def cq_submit(self, p: _Pair, ts: int, addr: int, tag: Optional[str] = None) -> None:
        """The skb's destructor writes addr into the next COMPLETION slot and publishes it (Debian 6.1's form)."""
        if self.cfg.probes == "none":
            return
        cpu = p.softirq_cpu
        self.emit(
            ts,
            cpu,
            p.task if cpu == p.app_cpu else self.traffic[cpu],
            "d.s1.",
            self._probe(
                "cq_submit",
                "xsk_destruct_skb+0x46/0x80",
                self.kbase + 0xB2F046,
                f"addr={addr:#x} xs={p.txs:#x} cq={p.cq:#x} slot={p.cq_prod:#x}",
            ),
            tag,
        )
        p.cq_prod += 1

    # ---- the application's bookkeeping --------------------------------
    def to_fill(
        self, p: _Pair, ts: int, addr: int, frm: str, tag: Optional[str] = None, op: Optional[int] = None
    ) -> None:
        """The application produces addr to its rx socket's FILL ring (and its deque)."""
        self.marker(p, ts, f"{p.rx} {addr:#x} {frm} -> FILL", tag, op)
        p.kfill.append(addr)
        p.afill.append(addr)
        p.state[addr] = "FILL"


def _remaining(dq: deque, rng: random.Random) -> str:
    """The detection line's rest of the deque, head first, cut like the post's."""
    items = [f"{a:x}" for a in list(dq)[: _rr(rng, 30, 100)]]
    if len(dq) > len(items):
        items.append(rng.choice(("…", "...")))
        return "[" + ", ".join(items) + rng.choice((", ]", ",]", "]"))
    return "[" + ", ".join(items) + "]"


# Long by nature: one event loop (NAPI poll, RX peek, transmit, COMPLETION, idle) whose steps share the pair's state.
def _run_pair(
    sim: _Sim, p: _Pair, budget: int, t0: int, fault: str, faulty: bool, until: Optional[int] = None
) -> Optional[dict]:
    """Simulate one socket pair from start-up, for `budget` packets or until time `until`;
    returns what happened at the fault, if one was planted."""
    rng = sim.rng
    cfg = sim.cfg
    t = t0
    # Start-up: every frame goes FREE -> FILL, in one FILL submit.
    op = sim.new_op()
    for a in p.frames:
        sim.to_fill(p, t, a, "FREE", op=op)
        t += _rr(rng, 100, 600)
    t += _rr(rng, 50_000, 2_000_000)
    plant_at = max(int(budget * rng.uniform(0.8, 0.93)), p.rx_size + 16) if faulty else -1
    planted: Optional[dict] = None
    tx_done: list[int] = []  # transmitted, completion not yet read
    # NAPI's budget is 64; before a planted duplicate is noticed, polls take big
    # batches so both copies are delivered while the first is still in TX.
    batch = (1, 8)
    pending_overwrite = False
    dup_pending: Optional[int] = None
    extra = 0
    # A faulty pair runs past its budget until the application notices (it always
    # does within a few hundred polls; the cap only guards against a simulator bug).
    while (t < until) if until is not None else (p.delivered < budget or (faulty and extra < 5000)):
        if p.delivered >= budget:
            extra += 1
        # ---- kernel: one NAPI poll on some CPU --------------------------
        if rng.random() < 0.08:
            p.softirq_cpu = rng.randrange(cfg.cpus)  # the softirq moves to another CPU
        cpu = p.softirq_cpu
        if faulty and planted is None and p.delivered >= plant_at and fault in KERNEL_FAULTS and len(p.kfill) > 12:
            return _plant_race(sim, p, t, fault)
        k = min(rng.randint(*batch), len(p.kfill))
        if k == 0:
            t += _rr(rng, 20_000, 200_000)
            continue
        got = []
        for _ in range(k):
            a = p.kfill.popleft()
            sim.reserve(p, t, cpu, a)
            p.slots[p.take_slot()] = a
            got.append(a)
            t += _rr(rng, 300, 4000)
        t += _rr(rng, 200, 3000)
        sim.flush(p, t, cpu)
        p.delivered += k
        # ---- application: one RX peek (every FILL -> RX), its notes, the FILL
        # submit of what it drops and the TX submit of what it forwards: ring
        # operation by ring operation, as a forwarder does (docs/markers.md) ----
        t += _rr(rng, 2000, 20000)
        op = sim.new_op()
        for a in got:
            exp = p.afill.popleft() if p.afill else None
            st = p.state.get(a)
            if exp is not None and exp != a:
                text = (
                    f"{p.rx} {a:#x} FILL -> RX: expected {exp:#x}"
                    + rng.choice((" ", ""))
                    + "remaining: "
                    + _remaining(p.afill, rng)
                )
                sim.marker(p, t, text, "detection")
                return _finish(planted, t, {"symptom_addr": a, "symptom_expected": exp})
            if st != "FILL":
                sim.marker(p, t, f"{p.rx} {a:#x} FILL -> RX: invalid, was {st}", "detection")
                return _finish(planted, t, {"symptom_addr": a})
            sim.marker(p, t, f"{p.rx} {a:#x} FILL -> RX", op=op)
            p.state[a] = "RX"
            t += _rr(rng, 100, 600)
        notes: list[str] = []
        refill: list[tuple[int, Optional[str]]] = []
        forward: list[tuple[int, Optional[str]]] = []
        fresh: Optional[dict] = None
        for a in got:
            if planted is None and faulty and fault == "fill-and-tx" and p.delivered >= plant_at:
                # The bug: one descriptor both recycled to FILL (a submit of its
                # own, at once) and forwarded to TX.
                t += _rr(rng, 500, 3000)
                sim.to_fill(p, t, a, "RX", "insert1", sim.new_op())
                notes.append(f"{a:#x} egress_tx_queue forward")
                forward.append((a, "insert2"))
                planted = fresh = {"addr": a}
                batch = (48, 64)
                continue
            if planted is None and faulty and fault == "invalid-transition" and p.delivered >= plant_at:
                # The bug: a descriptor still in FILL (put there a while ago) is put into TX.
                t += _rr(rng, 500, 3000)
                victim = p.afill[-min(20, len(p.afill))]
                _tag_last_insert(sim, p, victim)
                sim.marker(
                    p, t, f"{p.tx} {victim:#x} FILL -> TX" + rng.choice(("", ": invalid, was FILL")), "detection"
                )
                return {"addr": victim, "ts": t, "detection_ts": t}
            if rng.random() < 0.03:
                notes.append(f"{a:#x} drop " + rng.choice(("no_flow", "bad_csum", "ttl")))
                refill.append((a, None))
            else:
                p.pkts += 1
                p.pkt_of[a] = p.pkts
                notes.append(f"{a:#x} egress_tx_queue forward pkt {p.pkts}")
                forward.append((a, None))
        t += _rr(rng, 500, 3000)
        op = sim.new_op()
        for text in notes:
            sim.marker(p, t, text, op=op)
            t += _rr(rng, 100, 600)
        op = sim.new_op()
        for a, tag in refill:
            t += _rr(rng, 100, 600)
            sim.to_fill(p, t, a, "RX", tag, op=op)
        t += _rr(rng, 500, 3000)
        op = sim.new_op()
        sent = []
        for a, tag in forward:
            sim.marker(p, t, f"{p.tx} {a:#x} RX -> TX", tag, op=op)
            if fresh is not None and fresh["addr"] == a:
                fresh["ts"] = t
            p.state[a] = "TX"
            sent.append(a)
            t += _rr(rng, 100, 600)
        # ---- kernel: transmit (sendto, in the thread's context) ----------
        t += _rr(rng, 1000, 5000)
        early = None
        if planted is None and faulty and fault == "early-completion" and p.delivered >= plant_at and sent:
            # The kernel bug: the frame's COMPLETION entry is published before it is sent.
            early = sent.pop()
            # The story starts at its forward note (`pkt N`: what ties the receiver's
            # report to the frame; all notes of a batch come before its TX line).
            _tag_last_insert(sim, p, early, f"{early:#x} egress_tx_queue ", f"forward pkt {p.pkt_of[early]}")
            _tag_last_insert(sim, p, early, f"{p.tx} {early:#x} ", "-> TX", tag="insert2")
        for a in sent:
            sim.txget(p, t, a)
            sim.cq_submit(p, t + 1500, a)  # the destructor, a microsecond or two after the send
            t += _rr(rng, 800, 4000)
        if early is not None:
            return _plant_early_completion(sim, p, t, early)
        # ---- application: read COMPLETION of the previous round, refill ----
        t += _rr(rng, 1000, 10000)
        if dup_pending is not None:
            # The bug, second half: the descriptor refilled last round goes into
            # FILL again, with no RX of it in between.
            sim.to_fill(p, t, dup_pending, "COMP", "insert2", sim.new_op())
            dup_pending = None
            batch = (48, 64)
            pending_overwrite = rng.random() < 0.5
            t += _rr(rng, 500, 3000)
        op = sim.new_op()
        for a in tx_done:
            if p.state.get(a) != "TX":
                # reuse-in-flight: its completion finds the frame back in FILL
                sim.marker(p, t, f"{p.tx} {a:#x} TX -> COMP: invalid, was {p.state.get(a)}", "detection")
                return _finish(planted, t, {})
            sim.marker(p, t, f"{p.tx} {a:#x} TX -> COMP", op=op)
            p.state[a] = "COMP"
            t += _rr(rng, 100, 600)
        t += _rr(rng, 500, 3000)
        op = sim.new_op()
        for a in tx_done:
            if pending_overwrite:
                # The duplicate made the application miscount FILL's free slots: this
                # insert overwrites the entry the kernel was about to consume.
                pending_overwrite = False
                sim.marker(p, t, f"{p.rx} {a:#x} COMP -> FILL", op=op)
                p.afill.append(a)
                p.state[a] = "FILL"
                p.kfill[0] = a
                p.kfill.append(a)
            elif planted is None and faulty and fault == "double-completion" and p.delivered >= plant_at:
                # The kernel bug: a's address written into a second COMPLETION entry.
                _tag_last_insert(sim, p, a, f"{p.tx} {a:#x} ", "-> TX")
                sim.to_fill(p, t, a, "COMP")
                t += _rr(rng, 2000, 20000)
                sim.cq_submit(p, t, a, "write2")
                t += _rr(rng, 1000, 5000)
                sim.marker(p, t, f"{p.tx} {a:#x} TX -> COMP: invalid, was FILL", "detection")
                return {"addr": a, "ts": t, "detection_ts": t}
            elif planted is None and faulty and fault == "double-fill" and p.delivered >= plant_at:
                sim.to_fill(p, t, a, "COMP", "insert1", op)
                planted = {"addr": a, "ts": t}
                dup_pending = a
            else:
                sim.to_fill(p, t, a, "COMP", op=op)
            t += _rr(rng, 100, 600)
        if planted is None and faulty and fault == "reuse-in-flight" and p.delivered >= plant_at and sent:
            # The bug: a frame sendto() took is handed back to FILL as if completed.
            a = sent[0]
            _tag_last_insert(sim, p, a, f"{p.tx} {a:#x} ", "-> TX")
            sim.to_fill(p, t, a, "COMP", "insert2", sim.new_op())
            planted = {"addr": a, "ts": t}
            t += _rr(rng, 500, 3000)
        tx_done = sent
        # ---- idle until the next packets -----------------------------------
        r = rng.random()
        if r < 0.002:
            t += _rr(rng, 100_000_000, 5_000_000_000)  # a quiet spell
        elif r < 0.05:
            t += _rr(rng, 200_000, 5_000_000)
        else:
            t += _rr(rng, 3_000, 60_000)
    if planted is not None:
        planted["detection_ts"] = None
    return planted


def _tag_last_insert(
    sim: _Sim, p: _Pair, addr: int, needle: str = "", into: str = "-> FILL", tag: str = "insert1"
) -> None:
    """Tag the marker that last put addr into FILL (or `into`): the start of the causal window."""
    needle = needle or f"{p.rx} {addr:#x} "
    for i in range(len(sim.ev) - 1, -1, -1):
        e = sim.ev[i]
        if e[2] == p.app_cpu and needle in e[5] and e[5].endswith(into):
            sim.ev[i] = e[:6] + (tag,) + e[7:]
            return
    raise AssertionError("no FILL insert for the victim")


def _plant_early_completion(sim: _Sim, p: _Pair, t: int, a: int) -> dict:
    """The application reads a's COMPLETION entry and refills a; the kernel sends a only then, and
    the receiver gets the packet a held by then."""
    rng = sim.rng
    t += _rr(rng, 1000, 10000)
    sim.cq_submit(p, t - 500, a)  # published early: the skb is not even built
    sim.marker(p, t, f"{p.tx} {a:#x} TX -> COMP", "comp")
    t += _rr(rng, 500, 2000)
    sim.to_fill(p, t, a, "COMP")
    t += _rr(rng, 2000, 20000)
    sim.txget(p, t, a, "late")
    late = t
    t += _rr(rng, 5000, 40000)
    n = p.pkt_of[a]
    sim.marker(
        p,
        t,
        f"receiver udp:5203: payload expected {n} found ? at {_rr(rng, 12, 900)} len 1000 stamped 1000",
        "detection",
    )
    return {"addr": a, "ts": late, "detection_ts": t}


def _finish(planted: Optional[dict], t: int, symptom: dict) -> dict:
    if planted is None:
        # A detection without a planted fault would be a simulator bug.
        raise AssertionError("simulated application detected an anomaly in a clean run")
    planted.update(symptom)
    planted["detection_ts"] = t
    return planted


def _plant_race(sim: _Sim, p: _Pair, t: int, fault: str) -> dict:
    """The veth race of the post: CPU b reserves, CPU a reserves E, b's flush publishes E's unwritten slot."""
    rng = sim.rng
    cfg = sim.cfg
    b = p.softirq_cpu
    a = rng.choice([c for c in range(cfg.cpus) if c != b])
    p.poison = fault == "publish-race"
    xs_got = []
    prev_reserve = prev_read = None  # the last slot read before the raced one: its reserve and its read
    for _ in range(rng.randint(1, 4)):
        x = p.kfill.popleft()
        seq = sim.seq
        sim.reserve(p, t, b, x, "b_reserve" if not xs_got else None)
        prev_reserve = sim.last_seq(seq)
        p.slots[p.take_slot()] = x
        xs_got.append(x)
        t += _rr(rng, 300, 3000)
    t += _rr(rng, 1000, 8000)
    e = p.kfill.popleft()
    reserve_ts = t
    sim.reserve(p, t, a, e, "reserve")
    e_slot = p.take_slot()  # reserved, not yet written: the race
    # What the slot holds before CPU a writes it: the poison the application
    # wrote back when it consumed the slot, or (no poisoning) the old address.
    stale = POISON if p.poison else p.slots[e_slot]
    assert stale != e, "a stale slot holding the expected address would hide the race"
    t += _rr(rng, 1000, 6000)
    sim.flush(p, t, b, "flush")
    t_flush_a = t + _rr(rng, 5_000, 60_000)
    t += _rr(rng, 3000, 15000)
    # one RX peek, its notes, one TX submit (ring operation by ring operation)
    ops = (sim.new_op(), sim.new_op(), sim.new_op())
    for n, x in enumerate(xs_got):
        exp = p.afill.popleft()
        assert exp == x
        sim.marker(p, t, f"{p.rx} {x:#x} FILL -> RX", None if n else "x_read", ops[0])
        prev_read = sim.seq
        t += _rr(rng, 100, 600)
    for x in xs_got:
        t += _rr(rng, 100, 600)
        sim.marker(p, t, f"{x:#x} egress_tx_queue forward", op=ops[1])
    t += _rr(rng, 500, 2000)
    for x in xs_got:
        sim.marker(p, t, f"{p.tx} {x:#x} RX -> TX", op=ops[2])
        t += _rr(rng, 100, 600)
    a_flush_first = rng.random() < 0.5
    if a_flush_first:
        t = max(t, t_flush_a) + _rr(rng, 2000, 20000)
        sim.flush(p, t_flush_a, a, "own_flush")
    exp = p.afill.popleft()
    assert exp == e
    text = (
        f"{p.rx} {stale:#x} FILL -> RX: expected {e:#x}"
        + rng.choice((" ", ""))
        + "remaining: "
        + _remaining(p.afill, rng)
    )
    sim.marker(p, t, text, "detection")
    if not a_flush_first:
        sim.flush(p, t + _rr(rng, 1000, 8000), a, "own_flush")
    return {
        "addr": stale,
        "expected": e,
        "reserve_cpu": a,
        "flush_cpu": b,
        "detection_ts": t,
        "ts": t,
        "stale": stale,
        "reserve_ts": reserve_ts,
        "story": {"prev_reserve": prev_reserve, "prev_read": prev_read},
    }


def simulate(cfg: SimConfig) -> Simulation:
    """Simulate one trace; raises FlightrecError for a bad configuration."""
    cfg.check()
    sim = _Sim(cfg)
    rng = sim.rng
    npairs = cfg.pairs or rng.randint(1, min(3, cfg.cpus))
    app_cpus = rng.sample(range(cfg.cpus), min(npairs, cfg.cpus))
    app_cpus += [rng.randrange(cfg.cpus) for _ in range(npairs - len(app_cpus))]  # threads share a CPU
    comms = rng.sample(APP_COMMS, npairs)
    queues = rng.sample(range(0, 8), npairs)
    names = list(SOCKET_PAIRS)
    pairs = []
    for i in range(npairs):
        p = _Pair(i, rng, cfg.cpus, app_cpus[i], names[i], queues[i], comms[i], _rr(rng, 1000, 400000))
        p.task = sim._task(p.comm, p.pid)
        pairs.append(p)
    faulty_idx = rng.randrange(npairs) if cfg.fault != "none" else -1
    t0 = _rr(rng, 3600, 900000) * 1_000_000_000 + _rr(rng, 0, 1_000_000_000)
    budget = max(cfg.packets // npairs, 40)
    # The first pair (the faulty one, if any) sets how long the trace runs; the
    # others carry traffic until then, as all queues do until tracing stops.
    order = sorted(pairs, key=lambda q: q.idx != max(faulty_idx, 0))
    planted = _run_pair(sim, order[0], budget, t0 + _rr(rng, 0, 5_000_000), cfg.fault, faulty_idx >= 0)
    horizon = max(e[0] for e in sim.ev)
    for p in order[1:]:
        _run_pair(sim, p, budget, t0 + _rr(rng, 0, 5_000_000), cfg.fault, False, until=horizon)
    fp = pairs[faulty_idx] if faulty_idx >= 0 else None
    if cfg.fault != "none" and (planted is None or planted.get("detection_ts") is None):
        raise AssertionError(f"seed {cfg.seed}: fault {cfg.fault} planted but never detected")

    ev = sim.ev
    ev.sort()  # (ts, seq) are unique: the sort never compares further
    # Tracing stops shortly after the application's detection line.
    if planted is not None:
        stop = planted["detection_ts"] + _rr(rng, 10_000, 80_000)
        ev = [e for e in ev if e[0] <= stop]
    total_written = len(ev)

    # The window the truth depends on: it must survive wrap and hold the loss.
    tag_idx = {e[6]: i for i, e in enumerate(ev) if e[6] is not None}
    # The tightest causal window: from the first event of the story to the
    # event that proves it (a loss there leaves the verdict undetermined).
    wend_tag = "detection"
    if cfg.fault in KERNEL_FAULTS:
        wstart = ev[tag_idx["b_reserve" if "b_reserve" in tag_idx else "x_read"]][0]
    elif cfg.fault in TX_KERNEL_FAULTS:
        wstart = ev[tag_idx["insert1"]][0]
        # without kernel events (--probes none) the late send leaves no line: the detection ends it
        wend_tag = "late" if cfg.fault == "early-completion" and "late" in tag_idx else "detection"
    elif cfg.fault in PAIR_FAULTS:
        wstart = ev[tag_idx["insert1"]][0]
        wend_tag = "insert2"
    elif cfg.fault == "invalid-transition":
        wstart = ev[tag_idx["insert1"]][0]
    else:
        wstart = ev[int(len(ev) * 0.6)][0]
    protect = wstart - 1_000_000

    percpu: dict[int, list[int]] = {}
    for i, e in enumerate(ev):
        percpu.setdefault(e[2], []).append(i)
    keep = [True] * len(ev)
    dropped_before, wrap_info = _wrap(cfg, rng, ev, percpu, keep, protect, planted, tag_idx)
    loss_at = _lose(cfg, rng, ev, percpu, keep, fp, tag_idx, wstart, wend_tag)
    text, lineno, tag_line, loss_truth = _render(sim, ev, keep, loss_at, total_written, dropped_before, wrap_info)
    kept = sum(keep)
    anomaly = _planted_anomaly(cfg, ev, keep, planted, fp, tag_idx, loss_at, kept, total_written, dropped_before)
    socks = {}
    for p in pairs:
        socks[p.rx] = {
            "xs": hex_or(p.xs),
            "fq": hex_or(p.fq),
            "forward_to": p.tx,
            "app_cpu": p.app_cpu,
            "task": f"{p.comm}-{p.pid}",
            "frames": len(p.frames),
        }
    truth = Truth(
        config=asdict(cfg),
        lines=lineno,
        events=kept,
        anomaly=anomaly,
        sockets=socks,
        detection_line=tag_line.get("detection"),
        evidence_lines=dict(sorted(tag_line.items())),
        loss=loss_truth,
        wrap=wrap_info,
    )
    return Simulation(text, truth)


def _wrap(
    cfg: SimConfig,
    rng: random.Random,
    ev: list,
    percpu: dict[int, list[int]],
    keep: list[bool],
    protect: int,
    planted: Optional[dict],
    tag_idx: dict,
) -> tuple[dict[int, int], dict]:
    """Per-CPU ring buffers that wrapped (--wrap) or begin just before the fault (--tight):
    clears ``keep`` of the overwritten events; (events dropped per CPU, the truth's wrap note)."""
    dropped_before: dict[int, int] = {}
    wrap_info: dict = {}
    if cfg.wrap:
        after = {c: sum(1 for i in idx if ev[i][0] >= protect) for c, idx in percpu.items()}
        busiest = max(len(idx) for idx in percpu.values())
        need = max(after.values())  # the window must survive on every CPU
        cap = max(need, min(busiest - 1, need + rng.randrange(0, max(1, (busiest - need) // 2))))
        for c, idx in percpu.items():
            n = max(0, len(idx) - cap)
            for i in idx[:n]:
                keep[i] = False
            if n:
                dropped_before[c] = n
        wrap_info = {"capacity": cap, "dropped": {str(c): n for c, n in sorted(dropped_before.items())}, "first_ts": {}}
    elif cfg.tight:
        # The fault's moment: the racing reserve, the application's first bad
        # insertion, or a point late in a clean run. Each CPU's buffer begins
        # a few of its own events before it, the racing CPU's exactly there.
        racing = planted.get("reserve_cpu") if planted and cfg.fault in KERNEL_FAULTS else None
        if racing is not None:
            ref = next(i for i, e in enumerate(ev) if e[0] >= planted["reserve_ts"])
        elif cfg.fault != "none":
            ref = tag_idx["insert1"]
        else:
            ref = int(len(ev) * 0.6)
        for c, idx in percpu.items():
            before = [i for i in idx if i < ref]
            k = 0 if c == racing else rng.randint(0 if cfg.fault in KERNEL_FAULTS else 1, 4)
            if len(before) == len(idx):
                k = max(k, 1)  # a CPU that wrote keeps its newest events, whatever it lost
            gone = before[: len(before) - k]
            for i in gone:
                keep[i] = False
            if gone:
                dropped_before[c] = len(gone)
        wrap_info = {"tight": True, "dropped": {str(c): n for c, n in sorted(dropped_before.items())}, "first_ts": {}}
    return dropped_before, wrap_info


def _lose(
    cfg: SimConfig,
    rng: random.Random,
    ev: list,
    percpu: dict[int, list[int]],
    keep: list[bool],
    fp: Optional[_Pair],
    tag_idx: dict,
    wstart: int,
    wend_tag: str,
) -> dict[int, tuple[int, int]]:
    """--loss: a run of one CPU's events lost inside its stream (in the causal window when a
    fault is planted); clears ``keep`` of them. Index of the next surviving event -> (cpu, count)."""
    loss_at: dict[int, tuple[int, int]] = {}  # index of the next surviving event -> (cpu, count)
    if cfg.loss:
        if fp is not None:
            # Inside the causal window, on the faulty thread's CPU, never the key lines.
            c = fp.app_cpu
            # (early-completion: from the frame's TX marker; its forward note, insert1, comes before)
            lo, hi = tag_idx.get("insert2" if cfg.fault == "early-completion" else "insert1", -1), tag_idx[wend_tag]
            cand = [i for i in percpu[c] if keep[i] and wstart < ev[i][0] and lo < i < hi and ev[i][6] is None]
        else:
            busy = sorted(percpu)
            if cfg.tight:  # a tight overrun leaves some CPUs a handful of events
                busy = [c for c in busy if sum(keep[i] for i in percpu[c]) >= 8] or busy
            c = rng.choice(busy)
            idx = [i for i in percpu[c] if keep[i]]
            cand = idx[len(idx) // 4 : len(idx) * 3 // 4]
        if not cand:
            raise AssertionError(f"seed {cfg.seed}: no room for a loss in the window")
        start = rng.randrange(0, len(cand))
        n = rng.randint(1, min(40, len(cand) - start))
        gone = cand[start : start + n]
        for i in gone:
            keep[i] = False
        nxt = next(i for i in percpu[c] if i > gone[-1] and keep[i])
        if cfg.markers == "batched":
            # the kernel counts lost lines: a ring operation's run of markers was one
            n = sum(1 for j, i in enumerate(gone) if j == 0 or ev[i][7] is None or ev[i][7] != ev[gone[j - 1]][7])
        loss_at[nxt] = (c, n)
    return loss_at


def _render(
    sim: _Sim,
    ev: list,
    keep: list[bool],
    loss_at: dict,
    total_written: int,
    dropped_before: dict[int, int],
    wrap_info: dict,
) -> tuple[str, int, dict[str, int], list[dict]]:
    """The kept events as trace text: (text, its line count, tag -> line, the losses' truth).
    Notes each CPU's first timestamp in ``wrap_info``."""
    cfg, rng = sim.cfg, sim.rng
    out: list[str] = []
    kept = sum(keep)
    loss_truth = []
    groups = _lines(ev, keep, loss_at, cfg.markers == "batched")
    if cfg.fmt == "ftrace":
        out.append("# tracer: nop\n")
        # the kernel counts its entries: lines (a batched line is one)
        out.append(
            f"# entries-in-buffer/entries-written: {len(groups)}/{total_written - kept + len(groups)}   #P:{cfg.cpus}\n"
        )
        out.append(FTRACE_LEGEND)
    else:
        out.append(f"cpus={cfg.cpus}\n")
    header_lines = sum(s.count("\n") for s in out)
    lineno = header_lines
    prefix: dict[tuple, str] = {}
    started: set[int] = set()
    annotate = (cfg.wrap or cfg.tight) and bool(dropped_before)
    tag_line: dict[str, int] = {}
    first_line = True
    for group in groups:
        i = group[0]
        e = ev[i]
        ts, _, cpu, task, flags, body, tag, _ = e
        if len(group) > 1 or (cfg.markers == "batched" and e[7] is not None):
            # (a ring operation of one descriptor is a batched line too)
            body = _batched(body, [ev[j][5] for j in group])
        if cpu not in started:
            started.add(cpu)
            if cfg.wrap or cfg.tight:
                wrap_info["first_ts"][str(cpu)] = ts / 1e9
            if cfg.fmt == "ftrace":
                # trace.c test_cpu_buff_start(): once any CPU overran, each CPU's
                # first entry is announced, except the trace's very first entry.
                if annotate and not first_line:
                    out.append(f"##### CPU {cpu} buffer started ####\n")
                    lineno += 1
            elif cpu in dropped_before:
                out.append(f"CPU:{cpu} [{dropped_before[cpu]} EVENTS DROPPED]\n")
                lineno += 1
        first_line = False
        if i in loss_at:
            c, n = loss_at[i]
            if cfg.fmt == "ftrace":
                out.append(f"CPU:{c} [LOST {n} EVENTS]\n" if rng.random() < 0.75 else f"CPU:{c} [LOST EVENTS]\n")
            else:
                out.append(f"CPU:{c} [{n} EVENTS DROPPED]\n" if rng.random() < 0.75 else f"CPU:{c} [EVENTS DROPPED]\n")
            lineno += 1
            loss_truth.append({"cpu": c, "count": n, "line": lineno})
        key = (task, cpu, flags)
        pf = prefix.get(key)
        if pf is None:
            comm, pid = sim.tasks[task]
            if cfg.fmt == "ftrace":
                pf = f"{comm:>16}-{pid:<7} [{cpu:03d}] {flags} "
            else:
                pf = f"{comm:>16}-{pid:<5} [{cpu:03d}] "
            prefix[key] = pf
        out.append(f"{pf}{ts // 1_000_000_000:5d}.{ts // 1000 % 1_000_000:06d}: {body}\n")
        lineno += 1
        for j in group:
            if ev[j][6] is not None:
                tag_line[ev[j][6]] = lineno
    text = "".join(out)
    return text, lineno, tag_line, loss_truth


def _planted_anomaly(
    cfg: SimConfig,
    ev: list,
    keep: list[bool],
    planted: Optional[dict],
    fp: Optional[_Pair],
    tag_idx: dict,
    loss_at: dict,
    kept: int,
    total_written: int,
    dropped_before: dict[int, int],
) -> Optional[dict]:
    """The truth's anomaly: what was planted, and the verdict the kept trace supports."""
    anomaly = None
    if fp is not None and planted is not None:
        anomaly = {
            "kind": cfg.fault,
            "verdict": "kernel" if cfg.fault in KERNEL_FAULTS + TX_KERNEL_FAULTS else "application",
            "addr": hex_or(planted["addr"]),
            "expected": hex_or(planted.get("expected")),
            "xs": hex_or(fp.xs),
            "sock": fp.rx,
            "queue": fp.queue,
            "reserve_cpu": planted.get("reserve_cpu"),
            "flush_cpu": planted.get("flush_cpu"),
            "missing": [],
        }
        if cfg.fault in TX_KERNEL_FAULTS and cfg.probes == "none":
            anomaly.update(verdict="undetermined", missing=["tx" if cfg.fault == "early-completion" else "cq_submit"])
        if cfg.fault in KERNEL_FAULTS:
            if cfg.probes == "none":
                anomaly.update(verdict="undetermined", missing=["reserve", "flush"])
            elif cfg.probes == "no-flush":
                anomaly.update(missing=["flush"])
        if "symptom_addr" in planted:
            anomaly["symptom"] = {
                "addr": hex_or(planted["symptom_addr"]),
                "expected": hex_or(planted.get("symptom_expected")),
            }
        if anomaly["verdict"] != "undetermined":
            story = {k: v for k, v in tag_idx.items()}
            seq_idx = {e[1]: i for i, e in enumerate(ev)}
            for name, seq in planted.get("story", {}).items():
                if seq is not None:
                    story[name] = seq_idx[seq]
            anomaly.update(
                _judge(
                    cfg,
                    ev,
                    keep,
                    story,
                    loss_at,
                    overrun=(kept < total_written if cfg.fmt == "ftrace" else bool(dropped_before)),
                )
            )
    return anomaly


def _lines(ev: list, keep: list[bool], loss_at: dict, batched: bool) -> list[list[int]]:
    """The kept events, one list per trace line: one each, or (batched) each run
    of one ring operation's markers that nothing else interrupts, kept under
    BATCH_LINE_MAX bytes."""
    lines: list[list[int]] = []
    size = 0
    for i, e in enumerate(ev):
        if not keep[i]:
            continue
        if not batched or e[7] is None:
            lines.append([i])
            continue
        text = e[5][e[5].index(MARK) + len(MARK) :]
        # what the descriptor adds to a batched line: "; " and the note, or a
        # space and the address (and at most " COMP -> FILL" for a new group)
        grow = len(text) + 2 if text.startswith("0x") else len(text.split()[2]) + 1 + 13
        if lines and ev[lines[-1][-1]][7] == e[7] and i not in loss_at and size + grow <= BATCH_LINE_MAX:
            lines[-1].append(i)
            size += grow
            continue
        lines.append([i])
        size = len(text) + 13
    return lines


def _batched(first: str, bodies: list[str]) -> str:
    """One batched line of the marker bodies of one ring operation (docs/markers.md)."""
    head = first[: first.index(MARK) + len(MARK)]
    texts = [b[b.index(MARK) + len(MARK) :] for b in bodies]
    if texts[0].startswith("0x"):
        return head + NOTE_SEP.join(texts)
    out: list[str] = []
    group = None
    for t in texts:
        sock, queue, addr, frm, _, to = t.split()
        if group != (frm, to):
            out += [f"{sock} {queue}" if group is None else "", f"{frm} -> {to}"]
            group = (frm, to)
        out.append(addr)
    return head + " ".join(w for w in out if w)


class _Histories:
    """What the surviving events of a simulated trace let a reader claim, per CPU
    (the rule of flightrec.model.history, applied to the simulator's own events):
    each CPU's history begins at its first surviving event when anything
    overran, lost runs are gaps, and a claim that nothing happened between t1
    and t2 needs the CPUs it speaks of to be recording over that span. Times
    are microseconds, as the text prints them."""

    def __init__(self, ev: list, keep: list[bool], loss_at: dict, overrun: bool) -> None:
        self.since: dict[int, int] = {}
        self.gaps: list[tuple[int, int, int]] = []  # (cpu, after, before)
        last: dict[int, int] = {}
        for i, e in enumerate(ev):
            if i in loss_at:
                c = loss_at[i][0]
                if c in last:
                    self.gaps.append((c, last[c], e[0] // 1000))
                else:
                    overrun = True  # lost before the CPU's first event: its buffer wrapped
            if keep[i]:
                self.since.setdefault(e[2], e[0] // 1000)
                last[e[2]] = e[0] // 1000
        if not overrun:
            self.since = {}

    def clear(self, t1: int, t2: int, cpus: Optional[tuple[int, ...]] = None) -> bool:
        if any(since > t1 for c, since in self.since.items() if cpus is None or c in cpus):
            return False
        return not any(after < t2 and before > t1 for c, after, before in self.gaps if cpus is None or c in cpus)


def _judge(cfg: SimConfig, ev: list, keep: list[bool], story: dict[str, int], loss_at: dict, overrun: bool) -> dict:
    """The verdict the surviving events prove, with what it lacks when they do not.

    Kernel faults: the raced slot is the one after the slot the application
    read last, so that read and its reserve must survive, and no read of the
    socket may be missing after it (every CPU recording from that read on).
    That no reserve came in between is vouched for by the application's FILL
    order (its detection line) when it read the poison; a stale address needs
    the kernel's own events, every CPU recording from that reserve to the
    raced one. The racing flush is named only when the racing CPU was
    recording from its reserve to that flush. Duplicate
    insertions: no marker may be missing between the two insertions, on any
    CPU. A marker the application itself wrote as FILL -> TX needs nothing else.
    """
    h = _Histories(ev, keep, loss_at, overrun)

    def t(name: str) -> int:
        return ev[story[name]][0] // 1000

    if cfg.fault in KERNEL_FAULTS:
        said = {
            "prev_reserve": "the reserve of the slot read just before the raced one",
            "prev_read": "the read just before the raced slot's",
        }
        need = [said[n] for n in said if n not in story or not keep[story[n]]]
        if not need and not h.clear(t("prev_read"), t("detection")):
            need = ["a CPU's events between the read before and the detection (its buffer began later, or lost)"]
        if not need and cfg.fault == "stale-slot" and not h.clear(t("prev_reserve"), t("reserve")):
            need = [
                "a CPU's kernel events between the reserve before and the raced one (its buffer began later, or lost)"
            ]
        if need:
            return {"verdict": "undetermined", "reserve_cpu": None, "flush_cpu": None, "missing": need}
        a = ev[story["reserve"]][2]
        if cfg.probes == "all" and not h.clear(t("reserve"), t("flush"), (a,)):
            return {"flush_cpu": None}
        return {}
    if cfg.fault in TX_KERNEL_FAULTS and not h.clear(t("insert1"), t("late" if "late" in story else "detection")):
        return {
            "verdict": "undetermined",
            "missing": [
                "a CPU's events between the frame's TX and the kernel's late send (its buffer began later, or lost)"
            ],
        }
    if cfg.fault in PAIR_FAULTS and not h.clear(t("insert1"), t("insert2")):
        return {
            "verdict": "undetermined",
            "missing": ["a CPU's events between the two insertions (its buffer began later, or lost)"],
        }
    return {}


def truth_json(truth: Truth) -> str:
    """The ground truth as the CLI prints it (sorted keys: stable across runs)."""
    return json.dumps(truth.to_json(), indent=2, sort_keys=True)
