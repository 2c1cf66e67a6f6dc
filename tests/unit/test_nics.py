"""The virtio topology's parts that need no VM: QEMU arguments, what the guest's
sysfs and ethtool say, what a zero-copy bind needs, and the per-socket summary
of meta.json (flightrec/record/nics.py, flightrec/record/afxdp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.record import afxdp, nics, topology

ETHTOOL_L = """Channel parameters for eth1:
Pre-set maximums:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	4
Current hardware settings:
RX:		n/a
TX:		n/a
Other:		n/a
Combined:	1
"""
# /sys/class/net/eth1/device/features of a QEMU 7.2 virtio-net-pci with iommu_platform=on,
# as read in a 7.3 guest: bit 32 VERSION_1, bit 33 ACCESS_PLATFORM.
FEATURES = "0010010000000001111101110000110011000000100000000000000000000000" + "0" * 64


def test_qemu_devices_pair_client_with_outer_and_inner_with_server_on_hubs():
    args = nics.qemu_devices()
    netdevs = [args[i + 1] for i, a in enumerate(args) if a == "-netdev"]
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert netdevs == [
        "hubport,id=fr-client,hubid=1",
        "hubport,id=fr-outer,hubid=1",
        "hubport,id=fr-inner,hubid=2",
        "hubport,id=fr-server,hubid=2",
    ]
    for role, dev in zip(nics.ROLES, devices):
        fields = dev.split(",")
        assert fields[0] == "virtio-net-pci" and f"netdev=fr-{role}" in fields and f"mac={nics.MACS[role]}" in fields
        # QEMU refuses iommu_platform=on on a transitional device.
        assert {"iommu_platform=on", "disable-legacy=on", "mq=on"} <= set(fields)
    assert not any("tap" in a or "socket" in a or "user" in a for a in args)  # no host network
    assert "iommu_platform=on" not in " ".join(nics.qemu_devices(iommu_platform=False))


def test_channels_and_feature_bits_are_read_as_the_guest_prints_them():
    assert nics.parse_channels(ETHTOOL_L) == (4, 1)
    assert nics.parse_channels("no channels here") == (None, None)
    assert nics.feature_bit(FEATURES, nics.VIRTIO_F_ACCESS_PLATFORM) is True
    assert nics.feature_bit(FEATURES, 34) is False
    assert nics.feature_bit("01", 33) is None and nics.feature_bit("xyz" * 20, 1) is None


def _sysfs(root: Path, name: str, mac: str, features: str) -> None:
    dev = root / name
    (dev / "device").mkdir(parents=True)
    (dev / "address").write_text(mac + "\n")
    (dev / "device" / "features").write_text(features + "\n")
    drivers = root / "drivers" / "virtio_net"
    drivers.mkdir(parents=True, exist_ok=True)
    (dev / "device" / "driver").symlink_to(drivers)


def test_find_knows_a_nic_by_its_mac(tmp_path):
    _sysfs(tmp_path, "eth7", nics.MACS["inner"], FEATURES)
    _sysfs(tmp_path, "eth8", "52:54:00:12:34:56", FEATURES)
    nic = nics.find("inner", tmp_path)
    assert nic is not None and nic.name == "eth7" and nic.driver == "virtio_net" and nic.access_platform is True
    assert nics.find("outer", tmp_path) is None


@pytest.mark.parametrize(
    "nic, problem",
    [
        (nics.GuestNic("outer", "eth1", nics.MACS["outer"], "virtio_net", 1, 1, False), "VIRTIO_F_ACCESS_PLATFORM"),
        (nics.GuestNic("inner", "eth2", nics.MACS["inner"], "virtio_net", 1, 1, True), None),
    ],
)
def test_zerocopy_problem_names_the_missing_dma_api(nic, problem):
    found = nics.zerocopy_problem(nic, 1)
    assert (found is None) if problem is None else (problem in found and "iommu_platform=on" in found)


def test_zerocopy_problem_names_too_few_queue_pairs():
    nic = nics.GuestNic("outer", "eth1", nics.MACS["outer"], "virtio_net", 1, 1, True)
    assert "--queues 1" in nics.zerocopy_problem(nic, 2)


def test_virtio_topology_names_and_refuses_unknown_nics():
    topo = topology.make_topology("7", 1, "virtio")
    assert (topo.client_dev, topo.outer_dev, topo.inner_dev, topo.server_dev) == ("nic-c", "outer", "inner", "nic-s")
    assert topo.as_dict()["nic"] == "virtio" and topology.make_topology("7", 2).as_dict()["nic"] == "veth"
    with pytest.raises(FlightrecError, match="--nic must be one of veth, virtio"):
        topology.make_topology("7", 1, "tap")


def test_virtio_setup_outside_a_vm_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(nics, "SYS_NET", tmp_path)  # no NIC of ours here
    with pytest.raises(FlightrecError, match="runs inside `flightrec vm record --nic virtio`"):
        nics.setup(topology.make_topology("7", 1, "virtio"), "copy")


READY = {
    "event": "ready",
    "bind": "zerocopy",
    "need_wakeup": True,
    "sockets": [
        {
            "sock": "outer q:0",
            "ifname": "outer",
            "ifindex": 3,
            "driver": "virtio_net",
            "queue": 0,
            "mode": "zerocopy",
            "mode_requested": "auto",
            "xdp_attach": "native",
            "ring_sizes": {"rx": 8192, "tx": 8192, "fill": 8192, "comp": 8192},
        },
        {
            "sock": "inner q:0",
            "ifname": "inner",
            "ifindex": 4,
            "driver": "virtio_net",
            "queue": 0,
            "mode": "zerocopy",
            "mode_requested": "auto",
            "xdp_attach": "native",
            "ring_sizes": {"rx": 8192, "tx": 8192, "fill": 8192, "comp": 8192},
        },
    ],
}
STATS = {
    "ports": [
        {"sock": "outer q:0", "rx": 5, "xdp_statistics": dict.fromkeys(afxdp.STAT_KEYS, 0)},
        {
            "sock": "inner q:0",
            "rx": 7,
            "xdp_statistics": {**dict.fromkeys(afxdp.STAT_KEYS, 0), "rx_ring_full": 3},
            "xdp_statistics_at_anomaly": {**dict.fromkeys(afxdp.STAT_KEYS, 0), "rx_ring_full": 2},
        },
    ]
}


def test_summary_joins_ready_facts_and_kernel_counters_per_socket():
    s = afxdp.summary("auto", "virtio", READY, STATS)
    assert s["bind"] == "zerocopy" and s["mode_requested"] == "auto" and s["need_wakeup"] is True
    outer, inner = s["sockets"]
    assert outer["driver"] == "virtio_net" and outer["mode"] == "zerocopy" and outer["xdp_attach"] == "native"
    assert outer["ring_sizes"]["fill"] == 8192 and "xdp_statistics_at_anomaly" not in outer
    assert inner["xdp_statistics"]["rx_ring_full"] == 3 and inner["xdp_statistics_at_anomaly"]["rx_ring_full"] == 2
    assert "rx" not in inner  # the forwarder's own counters stay in its section


def test_describe_says_what_auto_took():
    assert "auto took zero-copy" in afxdp.describe("auto", READY)
    copied = {"sockets": [{**s, "mode": "copy"} for s in READY["sockets"]]}
    assert "fell back to copy" in afxdp.describe("auto", copied)
    mixed = {"sockets": [READY["sockets"][0], {**READY["sockets"][1], "mode": "copy"}]}
    assert afxdp.bind_summary(afxdp.sockets(mixed, None)) == "mixed"
    assert "unknown" in afxdp.describe("copy", None)
