"""`flightrec analyze` as a user runs it: a real process, real files."""

import json
import subprocess
import sys

import pytest


def run(*args, stdin=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "flightrec", *args], input=stdin, capture_output=True, timeout=timeout)


def test_seed_poison_report_starts_with_the_verdict(fixtures):
    p = run("analyze", str(fixtures / "seed-poison.txt"))
    assert p.returncode == 1
    out = p.stdout.decode()
    assert out.splitlines()[0].endswith("KERNEL — 1 anomaly, first: publish_race at line 6")
    assert "CPU 2 | CPU 0" in out


def test_json_shape(fixtures):
    p = run("analyze", "--json", str(fixtures / "seed-fill-order.txt"))
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    a = doc["anomalies"][0]
    for key in (
        "kind",
        "verdict",
        "addr",
        "expected",
        "xs",
        "queue",
        "reserve_cpu",
        "flush_cpu",
        "evidence",
        "explanation",
    ):
        assert key in a
    assert a["evidence"][0].keys() >= {"line", "text"}
    assert doc["stats"]["lines"] == 25 and doc["stats"]["cpus"] == [1, 2]
    assert set(doc["stats"]["events"]) >= {"reserve", "flush", "tx", "marker"}
    assert doc["window"]["start"] < doc["window"]["end"]


def test_several_traces_and_stdin(fixtures, tmp_path):
    clean = tmp_path / "clean.txt"
    clean.write_text("  fwd-1 [000] ..... 1.000000: tracing_mark_write: outer q:0 0x1000 FREE -> FILL\n")
    p = run("analyze", "--json", str(clean), str(fixtures / "seed-poison.txt"))
    doc = json.loads(p.stdout)
    assert p.returncode == 1
    assert doc["summary"] == {"traces": 2, "clean": 1, "with_anomalies": 1, "unreadable": 0, "verdicts": {"kernel": 1}}
    p = run("analyze", "-", stdin=clean.read_bytes())
    assert p.returncode == 0 and "CLEAN" in p.stdout.decode()


def test_descriptor_life(fixtures):
    p = run("analyze", "--descriptor", "0x16ce900", str(fixtures / "seed-fill-order.txt"))
    out = p.stdout.decode()
    assert "life of 0x16ce900 (7 events)" in out
    assert "COMP -> FILL" in out and "tx 0x16ce900" in out


BAD = {
    "empty": b"",
    "binary": bytes(range(256)) * 64,
    "invalid_utf8": b"\xff\xfe\xfa not utf8 \xc3\x28\n" * 10,
    "prose": b"Dear reader,\nthis is not a trace.\n",
    "megabyte_line": b"x" * (4 << 20) + b"\n",
    "header_only": b"# tracer: nop\n#\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(BAD[name])
    p = run("analyze", str(f))
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("flightrec: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("source", ["/dev/zero", "-"])
def test_endless_binary_input_is_refused_at_once(source):
    """/dev/zero as a file or through a pipe: refused from its first bytes, not read until memory runs out."""
    if source == "-":
        with open("/dev/zero", "rb") as zero:
            p = subprocess.run(
                [sys.executable, "-m", "flightrec", "analyze", "-"], stdin=zero, capture_output=True, timeout=60
            )
    else:
        p = run("analyze", source)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        f"flightrec: {'<stdin>' if source == '-' else source}: binary data (a NUL byte at offset 0), not ftrace "
        "text; give the text of /sys/kernel/tracing/trace or of `trace-cmd report`"
    ]


def test_missing_path_and_directory(tmp_path):
    for target, words in ((tmp_path / "nope.txt", "no such file"), (tmp_path, "is a directory")):
        p = run("analyze", str(target))
        assert p.returncode == 2 and words in p.stderr.decode()


def test_file_cut_in_the_middle_of_a_line(fixtures, tmp_path):
    text = (fixtures / "seed-poison.txt").read_bytes()
    cut = text[: text.rindex(b"0xdeadbeef") + 6]  # the detection line loses its tail
    f = tmp_path / "cut.txt"
    f.write_bytes(cut)
    p = run("analyze", "--json", str(f))
    doc = json.loads(p.stdout)
    assert p.returncode == 0  # a correct partial analysis: the cut line is dropped, not misread
    assert doc["stats"]["cut_last_line"] is True
    assert doc["stats"]["events"]["total"] == 5


def test_usage_errors_exit_2(fixtures):
    assert run("analyze").returncode == 2
    p = run("analyze", "--descriptor", "zz", str(fixtures / "seed-poison.txt"))
    assert p.returncode == 2 and "not a hex address" in p.stderr.decode()


def test_every_command_help_ends_with_examples():
    import click

    from flightrec.cli.main import COMMANDS, cli

    names = [None, *sorted(COMMANDS)]
    for name in names:
        args = ["--help"] if name is None else [name, "--help"]
        p = run(*args)
        assert p.returncode == 0
        out = p.stdout.decode()
        assert "Examples:" in out, f"{name or 'flightrec'} --help has no examples"
        sub = cli.get_command(click.Context(cli), name) if name else None
        if sub is not None and hasattr(sub, "commands"):
            for child in sub.commands:
                q = run(name, child, "--help")
                assert "Examples:" in q.stdout.decode(), f"{name} {child} --help has no examples"


def test_a_widened_run_says_so_in_every_report(fixtures, tmp_path):
    """A race-window widener is a fault amplifier: the verdict must carry that."""
    (tmp_path / "trace.txt").write_bytes((fixtures / "seed-poison.txt").read_bytes())
    summary = "race windows WIDENED (fault amplifier): flush side 10 ms busy-wait"
    (tmp_path / "meta.json").write_text(json.dumps({"widened": {"summary": summary}}))
    trace = str(tmp_path / "trace.txt")
    assert summary in run("analyze", trace).stdout.decode()
    assert json.loads(run("analyze", "--json", trace).stdout)["widened"] == summary
    assert run("report", trace, "-o", str(tmp_path / "r.html")).returncode == 0
    assert summary in (tmp_path / "r.html").read_text()
    # and a plain run's report does not
    (tmp_path / "meta.json").write_text("{}")
    assert "WIDENED" not in run("analyze", trace).stdout.decode()


@pytest.mark.parametrize(
    "args", [["analyze", "--json"], ["analyze"], ["report", "-o", "-"], ["export", "perfetto", "-o", "-"]]
)
def test_full_standard_output_is_one_line_and_exit_2(fixtures, args):
    """A full disk under standard output: one line, and not `analyze`'s exit 1 ("anomaly")."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "flightrec", *args, str(fixtures / "seed-poison.txt")],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == ["flightrec: writing standard output: No space left on device"]


def test_overrun_trace_reports_each_cpus_history_and_the_claims(fixtures):
    p = run("analyze", str(fixtures / "seed-poison-overrun.txt"))
    assert p.returncode == 1
    out = p.stdout.decode()
    assert out.splitlines()[0].endswith("KERNEL — 1 anomaly, first: publish_race at line 18")
    assert (
        "history: buffers overran; each CPU's history begins at its first event: CPU 0 from 609766.698512 "
        "(line 13), CPU 2 from 609766.698523 (line 14)" in out
    )
    assert "CPU 2: no kernel events missing from 609766.698523 to 609766.698528" in out
    doc = json.loads(run("analyze", "--json", str(fixtures / "seed-poison-overrun.txt")).stdout)
    assert [(c["cpu"], c["from"]) for c in doc["history"]["cpus"]] == [(0, 609766.698512), (2, 609766.698523)]
    assert doc["anomalies"][0]["claims"]


def test_a_meta_json_with_a_bad_kernel_end_is_one_line_and_exit_2(fixtures, tmp_path):
    (tmp_path / "trace.txt").write_bytes((fixtures / "seed-poison.txt").read_bytes())
    (tmp_path / "meta.json").write_text(json.dumps({"kernel_events": {"ended_at": "later"}}))
    p = run("analyze", str(tmp_path / "trace.txt"))
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        f"flightrec: {tmp_path / 'meta.json'}: kernel_events.ended_at is 'later', not seconds on the trace's clock"
    ]


def test_the_kernel_end_from_meta_json_shows_in_the_report(fixtures, tmp_path):
    (tmp_path / "trace.txt").write_bytes((fixtures / "seed-poison.txt").read_bytes())
    (tmp_path / "meta.json").write_text(json.dumps({"kernel_events": {"ended_at": 609766.698560}}))
    p = run("analyze", str(tmp_path / "trace.txt"))
    assert p.returncode == 1
    assert "kernel events end at 609766.698560: the kernel-event source stopped then" in p.stdout.decode()


def test_json_is_the_same_on_the_c_and_python_parsers(fixtures, tmp_path):
    """`analyze --json` byte for byte, the C scanner against FLIGHTREC_PURE_PYTHON, on the
    fixtures (per-descriptor lines) and on simulated traces of batched lines."""
    import os

    from flightrec.parse import scan

    if not scan.available():
        pytest.skip("flightrec/_scan.so is not built: run `make`")
    traces = sorted(fixtures.glob("*.txt"))
    for fault in ("double-fill", "publish-race"):
        sim = tmp_path / f"{fault}-batched.txt"
        assert (
            run(
                "simulate",
                "--fault",
                fault,
                "--markers",
                "batched",
                "--packets",
                "400",
                "-o",
                str(sim),
                "--truth",
                str(tmp_path / "truth.json"),
            ).returncode
            == 0
        )
        traces.append(sim)
    for trace in traces:
        fast = subprocess.run(
            [sys.executable, "-m", "flightrec", "analyze", "--json", str(trace)], capture_output=True, timeout=60
        )
        env = {**os.environ, "FLIGHTREC_PURE_PYTHON": "1"}
        slow = subprocess.run(
            [sys.executable, "-m", "flightrec", "analyze", "--json", str(trace)],
            capture_output=True,
            timeout=60,
            env=env,
        )
        # every fixture but the clean TX-heavy one holds an anomaly
        assert fast.returncode == slow.returncode == (0 if "clean" in trace.name else 1), trace
        assert fast.stdout == slow.stdout, trace


def test_export_turns_numpys_huge_page_hint_off_and_back():
    from numpy._core import multiarray

    from flightrec.cli.options import small_pages

    before = multiarray._set_madvise_hugepage(True)
    try:
        with small_pages():
            assert multiarray._set_madvise_hugepage(False) is False  # off inside (it returns the old value)
        assert multiarray._set_madvise_hugepage(True) is True  # as it was after
    finally:
        multiarray._set_madvise_hugepage(before)
