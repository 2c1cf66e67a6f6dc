"""The recording's network: four namespaces joined by two multi-queue veth pairs
(or, inside `flightrec vm record --nic virtio`, by the VM's own virtio-net NICs:
flightrec/record/nics.py).

    client ns            fwd-outer ns     fwd-inner ns          server ns
    veth-c 10.199.0.1 <-> outer           inner <-> veth-s 10.199.0.2
                           \\___ forwarder (AF_XDP) ___/

As in the post, the forwarder's two interfaces ("outer" and "inner") each live
in their own namespace; the client and the server are one L2 segment joined
only through the forwarder. Every link is created inside a namespace, never in
the root one, so deleting the namespaces removes every link and XDP program.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from flightrec.errors import FlightrecError
from flightrec.record import nics, state

SUBNET = "10.199.0"
CLIENT_ADDR = f"{SUBNET}.1"
SERVER_ADDR = f"{SUBNET}.2"
OUTER_INDEX = 11
INNER_INDEX = 21
NIC_KINDS = ("veth", *nics.NICS)


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one recording's network."""

    tag: str
    queues: int
    client_ns: str
    outer_ns: str
    inner_ns: str
    server_ns: str
    client_dev: str = "veth-c"
    outer_dev: str = "outer"
    inner_dev: str = "inner"
    server_dev: str = "veth-s"
    client_addr: str = CLIENT_ADDR
    server_addr: str = SERVER_ADDR
    prefix_len: int = 24
    nic: str = "veth"  # or "virtio": the VM's NICs (nics.py)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Each namespace once (``record --app`` puts outer and inner in one)."""
        return tuple(dict.fromkeys((self.client_ns, self.outer_ns, self.inner_ns, self.server_ns)))

    def netns_path(self, name: str) -> Path:
        return state.NETNS_DIR / name

    @property
    def outer_spec(self) -> str:
        """The forwarder's ``--outer NETNS:IFNAME``."""
        return f"{self.netns_path(self.outer_ns)}:{self.outer_dev}"

    @property
    def inner_spec(self) -> str:
        return f"{self.netns_path(self.inner_ns)}:{self.inner_dev}"

    def as_dict(self) -> dict:
        if self.nic != "veth":
            how = "QEMU hubport pairs between guest virtio-net-pci NICs"
            return {
                "nic": self.nic,
                "queues": self.queues,
                "namespaces": {
                    "client": self.client_ns,
                    "fwd_outer": self.outer_ns,
                    "fwd_inner": self.inner_ns,
                    "server": self.server_ns,
                },
                "links": [
                    {"a": f"{self.client_ns}:{self.client_dev}", "b": f"{self.outer_ns}:{self.outer_dev}", "by": how},
                    {"a": f"{self.server_ns}:{self.server_dev}", "b": f"{self.inner_ns}:{self.inner_dev}", "by": how},
                ],
                "addresses": {
                    "client": f"{self.client_addr}/{self.prefix_len}",
                    "server": f"{self.server_addr}/{self.prefix_len}",
                },
                # A hub peer has no vnet header: QEMU offers the NICs no checksum or TSO offload.
                "offloads_off": "none offered by QEMU",
            }
        return {
            "nic": self.nic,
            "queues": self.queues,
            "namespaces": {
                "client": self.client_ns,
                "fwd_outer": self.outer_ns,
                "fwd_inner": self.inner_ns,
                "server": self.server_ns,
            },
            "links": [
                {"a": f"{self.client_ns}:{self.client_dev}", "b": f"{self.outer_ns}:{self.outer_dev}"},
                {"a": f"{self.server_ns}:{self.server_dev}", "b": f"{self.inner_ns}:{self.inner_dev}"},
            ],
            "addresses": {
                "client": f"{self.client_addr}/{self.prefix_len}",
                "server": f"{self.server_addr}/{self.prefix_len}",
            },
            "offloads_off": {self.client_dev: ["tx", "tso"], self.server_dev: ["tx", "tso"]},
        }


def make_topology(tag: str, queues: int, nic: str = "veth", one_fwd_ns: bool = False) -> Topology:
    """Names for a recording tagged ``tag`` (flightrec uses its pid).

    ``one_fwd_ns``: outer and inner in one namespace, ``<base>-fwd``, as an
    unmodified program that takes two interface names expects (record --app).
    """
    if queues < 1 or queues > 64:
        raise FlightrecError(f"--queues must be between 1 and 64, got {queues}")
    if nic not in NIC_KINDS:
        raise FlightrecError(f"--nic must be one of {', '.join(NIC_KINDS)}, got {nic!r}")
    base = f"flightrec-{tag}"
    devs = {} if nic == "veth" else {"client_dev": "nic-c", "server_dev": "nic-s"}
    outer, inner = (f"{base}-fwd", f"{base}-fwd") if one_fwd_ns else (f"{base}-outer", f"{base}-inner")
    return Topology(
        tag=tag,
        queues=queues,
        client_ns=f"{base}-client",
        outer_ns=outer,
        inner_ns=inner,
        server_ns=f"{base}-server",
        nic=nic,
        **devs,
    )


def _ip(args: list[str], what: str) -> None:
    nics.run(["ip", *args], what)


def _in_ns(ns: str, cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise FlightrecError(f"{what}: {err}") from err
    if proc.returncode != 0:
        raise FlightrecError(f"{what}: `{' '.join(cmd)}` in {ns}: {proc.stderr.strip()}")


def setup(topo: Topology, on_netns: Optional[Callable[[str], None]] = None, mode: str = "copy") -> list[dict]:
    """Create the namespaces, veth pairs (or move the VM's NICs: nics.py),
    addresses and offload settings. Returns, for the VM's NICs, what each
    looked like before it was moved (none for veth).

    ``on_netns`` is called with each namespace name right after it exists, so
    the caller can register it for cleanup before anything can fail.
    ``mode`` is the AF_XDP mode asked for: zerocopy refuses NICs that visibly
    cannot do it before anything is made.

    :raises FlightrecError: a step failed (the caller tears down what exists).
    """
    if topo.nic != "veth":
        return [n.as_dict() for n in nics.setup(topo, mode, on_netns)]
    _setup_veth(topo, on_netns)
    return []


def _setup_veth(topo: Topology, on_netns: Optional[Callable[[str], None]]) -> None:
    for ns in topo.namespaces:
        _ip(["netns", "add", ns], "creating network namespaces")
        if on_netns:
            on_netns(ns)
    q = str(topo.queues)
    # One veth per side, created inside the namespaces: `peer ... netns` puts
    # the other end straight into the forwarder's namespace. Explicit ifindexes:
    # alone in their namespaces, outer and inner would both get index 2, and
    # the forwarder's shared UMEM needs the two devices told apart by index.
    for ns, dev, index, peer_ns, peer, peer_index in (
        (topo.client_ns, topo.client_dev, 10, topo.outer_ns, topo.outer_dev, OUTER_INDEX),
        (topo.server_ns, topo.server_dev, 20, topo.inner_ns, topo.inner_dev, INNER_INDEX),
    ):
        _ip(
            [
                "-n",
                ns,
                "link",
                "add",
                "name",
                dev,
                "index",
                str(index),
                "numtxqueues",
                q,
                "numrxqueues",
                q,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                peer_ns,
                "index",
                str(peer_index),
                "numtxqueues",
                q,
                "numrxqueues",
                q,
            ],
            "creating veth pairs (is the veth module available?)",
        )
    for ns, dev, addr in (
        (topo.client_ns, topo.client_dev, topo.client_addr),
        (topo.server_ns, topo.server_dev, topo.server_addr),
    ):
        _ip(["-n", ns, "addr", "add", f"{addr}/{topo.prefix_len}", "dev", dev], "adding addresses")
        # With TX checksum offload on, veth hands the packet on with the
        # checksum left unfinished (CHECKSUM_PARTIAL); the forwarder copies the
        # raw bytes, so forwarded UDP would arrive with bad checksums.
        _in_ns(ns, ["ethtool", "-K", dev, "tx", "off", "tso", "off"], "turning offloads off")
    for ns, dev in (
        (topo.client_ns, topo.client_dev),
        (topo.outer_ns, topo.outer_dev),
        (topo.inner_ns, topo.inner_dev),
        (topo.server_ns, topo.server_dev),
    ):
        _ip(["-n", ns, "link", "set", "dev", dev, "up"], "bringing links up")
        _ip(["-n", ns, "link", "set", "dev", "lo", "up"], "bringing lo up")


def teardown(topo: Topology) -> list[str]:
    """Delete the namespaces (killing their processes); return what remains."""
    return [ns for ns in topo.namespaces if not state.delete_netns(ns)]
