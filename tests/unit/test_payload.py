"""Stamped payloads: the detection form, the receiver's line and the payload check."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flightrec.analysis import analyze_text
from flightrec.parse.fields import PayloadFinding, parse_detection, parse_receiver_line

from tracegen import mark


def test_payload_detail_parses_with_and_without_unknowns():
    d = parse_detection("payload expected 4242 found 4100 at 36 len 1200 stamped 1200")
    assert d.kind == "payload" and d.length == 1200
    assert d.payload == PayloadFinding(4242, 4100, 36, 1200, 1200)
    d = parse_detection("payload expected ? found ? at 0 len 10 stamped ?")
    assert d.payload == PayloadFinding(None, None, 0, 10, None)


def test_malformed_payload_detail_is_other():
    for text in (
        "payload expected 1 found 2 at 3 len 4",  # stamped missing
        "payload expected x found 2 at 3 len 4 stamped 4",
        "payload expected 1 found 2 at ? len 4 stamped 4",
        "payload expected 1 found 2 near 3 len 4 stamped 4",
    ):
        assert parse_detection(text).kind == "other", text


def test_receiver_line():
    port, d = parse_receiver_line("receiver udp:5203: payload expected 183 found ? at 805 len 860 stamped 860")
    assert port == 5203 and d.payload == PayloadFinding(183, None, 805, 860, 860)
    assert parse_receiver_line("receiver udp:0: payload expected 1 found 1 at 1 len 20 stamped 20") is None
    assert parse_receiver_line("receiver udp:5203: poison") is None
    assert parse_receiver_line("ingress q:0 0x100 FILL -> RX: poison") is None


def cycle(t, addr, pkt=None, tx_sock="inner q:0"):
    """One clean forward of frame addr (outer RX -> inner TX -> COMP -> outer FILL)."""
    note = f"{addr:#x} egress_tx_queue forward" + (f" pkt {pkt}" if pkt is not None else "")
    out = [
        mark(t, 0, f"outer q:0 {addr:#x} FILL -> RX"),
        mark(t + 0.0001, 0, note),
        mark(t + 0.0002, 1, f"{tx_sock} {addr:#x} RX -> TX"),
        mark(t + 0.0003, 1, f"{tx_sock} {addr:#x} TX -> COMP"),
        mark(t + 0.0004, 0, f"outer q:0 {addr:#x} COMP -> FILL"),
    ]
    return "".join(out)


def fill(addrs, t=0.5):
    return "".join(mark(t + i * 1e-5, 0, f"outer q:0 {a:#x} FREE -> FILL") for i, a in enumerate(addrs))


def test_forwarder_payload_detection_names_frame_and_previous_packet():
    frames = [0x1100, 0x2100]
    text = fill(frames) + cycle(1.0, 0x1100, pkt=8) + cycle(1.1, 0x2100, pkt=9)
    # frame 0x1100 comes round again holding packet 8's bytes under packet 12's header
    text += mark(1.2, 0, "outer q:0 0x1100 FILL -> RX: payload expected 12 found 8 at 12 len 300 stamped 300")
    r = analyze_text(text)
    [a] = [x for x in r.to_json()["anomalies"] if x["kind"] == "payload_mismatch"]
    assert a["addr"] == "0x1100" and a["sock"] == "outer q:0" and a["verdict"] == "undetermined"
    assert "packet 12 held packet 8's data at byte 12" in a["explanation"]
    assert "previous packet 8" in a["explanation"]
    assert any("forward pkt 8" in e["text"] for e in a["evidence"])


def test_receiver_detection_is_tied_to_the_frame_that_carried_the_packet():
    text = fill([0x1100, 0x2100]) + cycle(1.0, 0x1100, pkt=7) + cycle(1.1, 0x2100, pkt=8)
    text += mark(1.3, 1, "receiver udp:5203: payload expected 7 found ? at 200 len 900 stamped 900", task="stamp")
    d = analyze_text(text).to_json()
    [a] = [x for x in d["anomalies"] if x["kind"] == "payload_corrupt"]
    assert a["addr"] == "0x1100" and a["sock"] == "inner q:0" and a["verdict"] == "undetermined"
    assert "checked it intact in frame 0x1100" in a["explanation"]
    assert any("xsk_build_skb" in m for m in a["missing"])
    texts = [e["text"] for e in a["evidence"]]
    assert any("forward pkt 7" in t for t in texts) and any("RX -> TX" in t for t in texts)


def test_frame_reused_before_completion_is_application():
    text = fill([0x1100]) + mark(1.0, 0, "outer q:0 0x1100 FILL -> RX")
    text += mark(1.0001, 0, "0x1100 egress_tx_queue forward pkt 7")
    text += mark(1.0002, 1, "inner q:0 0x1100 RX -> TX")
    text += mark(1.0003, 0, "outer q:0 0x1100 RX -> FILL")  # fill-and-tx: back into FILL while in TX
    text += mark(1.3, 1, "receiver udp:5203: payload expected 7 found 9 at 12 len 900 stamped 900", task="stamp")
    d = analyze_text(text).to_json()
    [a] = [x for x in d["anomalies"] if x["kind"] == "payload_corrupt"]
    assert a["verdict"] == "application" and a["addr"] == "0x1100"
    assert "reused frame 0x1100" in a["explanation"]


def test_receiver_detection_without_forward_note_is_undetermined():
    text = fill([0x1100]) + cycle(1.0, 0x1100)
    text += mark(1.3, 1, "receiver udp:5203: payload expected 70 found ? at 20 len 100 stamped 100", task="stamp")
    d = analyze_text(text).to_json()
    [a] = [x for x in d["anomalies"] if x["kind"] == "payload_corrupt"]
    assert a["verdict"] == "undetermined" and a["addr"] is None
    assert "no forwarder note for packet 70" in a["explanation"]


def test_clean_stamped_traffic_is_clean():
    text = fill([0x1100, 0x2100])
    for i in range(6):
        text += cycle(1.0 + i * 0.01, (0x1100, 0x2100)[i % 2], pkt=i)
    assert analyze_text(text).to_json()["anomalies"] == []
