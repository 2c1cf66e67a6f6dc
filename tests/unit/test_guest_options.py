"""The VM's guest builds record's options from the same parsed command line as
the host's `flightrec record`: no option may be dropped on the way (the guest
once ignored --stamp-rate, and vm record's 2000 pkt/s never reached it)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from flightrec.cli.guest import record_options
from flightrec.cli.record import record_cmd
from flightrec.record.session import RecordOptions

ARGS = [
    "--duration",
    "7",
    "--queues",
    "3",
    "-b",
    "8192",
    "--inject-after",
    "9",
    "--kernel-events",
    "none",
    "--mode",
    "auto",
    "--nic",
    "virtio",
    "--stamp-rate",
    "2000",
    "--app",
    "./fwd {outer}",
    "--app-ready-timeout",
    "5",
    "--tx-twins",
]


def test_every_option_given_reaches_the_guest_s_record_options():
    opts = record_options(ARGS, Path("/tmp/out"))
    got = asdict(opts)
    assert got == {
        **asdict(RecordOptions()),
        "out_dir": Path("/tmp/out"),
        "duration": 7.0,
        "queues": 3,
        "buffer_kb": 8192,
        "inject_after": 9,
        "kernel_events": "none",
        "mode": "auto",
        "nic": "virtio",
        "stamp_rate": 2000,
        "app": "./fwd {outer}",
        "app_ready_timeout": 5.0,
        "tx_twins": True,
    }


def test_every_record_option_has_a_field():
    names = {p.name for p in record_cmd.params} - {"plain", "out_dir"}
    assert names <= {f.name for f in fields(RecordOptions)}, names - {f.name for f in fields(RecordOptions)}
