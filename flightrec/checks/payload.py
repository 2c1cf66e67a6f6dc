"""Stamped payloads that are not what their stamp says (c/stamp/stamp.h).

Two parties check them: the forwarder, on the frame it read from RX before
forwarding it (a detection line `... FILL -> RX: payload ...`), and the
receiving application after the kernel delivered the datagram (`receiver
udp:PORT: payload ...`). The receiver does not know the frame; the forwarder's
note `ADDR egress_tx_queue forward pkt N`, written when it checked packet N
intact in frame ADDR and handed it to TX, ties the two.
"""

from __future__ import annotations

from typing import Optional

from flightrec.checks.anomaly import APPLICATION, KERNEL, UNDETERMINED, Anomaly, Evidence
from flightrec.checks.attribution import attribute_read, ev
from flightrec.checks.completion import SENT, in_flight_anomaly
from flightrec.hexaddr import hexa
from flightrec.model.replay import Replay
from flightrec.model.timeline import Timeline
from flightrec.parse import format as kinds
from flightrec.parse.fields import Detection, PayloadFinding, parse_receiver_line

# What would tell the kernel's part from the application's once the payload
# changed after the forwarder's check (issue 13, item 2).
TX_EVENTS = "kernel events of the frame's TX copy and COMPLETION (xsk_build_skb, xsk_destruct_skb, xsk_cq_submit)"


def describe(p: PayloadFinding) -> str:
    """`packet 4242 held packet 4100's data at byte 36 (1200 bytes, stamped 1200)`."""
    pkt = "a packet with an unreadable stamp header" if p.expected is None else f"packet {p.expected}"
    found = f"packet {p.found}'s data" if p.found is not None else "bytes that are no packet's stamp"
    size = f"{p.length} bytes" + (f", stamped {p.stamped}" if p.stamped != p.length else "")
    return f"{pkt} held {found} at byte {p.offset} ({size})"


def check_payload(tl: Timeline, rp: Replay) -> list[Anomaly]:
    out = [_at_forwarder(tl, rp, row, det) for row, det in rp.detections if det.kind == "payload"]
    receiver = _receiver_rows(tl)
    if receiver:
        forwarded = _forward_notes(tl, receiver[-1][0])
        out += [_at_receiver(tl, row, port, det, forwarded) for row, port, det in receiver]
    return out


def _at_forwarder(tl: Timeline, rp: Replay, row: int, det: Detection) -> Anomaly:
    assert det.payload is not None
    addr, sock = tl.addr[row], tl.sock[row]
    symptom = f"{sock} read frame {hexa(addr)} from RX: {describe(det.payload)}"
    r = next((x for x in rp.reads if x.row == row), None)
    if r is not None and (r.slot_mismatch or r.fill_mismatch or r.state_before not in (None, "FILL")):
        # the frame came out of RX out of order or out of turn: that story says who
        return attribute_read(tl, rp, r, "payload_mismatch", symptom)
    evidence: list[Evidence] = [ev(tl, row, "the forwarder's detection line")]
    prev = _previous_packet(tl, addr, row)
    why = (
        "the frame was published to RX with data other than the packet's; the trace carries no kernel event "
        "with the bytes the kernel wrote, so whether the sender, the kernel's RX copy or a stale publish did it "
        "is not proven"
    )
    if prev is not None and det.payload.found is not None and prev[1] == det.payload.found:
        evidence.append(
            ev(tl, prev[0], f"the frame's previous packet was {prev[1]}: the data found is what it held before this RX")
        )
        why = (
            f"the frame still held its previous packet {prev[1]} at that byte: the kernel published the RX "
            "descriptor before writing the new packet over it, or wrote it short; no kernel event shows the copy"
        )
    return Anomaly(
        "payload_mismatch",
        UNDETERMINED,
        tl.line[row],
        tl.ts[row],
        f"{symptom}; {why}",
        addr=addr,
        row=row,
        sock=sock,
        queue=tl.queue[row],
        read_cpu=tl.cpu[row],
        xs=r.xs if r is not None else None,
        evidence=tuple(evidence),
        missing=("the bytes the kernel wrote into the frame",),
    )


def _receiver_rows(tl: Timeline) -> list[tuple[int, int, Detection]]:
    """(row, port, detection) of every receiver line: marker events the grammar leaves as `other`."""
    out = []
    events, bodies = tl.parsed.event, tl.parsed.body
    for row in tl.rows_of(kinds.OTHER):
        if events[row] not in kinds.MARKER_EVENTS:
            continue
        body = bodies[row]
        if events[row] == "print":  # trace-cmd: "ip: text"
            body = body.partition(": ")[2]
        if not body.startswith("receiver "):
            continue
        parsed = parse_receiver_line(body)
        if parsed is not None:
            out.append((row, parsed[0], parsed[1]))
    return out


def _note_packet(detail: Optional[str]) -> Optional[int]:
    """N of a forwarder note `egress_tx_queue forward pkt N`."""
    words = (detail or "").split()
    if len(words) >= 2 and words[-2] == "pkt" and words[-1].isascii() and words[-1].isdigit():
        return int(words[-1])
    return None


def _forward_notes(tl: Timeline, until: int) -> dict[int, int]:
    """Packet number -> the row of the last note that forwarded it, up to row `until`."""
    out: dict[int, int] = {}
    kind, detail = tl.kind, tl.detail
    for row in range(until):
        if kind[row] == kinds.NOTE:
            n = _note_packet(detail[row])
            if n is not None:
                out[n] = row
    return out


def _previous_packet(tl: Timeline, addr: int, before: int) -> Optional[tuple[int, int]]:
    """(row, packet) of the last forward note of frame addr before row `before`."""
    for row in range(before - 1, -1, -1):
        if tl.kind[row] == kinds.NOTE and tl.addr[row] == addr:
            n = _note_packet(tl.detail[row])
            if n is not None:
                return row, n
    return None


def _sent_after(tl: Timeline, addr: int, tx: int, comp: int, until: int) -> Optional[int]:
    """The kernel's send of frame addr after its COMPLETION read at `comp` (before `until`),
    when it did not send it between the TX marker `tx` and that read."""
    sent = [r for r in range(tx + 1, until) if tl.kind[r] in SENT and tl.addr[r] == addr]
    if not sent or sent[0] < comp:
        return None
    return sent[0]


def _after(tl: Timeline, addr: int, start: int, until: int) -> list[int]:
    """Marker rows of frame addr after `start`, before `until`."""
    return [row for row in range(start + 1, until) if tl.kind[row] == kinds.MARKER and tl.addr[row] == addr]


def _at_receiver(tl: Timeline, row: int, port: int, det: Detection, forwarded: dict[int, int]) -> Anomaly:
    assert det.payload is not None
    p = det.payload
    symptom = f"the receiver on udp:{port} got {describe(p)}"
    base = dict(line=tl.line[row], ts=tl.ts[row], read_cpu=tl.cpu[row], row=row)
    note = forwarded.get(p.expected) if p.expected is not None else None
    if note is None or note > row:
        return Anomaly(
            "payload_corrupt",
            UNDETERMINED,
            explanation=(
                f"{symptom}; the trace holds no forwarder note for packet {p.expected}, so no frame is tied to it "
                "(forwarded before the trace window, or by a forwarder without --payload-port)"
            ),
            evidence=(ev(tl, row, "the receiver's detection line"),),
            missing=(f"the forwarder's note `... forward pkt {p.expected}`",),
            **base,
        )
    addr = tl.addr[note]
    evidence = [
        ev(tl, row, "the receiver's detection line"),
        ev(tl, note, f"the forwarder checked packet {p.expected} intact in frame {hexa(addr)} and forwarded it"),
    ]
    later = _after(tl, addr, note, row)
    tx = next((r for r in later if tl.to[r] == "TX"), None)
    sock = tl.sock[tx] if tx is not None else None
    queue = tl.queue[tx] if tx is not None else None
    if tx is not None:
        evidence.append(ev(tl, tx, f"{tl.sock[tx]} put frame {hexa(addr)} into its TX ring"))
    # The application gave the frame to the kernel again (FILL, TX) before the
    # kernel completed its send: reused in flight, the receiver's bytes are its doing.
    after_tx = [r for r in later if tx is not None and r > tx]
    for r in after_tx:
        if tl.frm[r] == "TX" and tl.to[r] == "COMP":
            evidence.append(ev(tl, r, f"the kernel completed the send of {hexa(addr)}"))
            late = _sent_after(tl, addr, tx, r, row)
            if late is not None:
                # the completion came before the send: the kernel's immature COMPLETION entry
                found = in_flight_anomaly(tl, tx, r, late)
                if found.verdict == KERNEL:
                    return Anomaly(
                        "payload_corrupt",
                        KERNEL,
                        explanation=f"{symptom}; {found.explanation}",
                        addr=addr,
                        sock=sock,
                        queue=queue,
                        xs=found.xs,
                        evidence=tuple(evidence) + found.evidence[2:],
                        claims=found.claims,
                        **base,
                    )
            break
        if tl.to[r] in ("FILL", "TX"):
            evidence.append(ev(tl, r, f"the application put {hexa(addr)} into {tl.to[r]} before its completion"))
            return Anomaly(
                "payload_corrupt",
                APPLICATION,
                explanation=(
                    f"{symptom}; the forwarder reused frame {hexa(addr)} ({tl.frm[r]} -> {tl.to[r]}, "
                    f"line {tl.line[r]}) while the kernel still had it to send"
                ),
                addr=addr,
                sock=sock,
                queue=queue,
                evidence=tuple(evidence),
                **base,
            )
    tx_reads = [r for r in range(note + 1, row) if tl.kind[r] == kinds.TX and tl.addr[r] == addr]
    for r in tx_reads[:2]:
        evidence.append(ev(tl, r, f"the kernel read {hexa(addr)} to transmit it"))
    return Anomaly(
        "payload_corrupt",
        UNDETERMINED,
        explanation=(
            f"{symptom}; the forwarder had checked it intact in frame {hexa(addr)} (line {tl.line[note]}): the bytes "
            "changed after that check, by the application writing into a frame it had handed to TX or by the kernel's "
            "TX path; no marker shows the application touching the frame, and the trace has no kernel event of the "
            "frame's TX copy and completion"
        ),
        addr=addr,
        sock=sock,
        queue=queue,
        evidence=tuple(evidence),
        missing=(TX_EVENTS,),
        **base,
    )
