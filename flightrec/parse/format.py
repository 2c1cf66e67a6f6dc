"""The trace contract, written down once (docs/markers.md describes it).

Everything flightrec knows about what a trace line *means* is here: the
descriptor states and their valid transitions, the poison, the event kinds
with their kernel event names and fields, and the detection forms. The
parsers (flightrec/parse/fields.py in Python, flightrec/_scan.c in C) read
these tables; the model and the checks use the names.

Adding a kernel event field (say `cons` on a COMPLETION event) is one row of
KERNEL_FIELDS, and a new event one row of KERNEL_EVENT_NAMES: both parsers take
the tables as they are, and tests/unit/test_scan.py holds them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# -- descriptor states (docs/markers.md "Transition lines"); index = the C scanner's code
STATES = ("FREE", "FILL", "RX", "TX", "COMP")
KERNEL_OWNED = ("FILL", "TX")
# state a descriptor must be in (by its history) before entering each state
VALID_BEFORE = {
    "FILL": ("FREE", "RX", "COMP"),
    "TX": ("FREE", "RX", "COMP"),
    "RX": ("FILL",),
    "COMP": ("TX",),
    "FREE": ("FREE", "RX", "COMP"),
}

# The application writes it into every RX slot it consumed: read back, the
# kernel published a slot it had not written.
POISON = 0xDEADBEEFDEADBEEF

# -- event kinds; index = the C scanner's code
OTHER = "other"  # any other event, kept on the timeline
MARKER = "marker"  # an application transition line
NOTE = "note"  # an application note about one descriptor
RESERVE = "reserve"  # kernel took addr from FILL and reserved an RX slot of xs
FLUSH = "flush"  # kernel published the reserved RX slots of xs
TX = "tx"  # kernel read the packet at addr to transmit it
XMIT = "xmit"  # kernel handed the skb built from TX descriptor addr of xs to the driver
DESTRUCT = "destruct"  # skb of xs destroyed: its destructor produces the COMPLETION entries
CQ_RESERVE = "cq_reserve"  # a COMPLETION slot of cq reserved for addr of xs
CQ_SUBMIT = "cq_submit"  # n (1 if absent) COMPLETION slots of cq published from slot on
KINDS = (OTHER, MARKER, NOTE, RESERVE, FLUSH, TX, XMIT, DESTRUCT, CQ_RESERVE, CQ_SUBMIT)

# Batched lines (docs/markers.md "Batched lines"): one write per ring operation.
# `SOCK q:Q FROM -> TO ADDR ADDR ...` (more `FROM -> TO ADDR ...` groups may follow)
# and `ADDR TEXT; ADDR TEXT; ...`; the parsers give one event per descriptor, in
# order, with the line's timestamp and CPU. A writer keeps each line at most
# BATCH_LINE_MAX bytes, splitting a longer batch into several lines in order:
# a trace_marker write is cut at 1024 bytes before Linux 6.8 (TRACE_BUF_SIZE in
# tracing_mark_write; measured on Debian's 6.1) and at the ring buffer's largest
# event after (4054 bytes on 6.18 with 4 KiB sub-buffers, measured).
NOTE_SEP = "; "
BATCH_LINE_MAX = 1000
MARKER_FORMS = ("batched", "per-descriptor")  # the forwarder's --markers; the first is its default

# ftrace events that carry the application's marker lines (trace-cmd shows
# the ftrace `print` event as "ip: text")
MARKER_EVENTS = ("tracing_mark_write", "print")
# the BPF tracepoint backend's kernel events: `bpf_trace_printk: flightrec NAME fields`
BPF_EVENT = "bpf_trace_printk"
BPF_PREFIX = "flightrec "


@dataclass(frozen=True)
class KernelField:
    """A `name=value` field of a kernel event (value: hex, `0x` optional), and
    the timeline column that holds it (None where an event lacks it)."""

    name: str
    column: str


# The first field is `addr`: the markers' ADDR lands in the same column.
KERNEL_FIELDS = (
    KernelField("addr", "addr"),
    KernelField("xs", "xs"),
    KernelField("len", "length"),
    KernelField("slot", "slot"),  # BPF backend: the RX ring index written
    KernelField("prod", "prod"),  # BPF backend: RX producer after a flush
    KernelField("skb", "skb"),
    KernelField("cq", "cq"),  # the COMPLETION ring (struct xsk_queue *)
    KernelField("n", "n"),  # COMPLETION slots a submit publishes
)

# semantic kind -> (event name bases, fields that must be present). The names
# are those of the probe specs (flightrec/probes/specs/xsk.toml: rx_reserve, flush,
# tx_get_data) and of the post's `perf probe` defaults (__xsk_rcv_zc_L7,
# xsk_flush, xp_raw_get_data); a suffix such as `_L7` or `_1` (perf numbers
# the inlined copies of a function) is ignored.
KERNEL_EVENT_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RESERVE: (("rx_reserve", "__xsk_rcv_zc", "xsk_rcv_zc"), ("addr", "xs")),
    FLUSH: (("flush", "xsk_flush"), ("xs",)),
    TX: (("tx_get_data", "xp_raw_get_data"), ("addr",)),
    # TX and COMPLETION (copy mode), per kernel from the same specs; `slot` is a
    # COMPLETION ring index: the one reserved, or the producer before a submit
    XMIT: (("tx_xmit",), ("addr",)),
    DESTRUCT: (("skb_destruct",), ("skb",)),
    CQ_RESERVE: (("cq_reserve",), ()),
    CQ_SUBMIT: (("cq_submit",), ("slot",)),
}


@dataclass(frozen=True)
class Format:
    """The tables a parser reads; `CONTRACT` is flightrec's. Tests build others
    to show a new field or event needs nothing else."""

    kinds: tuple[str, ...] = KINDS
    fields: tuple[KernelField, ...] = KERNEL_FIELDS
    events: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = tuple(
        (k, names, need) for k, (names, need) in KERNEL_EVENT_NAMES.items()
    )

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if names[:1] != ["addr"] or len(set(names)) < len(names) or len(set(self.kinds)) < len(self.kinds):
            raise ValueError("a Format's fields start with addr and are named once, its kinds too")

    def kernel_kind(self, event: str) -> Optional[tuple[str, tuple[str, ...]]]:
        """(kind, required fields) of a kernel event name, or None."""
        for kind, bases, need in self.events:
            for base in bases:
                if event == base or (event.startswith(base) and event[len(base)] == "_"):
                    return kind, need
        return None

    def scanner_table(self) -> list[tuple[str, int, int]]:
        """The events for the C scanner: (name base, kind code, bits of the needed fields)."""
        names = [f.name for f in self.fields]
        return [
            (base, self.kinds.index(kind), sum(1 << names.index(f) for f in need))
            for kind, bases, need in self.events
            for base in bases
        ]


CONTRACT = Format()


# -- detection lines: `SOCK q:Q ADDR FROM -> TO: DETAIL`, the application's own report.
# kind -> the DETAIL's form (docs/markers.md "Detection lines"); flightrec.parse.fields
# has one reader per form, tried in this order; a detail of none of them is "other".
DETECTION_FORMS = {
    "fill_order": "expected EXP remaining: [HEX, HEX, ...]",
    "length": "len LEN xdp_len XDPLEN",
    "poison": "poison",
    "payload": "payload expected PKT found PKT at OFF len LEN stamped LEN",
    "invalid": "invalid, was STATE",
}


@dataclass(frozen=True)
class PayloadFinding:
    """A stamped payload that is not what its stamp says (c/stamp/stamp.h): at byte
    `offset` of a `length`-byte UDP payload whose header claims packet
    `expected`, the data of packet `found` (None: unknown, `?` in the line)."""

    expected: Optional[int]
    found: Optional[int]
    offset: int
    length: int
    stamped: Optional[int]  # the length the payload was stamped with


@dataclass(frozen=True)
class Detection:
    """What a detection line's detail says the application found."""

    kind: str  # a key of DETECTION_FORMS, or "other"
    expected: Optional[int] = None
    remaining: tuple[int, ...] = ()
    remaining_cut: bool = False
    length: Optional[int] = None
    xdp_length: Optional[int] = None
    was: Optional[str] = None
    payload: Optional[PayloadFinding] = None
