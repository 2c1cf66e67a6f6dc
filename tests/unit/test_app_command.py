"""record --app's command line: placeholders, environment, refusals; and what a
trace without markers leaves unchecked."""

from __future__ import annotations

import subprocess

import pytest

from flightrec.checks.coverage import NEED_MARKERS, not_run
from flightrec.errors import FlightrecError
from flightrec.record.app import PLACEHOLDERS, check_command, environment, expand
from flightrec.record.session import RecordOptions

VALUES = {
    "outer": "outer",
    "inner": "inner",
    "queues": "2",
    "marker": "/sys/kernel/tracing/instances/f-1/trace_marker",
    "tracedir": "/sys/kernel/tracing/instances/f-1",
    "out": "/tmp/run 1",
    "netns": "flightrec-1-fwd",
    "forwarder": "/opt/flightrec/bin/forwarder",
}


def test_placeholders_are_filled_word_by_word_after_shell_splitting():
    argv = expand("./fwd -i {outer} -o {inner} -q {queues} --log '{out}/fwd.log' --marker={marker}", VALUES)
    assert argv == [
        "./fwd",
        "-i",
        "outer",
        "-o",
        "inner",
        "-q",
        "2",
        "--log",
        "/tmp/run 1/fwd.log",
        "--marker=/sys/kernel/tracing/instances/f-1/trace_marker",
    ]


def test_other_braces_are_left_alone():
    assert expand("awk '{print $1}' {unknown}", VALUES) == ["awk", "{print $1}", "{unknown}"]


def test_the_environment_carries_the_same_names():
    env = environment(VALUES)
    assert {k: env[f"FLIGHTREC_{k.upper()}"] for k in PLACEHOLDERS} == VALUES
    assert "PATH" in env


@pytest.mark.parametrize(
    "command,said",
    [
        ("", "the command is empty"),
        ("  ", "the command is empty"),
        ("x 'y", "cannot split the command"),
        ("/no/such/prog {outer}", "/no/such/prog: no such program"),
    ],
)
def test_bad_commands_are_refused(command, said):
    with pytest.raises(FlightrecError, match=said):
        check_command(command)


def test_a_program_on_path_is_accepted():
    check_command("sleep {queues}")


def test_without_markers_every_check_that_follows_descriptors_is_named():
    names = [n.check for n in not_run(0)]
    assert names == [name for name, _ in NEED_MARKERS] and "publish_race" in names
    assert all(n.why.startswith("the application wrote no markers; ") for n in not_run(0))
    assert not_run(1) == []


@pytest.mark.parametrize(
    "extra,said",
    [
        ({"inject": "double-fill"}, "with --app the program is yours"),
        ({"tx_twins": True}, "give it to {forwarder} yourself"),
    ],
)
def test_forwarder_only_options_are_refused_with_app(extra, said):
    with pytest.raises(FlightrecError, match=said):
        RecordOptions(app="sleep {queues}", **extra).check()


def test_ready_waits_until_the_second_interface_is_set_up_too(monkeypatch, tmp_path):
    """A program attaches and binds one interface, then the other: ready is the whole set-up."""
    from flightrec.record import app as appmod

    # Two polls each: nothing; inner only with its socket; then both, for good.
    stages = [{}, {"inner": "xdp"}, {"inner": "xdp", "outer": "xdp"}]
    polls = []

    def attached(_ns: str, dev: str):
        if dev == "outer":  # asked first in every poll
            polls.append(1)
        return stages[min((len(polls) - 1) // 2, 2)].get(dev)

    def sockets(_self):
        n = len(stages[min((len(polls) - 1) // 2, 2)])
        return [appmod.XskSocket(4242, 3 + i, "copy", {}) for i in range(n)]

    monkeypatch.setattr(appmod, "_xdp_attached", attached)
    monkeypatch.setattr(appmod.App, "sockets", sockets)
    monkeypatch.setattr(appmod, "SETTLE_S", 0.3)
    app = appmod.App("sleep 30", {}, "ns", ("outer", "inner"), tmp_path)
    app.proc = subprocess.Popen(["sleep", "30"])
    try:
        app.wait_ready(timeout=10)
    finally:
        app.proc.kill()
        app.proc.wait()
    assert app.ready is not None
    assert app.ready["xdp"] == {"outer": "xdp", "inner": "xdp"}
    assert [s["fd"] for s in app.ready["sockets"]] == [3, 4]
    assert len(polls) >= 6  # it saw the half set-up and went on looking
