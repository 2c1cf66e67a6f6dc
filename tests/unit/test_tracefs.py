"""flightrec.tracefs on the real tracefs of this machine (skips without root)."""

from __future__ import annotations

import errno
import os

import pytest

from flightrec import tracefs
from flightrec.errors import FlightrecError

STATS = """entries: 2
overrun: 7
commit overrun: 0
bytes: 124
oldest event ts:   345.152448
now ts:   350.725111
dropped events: 3
read events: 0
"""


def test_parse_cpu_stats():
    s = tracefs.parse_cpu_stats(1, STATS)
    assert (s.cpu, s.entries, s.overrun, s.bytes, s.dropped) == (1, 2, 7, 124, 3)
    assert s.oldest_event_ts == pytest.approx(345.152448)
    assert s.now_ts == pytest.approx(350.725111)


def test_selected_clock():
    assert tracefs.selected_clock("local global [mono] boot\n") == "mono"
    with pytest.raises(FlightrecError):
        tracefs.selected_clock("local global")


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root to create tracefs instances")
    try:
        return tracefs.ensure_mounted()
    except FlightrecError as err:
        pytest.skip(str(err))


@pytest.fixture
def name():
    # Not `flightrec-<digits>`: `flightrec cleanup` must never take a test's instance.
    return f"flightrec-test-{os.getpid()}"


def test_instance_settings_trigger_and_restore(root, name, tmp_path):
    top_before = tracefs.global_settings(root)
    with tracefs.TraceInstance(name, root) as inst:
        assert inst.path.is_dir()
        assert inst.set_clock() in tracefs.SYNCED_CLOCKS
        assert inst.clock in tracefs.SYNCED_CLOCKS
        inst.set_buffer_size_kb(256)
        assert inst.buffer_size_kb >= 256
        inst.arm_traceoff_on_detection()
        assert 'traceoff:unlimited if buf ~ "*expected*"' in inst.read(tracefs.PRINT_TRIGGER)
        inst.start()
        fd = os.open(inst.file("trace_marker"), os.O_WRONLY)
        try:
            os.write(fd, b"outer q:0 0x100 FILL -> RX\n")
            assert inst.tracing_on
            os.write(fd, b"outer q:0 0x200 FILL -> RX: expected 0x100 remaining: []\n")
            # The kernel trigger stopped the instance on the detection line.
            assert not inst.tracing_on
            with pytest.raises(OSError) as err:
                os.write(fd, b"after\n")
            assert err.value.errno == errno.EBADF
        finally:
            os.close(fd)
        assert list(inst.marker_lines()) == [
            "outer q:0 0x100 FILL -> RX",
            "outer q:0 0x200 FILL -> RX: expected 0x100 remaining: []",
        ]
        stats = inst.cpu_stats()
        assert sum(s.entries for s in stats) == 2
        assert all(s.dropped == 0 for s in stats)
        saved = tmp_path / "trace.txt"
        assert inst.save_trace(saved) > 0
        assert "FILL -> RX: expected 0x100" in saved.read_text()
        # The global buffer never saw the markers.
        assert tracefs.global_settings(root).tracing_on == top_before.tracing_on
    assert not (root / "instances" / name).exists()
    assert tracefs.global_settings(root) == top_before


def test_values_restored_when_the_block_raises(root, name):
    with pytest.raises(RuntimeError):
        with tracefs.TraceInstance(name, root) as inst:
            inst.set_clock()
            inst.arm_traceoff_on_detection()
            raise RuntimeError("boom")
    assert name not in tracefs.list_instances(root, prefix="flightrec-test-")


def test_restore_puts_values_back_before_removal(root, name):
    inst = tracefs.TraceInstance(name, root)
    inst.create()
    try:
        clock = inst.clock
        inst.set_clock(["global"])
        inst.arm_traceoff_on_detection()
        assert inst.clock == "global"
        # Hold a file open so the instance cannot be removed and the restore shows.
        held = open(inst.file("trace_marker"), "w")
        with pytest.raises(FlightrecError, match="busy"):
            inst.close()
        assert inst.clock == clock
        assert "traceoff" not in inst.read(tracefs.PRINT_TRIGGER).replace("# traceon traceoff", "")
        held.close()
    finally:
        assert tracefs.remove_instance(name, root)


def test_existing_instance_is_refused(root, name):
    with tracefs.TraceInstance(name, root):
        with pytest.raises(FlightrecError, match="already exists"):
            tracefs.TraceInstance(name, root).create()


def test_unknown_clock_is_an_error(root, name):
    with tracefs.TraceInstance(name, root) as inst:
        with pytest.raises(FlightrecError, match="no CPU-synchronised trace clock"):
            inst.set_clock(["no-such-clock"])


def test_bad_buffer_size(root, name):
    with tracefs.TraceInstance(name, root) as inst:
        with pytest.raises(FlightrecError):
            inst.set_buffer_size_kb(0)
