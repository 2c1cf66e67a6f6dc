"""The marker library: <flightrec/xsk_markers.h> and flightrec.markers write the
same lines into a real tracefs instance, stop tracing on the first anomaly, and
what they write analyzes as the application's story.

The C side is tests/unit/marker_script.c, built here against the header that
`flightrec markers --cflags` names; the Python side runs the same script
through flightrec.markers. Both get their own instance.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flightrec import markers as pymarkers
from flightrec.tracefs import TraceInstance

from recordkit import build_with_markers, run

DRIVER = Path(__file__).resolve().parent.parent / "unit" / "marker_script.c"
F = 4096  # frame size of the scripts; addresses are frame + 256, as RX gives them back


def a(frame: int) -> str:
    return hex(frame * F + 256)


# Two sockets of one UMEM: frames 0-3 go into socket 0's FILL, come back from
# its RX, go to socket 1's TX, complete, and return to socket 0's FILL.
CLEAN = [
    "sock outer 0 0",
    "sock inner 0 0",
    *(f"fill 0 {a(i)} FREE" for i in range(4)),
    "flush 0",
    *(f"rx 0 {a(i)}" for i in range(3)),
    *(f"tx 1 {a(i)} RX" for i in range(3)),
    "flush 0",
    "flush 1",
    *(f"comp 1 {a(i)}" for i in range(2)),
    "flush 1",
    *(f"fill 0 {a(i)} COMP" for i in range(2)),
    "flush 0",
    f"rx 0 {a(3)}",
    f"release 0 {a(3)} RX",
    "flush 0",
]
EXPECT_CLEAN = [
    f"outer q:0 FREE -> FILL {a(0)} {a(1)} {a(2)} {a(3)}",
    f"outer q:0 FILL -> RX {a(0)} {a(1)} {a(2)}",
    f"inner q:0 RX -> TX {a(0)} {a(1)} {a(2)}",
    f"inner q:0 TX -> COMP {a(0)} {a(1)}",
    f"outer q:0 COMP -> FILL {a(0)} {a(1)}",
    f"outer q:0 FILL -> RX {a(3)} RX -> FREE {a(3)}",
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    """marker_script built as a user's program would be: with `flightrec markers --cflags`."""
    return build_with_markers(DRIVER, tmp_path_factory.mktemp("markers") / "marker_script")


def run_c(driver: Path, script: list[str], per_descriptor: bool = False) -> tuple[list[str], list[str], bool]:
    """(marker lines, return codes, tracing still on) of the script through the C header."""
    with TraceInstance() as inst:
        inst.start()
        args = [str(driver), str(inst.path), "64"] + (["per-descriptor"] if per_descriptor else [])
        proc = subprocess.run(args, input="\n".join(script) + "\n", capture_output=True, text=True, check=True)
        return list(inst.marker_lines()), proc.stdout.split(), inst.tracing_on


def run_py(script: list[str], per_descriptor: bool = False) -> tuple[list[str], list[str], bool]:
    """The same through flightrec.markers."""
    with TraceInstance() as inst:
        inst.start()
        codes = []
        with pymarkers.Markers.open(str(inst.path), batched=not per_descriptor) as m:
            states, socks = pymarkers.States(64), []
            for line in script:
                cmd, *args = line.split()
                if cmd == "sock":
                    socks.append(pymarkers.Sock(m, args[0], int(args[1]), states, F, 64, zerocopy=args[2] == "1"))
                    codes.append("0")
                    continue
                sock, addr = socks[int(args[0])], int(args[1], 0) if len(args) > 1 else 0
                if cmd == "flush":
                    sock.flush()
                    ok = True
                elif cmd in ("fill", "tx", "release"):
                    ok = getattr(sock, cmd)(addr, args[2])
                else:
                    ok = getattr(sock, cmd)(addr)
                codes.append("0" if ok else "-1")
        return list(inst.marker_lines()), codes, inst.tracing_on


def test_c_and_python_write_the_same_batched_lines_and_leave_tracing_on(machine, driver):
    c_lines, c_codes, c_on = run_c(driver, CLEAN)
    py_lines, py_codes, py_on = run_py(CLEAN)
    assert c_lines == EXPECT_CLEAN, c_lines
    assert py_lines == c_lines and py_codes == c_codes == ["0"] * len(CLEAN)
    assert c_on and py_on


def test_per_descriptor_lines_are_one_transition_each(machine, driver):
    c_lines, _, _ = run_c(driver, CLEAN, per_descriptor=True)
    py_lines, _, _ = run_py(CLEAN, per_descriptor=True)
    assert c_lines == py_lines and len(c_lines) == 4 + 3 + 3 + 2 + 2 + 1 + 1
    assert c_lines[0] == f"outer q:0 {a(0)} FREE -> FILL" and c_lines[-1] == f"outer q:0 {a(3)} RX -> FREE"


@pytest.mark.parametrize(
    "script, detection",
    [
        # the same frame into FILL twice: the state machine's catch
        (
            ["sock outer 0 0", f"fill 0 {a(0)} FREE", f"fill 0 {a(1)} FREE", f"fill 0 {a(0)} FREE"],
            f"outer q:0 {a(0)} FREE -> FILL: invalid, was FILL",
        ),
        # RX out of FILL order (copy mode): the deque's catch, with what was left
        (
            ["sock outer 0 0", *(f"fill 0 {a(i)} FREE" for i in range(3)), "flush 0", f"rx 0 {a(1)}"],
            f"outer q:0 {a(1)} FILL -> RX: expected {a(0)} remaining: [{a(1)[2:]}, {a(2)[2:]}]",
        ),
        # the poison read back in zero-copy (no FILL order there)
        (
            ["sock outer 0 1", f"fill 0 {a(0)} FREE", "flush 0", "rx 0 0xdeadbeefdeadbeef"],
            "outer q:0 0xdeadbeefdeadbeef FILL -> RX: poison",
        ),
    ],
)
def test_the_first_anomaly_is_the_last_line_and_stops_tracing(machine, driver, script, detection):
    for lines, codes, on in (run_c(driver, script), run_py(script)):
        assert lines[-1] == detection, lines
        assert codes[-1] == "-1" and not on


def test_what_the_library_wrote_analyzes_as_the_application_s(machine, driver, tmp_path):
    """A double fill in the library's lines, saved from the instance: the analyzer says application."""
    script = [
        "sock outer 0 0",
        "sock inner 0 0",
        *(f"fill 0 {a(i)} FREE" for i in range(3)),
        "flush 0",
        f"rx 0 {a(0)}",
        f"tx 1 {a(0)} RX",
        "flush 0",
        "flush 1",
        f"fill 0 {a(0)} RX",
    ]
    with TraceInstance() as inst:
        inst.start()
        subprocess.run(
            [str(driver), str(inst.path), "64"],
            input="\n".join(script) + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        inst.save_trace(tmp_path / "trace.txt")
    proc = run("analyze", str(tmp_path / "trace.txt"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the frame was still in TX when it went into FILL: one buffer in two rings
    assert "APPLICATION — 1 anomaly, first: duplicate_insertion" in proc.stdout, proc.stdout
