"""AF_XDP bind modes on this host's veth: what each socket got, read back from the
kernel, and zero-copy refused at once with one line. Real namespaces, veth, XDP
and AF_XDP; the machine is checked unchanged afterwards (``machine``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from flightrec.record import afxdp, forwarder

from recordkit import REPO, flightrec, run

pytestmark = [pytest.mark.kernel]

NS = "flightrec-modes-test"


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


@pytest.fixture
def veths(machine):
    """Two fresh veth pairs in one scratch namespace (outer o0, inner i0); removed after."""
    _sh("ip", "netns", "del", NS)
    assert _sh("ip", "netns", "add", NS).returncode == 0
    try:
        for a, b in (("o0", "o1"), ("i0", "i1")):
            assert _sh("ip", "-n", NS, "link", "add", a, "type", "veth", "peer", "name", b).returncode == 0
            for dev in (a, b):
                _sh("ip", "-n", NS, "link", "set", dev, "up")
        yield f"/run/netns/{NS}"
    finally:
        _sh("ip", "netns", "del", NS)


def _forwarder(ns: str, mode: str, stats: Path) -> subprocess.CompletedProcess:
    return _sh(
        str(forwarder.forwarder_path()),
        "--outer",
        f"{ns}:o0",
        "--inner",
        f"{ns}:i0",
        "--mode",
        mode,
        "--no-markers",
        "--duration",
        "0.3",
        "--frames",
        "256",
        "--batch",
        "16",
        "--stats",
        str(stats),
    )


@pytest.mark.parametrize("mode", ["copy", "auto"])
def test_each_socket_says_the_mode_the_kernel_gave(veths, tmp_path, mode):
    stats = tmp_path / "stats.json"
    proc = _forwarder(veths, mode, stats)
    assert proc.returncode == 0, proc.stderr
    ready = json.loads(proc.stdout.splitlines()[0])
    assert ready["event"] == "ready" and ready["bind"] == "copy" and ready["mode_requested"] == mode
    assert ready["need_wakeup"] is (mode != "copy")
    socks = ready["sockets"]
    assert [s["sock"] for s in socks] == ["outer q:0", "inner q:0"]
    for s in socks:
        assert s["driver"] == "veth" and s["mode"] == "copy" and s["queue"] == 0
        assert s["xdp_attach"] in ("native", "generic") and s["ifname"] in ("o0", "i0")
        assert set(s["ring_sizes"]) == {"rx", "tx", "fill", "comp"} and s["ring_sizes"]["fill"] >= 128
    final = json.loads(stats.read_text())
    assert final["bind"] == "copy" and final["mode_requested"] == mode
    for port in final["ports"]:
        assert port["mode"] == "copy" and set(port["xdp_statistics"]) == set(afxdp.STAT_KEYS)
        assert "xdp_statistics_at_anomaly" not in port  # no anomaly, no snapshot
    assert "auto fell back to copy" in afxdp.describe(mode, ready) or mode == "copy"


def test_zerocopy_on_veth_is_refused_with_one_line(veths, tmp_path):
    proc = _forwarder(veths, "zerocopy", tmp_path / "stats.json")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refused XDP_ZEROCOPY" in lines[0] and "driver veth" in lines[0] and "Operation not supported" in lines[0]


def test_bad_mode_is_one_line_exit_2():
    proc = _sh(str(forwarder.forwarder_path()), "--outer", "-:a", "--inner", "-:b", "--mode", "fast")
    assert proc.returncode == 2 and proc.stderr.strip() == "forwarder: --mode wants copy, zerocopy or auto, got 'fast'"
    proc = _sh(str(forwarder.forwarder_path()), "--outer", "-:a", "--inner", "-:b", "--mode", "zerocopy", "--skb-mode")
    assert proc.returncode == 2 and "needs native XDP" in proc.stderr


def test_record_zerocopy_on_veth_exits_2_and_leaves_nothing(machine, tmp_path):
    out = tmp_path / "zc"
    t = time.monotonic()
    proc = run("record", "-o", str(out), "--duration", "5", "--plain", "--mode", "zerocopy", timeout=90)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "refused XDP_ZEROCOPY" in err[0] and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - t < 60
    # ``machine`` checks that namespaces, links and the tracefs instance are gone.


def test_record_auto_on_veth_says_copy_in_meta(machine, tmp_path):
    out = tmp_path / "auto"
    proc = run("record", "-o", str(out), "--duration", "3", "--plain", "--mode", "auto", timeout=90)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "auto fell back to copy" in proc.stdout
    m = json.loads((out / "meta.json").read_text())["af_xdp"]
    assert m["mode_requested"] == "auto" and m["bind"] == "copy" and m["nic"] == "veth"
    assert len(m["sockets"]) == 4 and {s["mode"] for s in m["sockets"]} == {"copy"}
    assert all(set(s["xdp_statistics"]) == set(afxdp.STAT_KEYS) for s in m["sockets"])
    html = subprocess.run(
        flightrec("report", str(out / "trace.txt"), "-o", "-"), capture_output=True, text=True, cwd=REPO, timeout=120
    ).stdout
    assert html.count('data-mode="copy"') == 4 and 'id="sockets"' in html


def test_doctor_says_which_modes(machine):
    proc = run("doctor", timeout=60)
    lines = {ln.split()[0] + " " + ln.split()[1]: ln for ln in proc.stdout.splitlines() if ln.startswith("XDP ")}
    assert "XDP copy" in lines and " ok " in lines["XDP copy"] and "veth binds in copy mode" in lines["XDP copy"]
    assert "XDP zero-copy" in lines and "missing (optional)" in lines["XDP zero-copy"]
    assert "refused XDP_ZEROCOPY" in lines["XDP zero-copy"]
    assert any(ln.startswith("VM zero-copy") for ln in proc.stdout.splitlines())
