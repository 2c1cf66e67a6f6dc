"""Zero-copy on the host side of `vm record`, no guest booted: which Debian kernels'
virtio_net can do it (read from the real modules), and the options that go to the
guest. Skips where the kernels are not cached and apt cannot fetch them."""

from __future__ import annotations

import subprocess
import time

import pytest

from flightrec.cli.record import parse_record_args
from flightrec.errors import FlightrecError
from flightrec.vm import kernel as vmkernel
from flightrec.vm.record import VM_STAMP_RATE, nic_record_args
from flightrec.vm.zerocopy import VIRTIO_XSK_SYMBOL, VIRTIO_XSK_TX_SYMBOL, module_path, module_symbols, zerocopy_missing

from vmkit import REPO, flightrec, processes_naming


def _kernel(series: str) -> vmkernel.GuestKernel:
    try:
        return vmkernel.guest_kernel(series, with_vmlinux=False)
    except FlightrecError as e:
        pytest.skip(f"cannot fetch Debian's {series} kernel: {e}")


@pytest.mark.parametrize("series, rx, tx", [("6.1", False, False), ("6.12", True, False), ("7.3", True, True)])
def test_virtio_net_zerocopy_hooks_by_series(series, rx, tx):
    """6.1 has no AF_XDP in virtio_net, 6.12 the RX half (and its bind fails: no
    NETDEV_XDP_ACT_XSK_ZEROCOPY), 7.3 the whole of it (measured in guests)."""
    k = _kernel(series)
    assert k.modules_dir is not None
    path = module_path(k.modules_dir, "virtio_net")
    assert path is not None and path.is_file()
    symbols = module_symbols(path)
    assert (VIRTIO_XSK_SYMBOL in symbols, VIRTIO_XSK_TX_SYMBOL in symbols) == (rx, tx)
    missing = zerocopy_missing(k, "virtio")
    assert (missing is None) == (rx and tx)
    if missing:
        assert k.release in missing and "6.13" in missing
    assert "veth has no AF_XDP zero-copy" in zerocopy_missing(k, "veth")


def test_nic_args_for_the_guest():
    rate = ["--stamp-rate", str(VM_STAMP_RATE)]
    assert nic_record_args("virtio", "zerocopy", parse_record_args([])) == [
        "--nic",
        "virtio",
        "--mode",
        "zerocopy",
        "--queues",
        "1",
        *rate,
    ]
    assert nic_record_args("virtio", "copy", parse_record_args(["--queues", "1"])) == [
        "--nic",
        "virtio",
        "--mode",
        "copy",
        *rate,
    ]
    assert nic_record_args("veth", "auto", parse_record_args(["--queues", "4", "--stamp-rate", "500"])) == [
        "--nic",
        "veth",
        "--mode",
        "auto",
    ]
    with pytest.raises(FlightrecError, match="pass --queues 1"):
        nic_record_args("virtio", "copy", parse_record_args(["--queues", "2"]))
    with pytest.raises(FlightrecError, match="give --nic and --mode to `flightrec vm record` itself"):
        nic_record_args("veth", "copy", parse_record_args(["--mode", "auto"]))


def test_zerocopy_on_61_exits_2_with_one_line_before_booting(tmp_path):
    _kernel("6.1")
    t = time.monotonic()
    proc = subprocess.run(
        flightrec(
            "vm", "record", "--kernel", "6.1", "--nic", "virtio", "--mode", "zerocopy", "-o", str(tmp_path / "out")
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**__import__("os").environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flightrec: --mode zerocopy: virtio_net of kernel 6.1"), proc.stderr
    assert "Traceback" not in proc.stderr and "boot:" not in proc.stdout
    assert time.monotonic() - t < 60
    assert processes_naming(str(tmp_path)) == []
    assert not (tmp_path / "out" / "trace.txt").exists()
