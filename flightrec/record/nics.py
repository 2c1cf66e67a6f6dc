"""The recording's network on a VM's own NICs (`flightrec vm record --nic virtio`).

Four QEMU virtio-net-pci devices, joined in pairs by QEMU hubs inside QEMU
(``-netdev hubport``: no host interface, no tap, no socket, no port)::

    hub 1: client NIC <-> outer NIC        hub 2: inner NIC <-> server NIC

In the guest each NIC is found by its MAC address, moved into its namespace
and renamed (client and server keep the veth topology's addresses), so the
forwarder binds to a real driver's queues instead of veth's. Deleting a
namespace hands a physical NIC back to the guest's root namespace; the VM is
thrown away after the run anyway.

What a zero-copy bind needs from virtio_net (``virtnet_xsk_pool_enable()``
in Linux 7.3, and ``xp_assign_dev()`` before it):

- the DMA API: ``virtqueue_dma_dev()`` is NULL unless the device offers
  VIRTIO_F_ACCESS_PLATFORM (QEMU ``iommu_platform=on``, which QEMU allows
  only on a modern-only device: ``disable-legacy=on``). No vIOMMU is needed:
  on the default ``pc`` machine the DMA API maps 1:1 (measured, QEMU 7.2);
- a queue id below the current queue pairs (``ethtool -L DEV combined N``);
- UMEM headroom for the virtio-net header (XDP_PACKET_HEADROOM, 256 bytes,
  covers its 12);
- the mergeable-buffer mode (a page pool per queue): guest TSO/UFO would
  switch virtio_net to big packets, where XDP and zero-copy are off. A hub
  has no vnet header, so QEMU offers no offloads at all;
- promiscuous mode on the forwarder's two NICs, in copy mode too: QEMU's
  virtio-net drops unicast frames for another MAC (``receive_filter``), and
  every frame the forwarder passes is for the client's or the server's MAC;
- ``NETDEV_XDP_ACT_XSK_ZEROCOPY`` in the device's xdp_features (set by
  virtio_net from Linux 6.13; 6.1's driver has no AF_XDP hooks at all).

QEMU's hub and socket netdevs carry one queue pair each: virtio-net's queue
pairs are its peer's queue count (``virtio_net_device_realize``), and only
tap and vhost-user peers have more. ``mq=on`` is set anyway.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from flightrec.errors import FlightrecError

if TYPE_CHECKING:
    from flightrec.record.topology import Topology

NICS = ("virtio",)
MODES = ("copy", "zerocopy", "auto")
ROLES = ("client", "outer", "inner", "server")
# Locally administered addresses (52:54:00 is QEMU's prefix); the last byte names the role.
MACS = {
    "client": "52:54:00:f1:00:01",
    "outer": "52:54:00:f1:00:02",
    "inner": "52:54:00:f1:00:03",
    "server": "52:54:00:f1:00:04",
}
HUBS = {"client": 1, "outer": 1, "inner": 2, "server": 2}
QUEUE_PAIRS = 1  # what a hubport peer gives a virtio-net device (see the module's notes)
VIRTIO_F_ACCESS_PLATFORM = 33  # bit in /sys/bus/virtio/devices/*/features
SYS_NET = Path("/sys/class/net")


def qemu_devices(iommu_platform: bool = True) -> tuple[str, ...]:
    """The QEMU arguments for the four guest NICs and their two hubs."""
    args: list[str] = []
    for role in ROLES:
        dev = ["virtio-net-pci", f"netdev=fr-{role}", f"mac={MACS[role]}", "mq=on", "vectors=10"]
        if iommu_platform:
            # iommu_platform=on is refused on a transitional device.
            dev += ["iommu_platform=on", "disable-legacy=on"]
        args += ["-netdev", f"hubport,id=fr-{role},hubid={HUBS[role]}", "-device", ",".join(dev)]
    return tuple(args)


@dataclass(frozen=True)
class GuestNic:
    """One NIC as the guest's root namespace sees it, before it is moved."""

    role: str
    name: str  # the kernel's name (eth0...) before the move
    mac: str
    driver: str
    queue_pairs_max: Optional[int]  # ethtool -l: combined, maximum
    queue_pairs: Optional[int]  # current
    access_platform: Optional[bool]  # VIRTIO_F_ACCESS_PLATFORM negotiated; None: not a virtio device

    def as_dict(self) -> dict:
        return asdict(self)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def parse_channels(text: str) -> tuple[Optional[int], Optional[int]]:
    """(maximum, current) combined channels from ``ethtool -l`` output."""
    values: list[Optional[int]] = []
    for line in text.splitlines():
        if line.strip().startswith("Combined:"):
            word = line.split(":", 1)[1].strip()
            values.append(int(word) if word.isdigit() else None)
    return (values[0] if values else None, values[1] if len(values) > 1 else None)


def feature_bit(features: Optional[str], bit: int) -> Optional[bool]:
    """A bit of a virtio device's ``features`` file (one 0/1 character per bit, bit 0 first)."""
    if not features or len(features) <= bit or features.strip("01"):
        return None
    return features[bit] == "1"


def find(role: str, sys_net: Path = SYS_NET) -> Optional[GuestNic]:
    """The NIC with ``role``'s MAC in this namespace, or None."""
    try:
        names = sorted(p.name for p in sys_net.iterdir())
    except OSError:
        return None
    for name in names:
        if (_read(sys_net / name / "address") or "").lower() != MACS[role]:
            continue
        driver = Path(_read_link(sys_net / name / "device" / "driver")).name
        try:
            out = subprocess.run(
                ["ethtool", "-l", name], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        most, now = parse_channels(out)
        access = feature_bit(_read(sys_net / name / "device" / "features"), VIRTIO_F_ACCESS_PLATFORM)
        return GuestNic(role, name, MACS[role], driver, most, now, access)
    return None


def _read_link(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


def zerocopy_problem(nic: GuestNic, queues: int) -> Optional[str]:
    """What keeps ``nic`` from binding ``queues`` zero-copy sockets, from what the guest shows; None
    when nothing visible does (the bind itself has the last word)."""
    if nic.driver == "virtio_net" and nic.access_platform is False:
        return (
            f"{nic.role} NIC {nic.name} (virtio_net) lacks VIRTIO_F_ACCESS_PLATFORM: virtio_net maps "
            "zero-copy buffers only through the DMA API (QEMU: iommu_platform=on,disable-legacy=on)"
        )
    if nic.queue_pairs_max is not None and queues > nic.queue_pairs_max:
        return (
            f"{nic.role} NIC {nic.name} has {nic.queue_pairs_max} queue pair(s), --queues {queues} asks for "
            f"more (QEMU's hubport netdevs give virtio-net {QUEUE_PAIRS}); pass --queues {nic.queue_pairs_max}"
        )
    return None


def run(argv: list[str], what: str) -> None:
    """One set-up command; its failure is one line saying ``what`` failed, the command and its stderr.

    :raises FlightrecError: it could not run, or exited non-zero.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise FlightrecError(f"{what}: `{' '.join(argv)}` failed: {err}") from err
    if proc.returncode != 0:
        raise FlightrecError(f"{what}: `{' '.join(argv)}`: {proc.stderr.strip()}")


def setup(topo: Topology, mode: str, on_netns: Optional[Callable[[str], None]] = None) -> list[GuestNic]:
    """Create the namespaces and move the guest NICs into them (``topo.nic`` is
    "virtio"). Returns what each NIC looked like before the move, for meta.json.

    :raises FlightrecError: a NIC is missing (not in a `vm record --nic virtio` guest), has too
        few queues, or (``mode`` zerocopy) visibly cannot do zero-copy.
    """
    nics = {role: find(role) for role in ROLES}
    missing = [r for r, n in nics.items() if n is None]
    if missing:
        raise FlightrecError(
            f"--nic virtio: no NIC with MAC {', '.join(MACS[r] for r in missing)} here: "
            "the virtio topology runs inside `flightrec vm record --nic virtio`"
        )
    found = [n for n in nics.values() if n is not None]
    for nic in found:
        if nic.queue_pairs_max is not None and topo.queues > nic.queue_pairs_max:
            raise FlightrecError(zerocopy_problem(nic, topo.queues) or "too few queues")
        if mode == "zerocopy" and nic.role in ("outer", "inner"):
            problem = zerocopy_problem(nic, topo.queues)
            if problem:
                raise FlightrecError(f"--mode zerocopy: {problem}")
    for ns in topo.namespaces:
        run(["ip", "netns", "add", ns], "creating network namespaces")
        if on_netns:
            on_netns(ns)
    places = {
        "client": (topo.client_ns, topo.client_dev),
        "outer": (topo.outer_ns, topo.outer_dev),
        "inner": (topo.inner_ns, topo.inner_dev),
        "server": (topo.server_ns, topo.server_dev),
    }
    for nic in found:
        ns, dev = places[nic.role]
        # Queue ids of zero-copy sockets must be below the current queue pairs.
        if nic.queue_pairs is not None and nic.queue_pairs_max and nic.queue_pairs < topo.queues:
            run(["ethtool", "-L", nic.name, "combined", str(topo.queues)], "setting queue pairs")
        run(["ip", "link", "set", "dev", nic.name, "netns", ns], "moving guest NICs into namespaces")
        run(["ip", "-n", ns, "link", "set", "dev", nic.name, "name", dev], "renaming guest NICs")
    for role, addr in (("client", topo.client_addr), ("server", topo.server_addr)):
        ns, dev = places[role]
        run(["ip", "-n", ns, "addr", "add", f"{addr}/{topo.prefix_len}", "dev", dev], "adding addresses")
    for role in ("outer", "inner"):
        # QEMU's virtio-net drops unicast frames for other MACs unless the guest
        # asks for promiscuous mode (receive_filter): the forwarder passes the
        # client's and the server's frames, never addressed to its own NICs.
        ns, dev = places[role]
        run(["ip", "-n", ns, "link", "set", "dev", dev, "promisc", "on"], "setting promiscuous mode")
    for ns, dev in places.values():
        run(["ip", "-n", ns, "link", "set", "dev", dev, "up"], "bringing links up")
        run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"], "bringing lo up")
    return found
