"""Helpers for the VM tests: run flightrec in a private TMPDIR, check nothing is left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]


def skip_unless_vm() -> None:
    """Skip with the reason when no VM can run here."""
    from flightrec.errors import FlightrecError
    from flightrec.vm.kernel import find_busybox
    from flightrec.vm.qemu import tools_missing

    why = tools_missing()
    if why:
        pytest.skip(why)
    try:
        find_busybox()
    except FlightrecError as e:
        pytest.skip(str(e))


def built_kernels(*names: str) -> dict:
    """The project's kernels ``names`` (flightrec/vm/build.py), built on first use
    (a source tree's first build: ~15-20 min on 2 cores; then cached); skips with
    the reason when they cannot be built here."""
    from flightrec.errors import FlightrecError
    from flightrec.vm import build

    why = build.build_missing()
    if why:
        pytest.skip(why)
    try:
        return {name: build.ensure_kernel(name, print, jobs=2) for name in names}
    except FlightrecError as e:
        pytest.skip(f"cannot build the guest kernels: {e}")


def flightrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "flightrec", *args]


def vm_env(tmp: Path) -> dict:
    """A private TMPDIR: the scratch folder, sockets and QEMU's argv all name it."""
    tmp.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp))


def processes_naming(text: str) -> list[str]:
    """Live processes whose command line contains ``text`` (QEMU, virtiofsd of one run)."""
    found = []
    needle = text.encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd:
            shown = cmd.replace(b"\0", b" ").decode(errors="replace")[:120]
            found.append(f"{d.name}: {shown}")
    return found


def host_netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def guest_netns(output: str) -> set[str]:
    """The namespaces the guest's recording said it created (they live in the guest kernel)."""
    names: set[str] = set()
    for m in re.finditer(r"creating namespaces (.*)", output):
        names |= {n.strip() for n in m.group(1).split(",")}
    return names


def assert_nothing_left(tmp: Path, output: str = "") -> None:
    """No QEMU or virtiofsd of this run, no scratch folder; none of the guest's namespaces on the host."""
    deadline = time.monotonic() + 5
    while processes_naming(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(str(tmp)) == []
    assert [p.name for p in tmp.iterdir()] == []
    assert guest_netns(output) & host_netns() == set()


def _default_sigint() -> None:
    # Tests run from a script's background job inherit SIGINT ignored, and
    # flightrec keeps an ignored SIGINT ignored: give it a terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until(argv: list[str], env: dict, pattern: str, timeout: float) -> tuple[subprocess.Popen, str]:
    """Start ``argv`` in its own session (SIGINT at its default), read its output until ``pattern`` appears."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return proc, "".join(seen)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError(f"{pattern!r} never appeared in:\n{''.join(seen)}")


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The rest of ``proc``'s output once it exits; if it does not within
    ``timeout``, its whole session is killed (nothing of a failed test keeps
    running) and the test fails with what it printed."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest = proc.communicate()[0]
        raise AssertionError(f"still running after {timeout:g} s; killed. Its output:\n{rest}") from None


def last_line(text: str) -> Optional[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None
