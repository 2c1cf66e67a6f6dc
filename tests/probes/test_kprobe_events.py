"""Installing and removing flightrec's kprobes in a real tracefs instance.

Needs root and tracefs. On a kernel without kprobe events (CONFIG_KPROBE_EVENTS
unset) the install must not raise: one problem line per probe, nothing
installed. Where kprobes exist and the running kernel's debug vmlinux is
installed, the probes go in for real and come out again.
"""

import os

import pytest

from flightrec import probes
from flightrec.probes.kprobe_events import group_events

pytestmark = pytest.mark.kernel
TRACEFS = probes.TRACEFS


@pytest.fixture
def instance():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a tracefs instance")
    if not (TRACEFS / "instances").is_dir():
        pytest.skip(f"tracefs not mounted at {TRACEFS} (mount -t tracefs nodev {TRACEFS})")
    path = TRACEFS / "instances" / f"flightrec-probetest-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def test_without_kprobes_install_reports_each_probe_and_goes_on(instance):
    why = probes.kprobes_unavailable_reason(TRACEFS)
    if why is None:
        pytest.skip("this kernel has kprobe events; see test_install_and_remove_for_real")
    assert not (TRACEFS / "kprobe_events").exists()
    assert "CONFIG_KPROBE_EVENTS" in why and "flightrec vm record" in why
    done = probes.install(instance)
    assert done["events"] == []
    assert len(done["problems"]) == len(probes.load_specs())
    assert all(p.startswith("probe ") and why in p and "\n" not in p for p in done["problems"])
    assert probes.remove(done) == []


def test_install_and_remove_for_real(instance):
    why = probes.kprobes_unavailable_reason(TRACEFS)
    if why:
        pytest.skip(f"cannot install kprobes here: {why}")
    if probes.find_vmlinux() is None:
        pytest.skip(f"no debug vmlinux for {os.uname().release}: apt-get install linux-image-$(uname -r)-dbg")
    assert group_events(TRACEFS) == [], "flightrec probes already installed: run `flightrec probes remove`"
    done = probes.install(instance)
    try:
        assert done["problems"] == [], done["problems"]
        assert "rx_reserve" in done["events"] and "flush" in done["events"]
        assert sorted(group_events(TRACEFS)) == sorted(done["events"])
        for event in done["events"]:
            assert (instance / "events" / "flightrec" / event / "enable").read_text().strip() == "1"
        fmt = (instance / "events" / "flightrec" / "rx_reserve" / "format").read_text()
        for field in ("addr", "len", "xs", "fq", "dev"):
            assert f" {field};" in fmt
    finally:
        assert probes.remove(done) == []
    assert group_events(TRACEFS) == []
