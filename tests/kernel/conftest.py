import shutil
import subprocess
from pathlib import Path

import pytest

from recordkit import (
    REPO,
    build_with_markers,
    everything,
    left_behind,
    skip_unless_can_record,
    snapshot,
    stop_strays,
)


@pytest.fixture
def machine():
    """Skip unless recording is possible; assert the machine is unchanged afterwards."""
    skip_unless_can_record()
    before = snapshot()
    yield before
    stop_strays()
    assert snapshot() == before


@pytest.fixture
def whole_machine():
    """Skip unless recording is possible; nothing at all changed afterwards (BPF, printk, /run too)."""
    skip_unless_can_record()
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (apt-get install bpftool)")
    before = everything()
    assert before["helper_processes"] == [], "a recording's helpers run already"
    yield before
    stop_strays()
    assert left_behind(before) == []


@pytest.fixture(autouse=True)
def no_stray_recording():
    """A test that fails halfway may leave its flightrec running: stop it (it
    cleans up after itself on SIGINT) before the next test finds it recording."""
    yield
    stop_strays()


@pytest.fixture(scope="session")
def xsk_fwd(tmp_path_factory) -> Path:
    """examples/xsk_fwd built as a user would build it: `flightrec markers --cflags`, libxdp."""
    libs = subprocess.run(["pkg-config", "--libs", "libxdp", "libbpf"], capture_output=True, text=True)
    if libs.returncode != 0:
        pytest.skip("libxdp-dev and libbpf-dev are not installed (make setup installs them)")
    exe = tmp_path_factory.mktemp("example") / "xsk_fwd"
    return build_with_markers(REPO / "examples" / "xsk_fwd" / "xsk_fwd.c", exe, *libs.stdout.split())
