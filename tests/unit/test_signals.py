"""The signal handlers of `record` and `vm record`: a stop request must get out of
whatever code the main thread is in, library code with ``except Exception`` too.

The landing CI of 14299ae lost a SIGTERM this way: the guest's recording kept
forwarding for 120 s after the host asked it to stop. click.echo() calls
isatty() inside ``try: ... except Exception`` on every line it prints, and the
handler's exception was raised right there.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import click
import pytest

from flightrec.record import session
from flightrec.vm import runner


@pytest.fixture(autouse=True)
def default_dispositions():
    """signals_raise leaves an ignored signal ignored (nohup, a script's `&`): these tests
    need the signals as a terminal or a CI runner sends them, with their default action."""
    old = {s: signal.signal(s, signal.SIG_DFL) for s in session.HANDLED_SIGNALS}
    yield
    for s, h in old.items():
        signal.signal(s, h)


@pytest.fixture(params=["record", "vm"])
def raising(request):
    """signals_raise of `record` or of `vm record`, with its Interrupted class."""
    if request.param == "record":
        return session.signals_raise, session.Interrupted
    return runner._signals_raise, runner.Interrupted


def test_except_exception_does_not_swallow_the_stop(raising):
    signals_raise, interrupted = raising
    with pytest.raises(interrupted) as caught, signals_raise():
        try:
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the try
        except Exception:  # noqa: BLE001 - what library code does
            pytest.fail("the handler's exception was caught as an Exception")
    assert caught.value.signum == signal.SIGTERM


def test_a_signal_from_another_thread_stops_a_main_thread_that_echoes(raising):
    """The guest's stop watcher sends the signal from its own thread while the main
    thread prints its progress lines: 300 tries, every one must get out."""
    signals_raise, interrupted = raising
    sink = io.StringIO()
    stopped = 0

    def send(delay: float) -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGTERM)

    for i in range(300):
        sender = threading.Thread(target=send, args=(0.001 + i % 7 * 0.0003,))
        with signals_raise():
            try:
                sender.start()
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    click.echo("forwarding 12.0/600s rx=[1, 2] tx=[2, 1]", file=sink)
            except interrupted:
                stopped += 1
            finally:
                sender.join()
        sink.seek(0)
        sink.truncate()
    assert stopped == 300


def test_teardown_notes_the_signal_instead_of_raising():
    with session.signals_raise() as mode:
        mode.append("teardown")
        signal.raise_signal(signal.SIGHUP)
    assert mode == ["teardown", signal.SIGHUP]
