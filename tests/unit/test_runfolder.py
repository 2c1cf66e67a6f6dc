"""The run folder contract: names, the one meta.json writer, what a new run replaces, reading back."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading

import pytest

from flightrec import runfolder
from flightrec.errors import FlightrecError
from flightrec.report.summary import summarize


def test_write_and_update_meta_whole_files(tmp_path):
    runfolder.write_meta(tmp_path, {"outcome": "clean", "trace": {"bytes": 10}})
    new = runfolder.update_meta(tmp_path, lambda m: {**m, "widened": {"summary": "x"}})
    assert new == {"outcome": "clean", "trace": {"bytes": 10}, "widened": {"summary": "x"}}
    assert json.loads((tmp_path / "meta.json").read_text()) == new
    # Renamed into place: no temporary file left, and a plain file's mode (not mkstemp's 0600).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "meta.json").stat().st_mode) == 0o666 & ~umask


def test_update_meta_never_invents_one(tmp_path):
    assert runfolder.update_meta(tmp_path, lambda m: {**m, "widened": {}}) is None
    assert not (tmp_path / "meta.json").exists()
    (tmp_path / "meta.json").write_text("[1, 2]")  # not an object: left alone
    assert runfolder.update_meta(tmp_path, lambda m: m) is None
    assert (tmp_path / "meta.json").read_text() == "[1, 2]"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    runfolder.write_meta(tmp_path, {"outcome": "clean"})
    with pytest.raises(TypeError):
        runfolder.write_atomically(str(tmp_path / "meta.json"), lambda f: f.write("not bytes"))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "meta.json").read_text()) == {"outcome": "clean"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    with pytest.raises(FlightrecError, match="does not exist"):
        runfolder.write_meta(tmp_path / "missing", {})


def test_a_fifo_or_device_is_written_into_not_replaced(tmp_path):
    # `-o /dev/null` as root once replaced the device with a regular file; a FIFO stands in
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert runfolder.write_atomically(str(fifo), lambda f: f.write(b"abc")) == 3
    reader.join(10)
    assert got == [b"abc"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]  # no temporary file left


def test_a_symbolic_link_is_written_through(tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    runfolder.write_atomically(str(link), lambda f: f.write(b"new"))
    assert link.is_symlink() and real.read_text() == "new"


def test_what_a_new_run_replaces(tmp_path):
    (tmp_path / "logs").mkdir()
    kept = ["notes.txt", "logs/forwarder.log"]
    for name in [*runfolder.VM_OUTPUTS, "vm-console-boot1.log", *kept]:
        (tmp_path / name).write_text("old")
    runfolder.clear(runfolder.replaced_by_record(tmp_path))
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == {"vm.json", "vm-console.log", "vm-output.log", "vm-console-boot1.log", *kept}
    runfolder.clear(runfolder.replaced_by_vm_record(tmp_path))
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == set(kept)


def test_read_back(tmp_path, fixtures):
    with pytest.raises(FlightrecError, match="not a run folder"):
        runfolder.read(tmp_path / "nope")
    empty = runfolder.read(tmp_path)
    assert (empty.trace, empty.meta, empty.analysis, empty.vm) == (None, None, None, None)
    shutil.copyfile(fixtures / "seed-fill-order.txt", tmp_path / "trace.txt")
    runfolder.write_meta(tmp_path, {"outcome": "anomaly"})
    assert runfolder.meta_beside(str(tmp_path / "trace.txt")) == {"outcome": "anomaly"}
    assert runfolder.meta_beside("-") is None
    summary = summarize(tmp_path / "trace.txt", tmp_path)
    assert summary.line == "verdict: kernel (fill_order, descriptor 0x1229100, ingress q:1)"
    assert summary.verdict == "kernel"
    # A recording that ended clean but whose trace holds an anomaly exits 1.
    assert (summary.exit_code(0), summary.exit_code(1), summary.exit_code(2)) == (1, 1, 2)
    back = runfolder.read(tmp_path)
    assert back.trace == tmp_path / "trace.txt" and back.meta == {"outcome": "anomaly"}
    assert back.analysis is not None and back.analysis["verdict"] == "kernel"
    assert back.file(runfolder.REPORT) is not None and back.file(runfolder.PERFETTO) is not None
    # Perfetto's protobuf: a Trace's packets (field 1, length-delimited), the first a track descriptor
    assert (tmp_path / runfolder.PERFETTO).read_bytes()[:1] == b"\x0a"


def test_summarize_never_raises(tmp_path):
    missing = summarize(tmp_path / "missing.txt", tmp_path)
    assert missing.line.startswith("analysis failed: ") and missing.exit_code(0) == 0
    (tmp_path / "trace.txt").write_text("not a trace at all\n")
    line = summarize(tmp_path / "trace.txt", tmp_path).line
    assert line.startswith("analysis failed: ") and "not ftrace text" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.txt"]  # no half summary
