"""`flightrec vm record --nic virtio` in real guests: the forwarder on QEMU virtio-net NICs
joined by QEMU hubs, AF_XDP zero-copy on Debian's 7.3 (read back from the kernel per
socket), copy mode on 6.1, auto taking what each kernel can do, and nothing left behind.
Each test keeps under ~2.5 min (TCG, 2 vCPUs)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from test_vm_record import read_trace, vm_record

from flightrec.errors import FlightrecError
from flightrec.vm import kernel as vmkernel

from vmkit import REPO, assert_nothing_left, flightrec

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _series(series: str, with_vmlinux: bool) -> vmkernel.GuestKernel:
    try:
        k = vmkernel.guest_kernel(series, with_vmlinux=with_vmlinux)
    except FlightrecError as e:
        pytest.skip(f"cannot fetch Debian's {series} kernel: {e}")
    if with_vmlinux and k.vmlinux is None:
        pytest.skip(f"no debug vmlinux for {k.release}")
    return k


@pytest.fixture
def out_dir(artifacts_dir: Path, request) -> Path:
    return artifacts_dir / f"vm-{request.node.name}"


def _af_xdp(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())["af_xdp"]


def test_zerocopy_on_73_reads_back_zerocopy_and_stays_clean(out_dir, tmp_path):
    _series("7.3", with_vmlinux=True)
    tmp = tmp_path / "tmp"
    proc = vm_record(
        out_dir, tmp, "--kernel", "7.3", "--nic", "virtio", "--mode", "zerocopy", "--duration", "10", timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    assert "verdict: clean" in proc.stdout
    assert "(XDP_OPTIONS): zerocopy on outer q:0, inner q:0" in proc.stdout
    assert_nothing_left(tmp, proc.stdout)
    af = _af_xdp(out_dir)
    assert af["nic"] == "virtio" and af["mode_requested"] == "zerocopy" and af["bind"] == "zerocopy"
    assert [s["mode"] for s in af["sockets"]] == ["zerocopy", "zerocopy"]
    for s in af["sockets"]:
        assert s["driver"] == "virtio_net" and s["xdp_attach"] == "native"
    assert all(n["access_platform"] is True and n["driver"] == "virtio_net" for n in af["nics"])
    meta = json.loads((out_dir / "meta.json").read_text())
    rx = meta["forwarder"]["exit_event"]["rx"]
    assert rx[0] > 1000 and rx[1] > 10, rx  # client -> server data, and the ACKs back
    # The kernel's receive path in zero-copy (__xsk_rcv_zc, xsk_flush) and the markers.
    # No tx_get_data: zero-copy TX never copies through xp_raw_get_data.
    counts = Counter(kind for _, _, kind in read_trace(out_dir / "trace.txt"))
    assert counts["reserve"] >= 100 and counts["flush"] >= 10 and counts["marker"] >= 1000, dict(counts)
    vm = json.loads((out_dir / "vm.json").read_text())
    argv = " ".join(vm["guest"]["qemu_argv"])
    assert "iommu_platform=on" in argv and "hubport" in argv and "tap" not in argv


def test_zerocopy_double_fill_on_73_is_caught_and_blamed_on_the_application(out_dir, tmp_path):
    _series("7.3", with_vmlinux=True)
    tmp = tmp_path / "tmp"
    proc = vm_record(
        out_dir,
        tmp,
        "--kernel",
        "7.3",
        "--nic",
        "virtio",
        "--mode",
        "zerocopy",
        "--duration",
        "20",
        "--inject",
        "double-fill",
        "--inject-after",
        "2000",
        timeout=240,
    )
    assert proc.returncode == 1, proc.stderr
    assert "verdict: application" in proc.stdout
    assert_nothing_left(tmp, proc.stdout)
    af = _af_xdp(out_dir)
    assert af["bind"] == "zerocopy"
    # XDP_STATISTICS as read right after the forwarder stopped tracing, per socket.
    assert all("xdp_statistics_at_anomaly" in s for s in af["sockets"])
    analyze = subprocess.run(
        flightrec("analyze", "--json", str(out_dir / "trace.txt")),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    report = json.loads(analyze.stdout)
    first = report["anomalies"][0]
    assert report["verdict"] == "application" and first["verdict"] == "application"
    reserves = [e for e in first["evidence"] if "rx_reserve:" in e["text"]]
    assert reserves and all(re.search(rf"addr={first['addr']}\b", e["text"]) for e in reserves), first["evidence"]


def test_copy_on_virtio_61(out_dir, tmp_path):
    _series("6.1", with_vmlinux=False)
    tmp = tmp_path / "tmp"
    proc = vm_record(
        out_dir,
        tmp,
        "--kernel",
        "6.1",
        "--nic",
        "virtio",
        "--mode",
        "copy",
        "--duration",
        "10",
        "--kernel-events",
        "none",
    )
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(tmp, proc.stdout)
    af = _af_xdp(out_dir)
    assert af["bind"] == "copy" and {s["driver"] for s in af["sockets"]} == {"virtio_net"}
    assert all(n["queue_pairs_max"] == 1 for n in af["nics"])  # what a hubport peer gives


@pytest.mark.parametrize("series, got", [("6.12", "copy"), ("7.3", "zerocopy")])
def test_auto_takes_what_the_kernel_can_do_and_says_so(series, got, out_dir, tmp_path):
    _series(series, with_vmlinux=False)
    tmp = tmp_path / "tmp"
    proc = vm_record(
        out_dir,
        tmp,
        "--kernel",
        series,
        "--nic",
        "virtio",
        "--mode",
        "auto",
        "--duration",
        "8",
        "--kernel-events",
        "none",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    said = "auto took zero-copy" if got == "zerocopy" else "auto fell back to copy"
    assert said in proc.stdout
    assert_nothing_left(tmp, proc.stdout)
    af = _af_xdp(out_dir)
    assert af["mode_requested"] == "auto" and af["bind"] == got
