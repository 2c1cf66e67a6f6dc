"""What this machine can do for flightrec: every capability probed, each with its fix.

``can_run`` is the short answer ``record`` needs before it starts (the first
reason it cannot, or None); ``probe_all`` is the long one ``flightrec doctor``
prints, one :class:`Capability` per line. The CLI only prints.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from flightrec import locate, tracefs
from flightrec.record import afxdp, forwarder, kernel_events
from flightrec.record.traffic import stamp_path


def can_run() -> Optional[str]:
    """Why ``flightrec record`` cannot run on this machine (with the fix), or None."""
    if os.geteuid() != 0:
        return "must run as root (namespaces, XDP and tracefs need it); try sudo"
    if tracefs.find_root() is None and not tracefs.TRACEFS_CANDIDATES[0].is_dir():
        return "no tracefs (kernel without CONFIG_TRACING?); /sys/kernel/tracing does not exist"
    missing = forwarder.forwarder_missing()
    if missing:
        return missing
    if not os.access(stamp_path(), os.X_OK):
        return f"{stamp_path()} (the stamped traffic) not built; {locate.build_fix('c/stamp')}"
    for tool, package in (("ip", "iproute2"), ("ethtool", "ethtool"), ("iperf3", "iperf3"), ("ss", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found; apt-get install {package}"
    why = af_xdp_unavailable()
    if why:
        return why
    return None


def af_xdp_unavailable() -> Optional[str]:
    """Open and close an AF_XDP socket: the one honest test that the kernel has XSKs."""
    try:
        socket.socket(afxdp.AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as err:
        return f"no AF_XDP sockets ({err.strerror}); the kernel needs CONFIG_XDP_SOCKETS=y"
    return None


@dataclass(frozen=True)
class Capability:
    """One thing this machine can or cannot do for flightrec, with its fix."""

    name: str
    required: bool  # record cannot run without it
    ok: bool
    detail: str
    fix: str = ""


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def check_root() -> Capability:
    ok = os.geteuid() == 0
    return Capability("root", True, ok, "running as root" if ok else f"uid {os.geteuid()}", "run as root (sudo)")


def check_tracefs() -> Capability:
    root = tracefs.find_root()
    if root is not None:
        return Capability("tracefs", True, True, f"mounted at {root}, instances supported")
    can = tracefs.TRACEFS_CANDIDATES[0].is_dir()
    return Capability(
        "tracefs",
        True,
        can,
        "not mounted (record mounts it)" if can else "no /sys/kernel/tracing",
        "mount -t tracefs nodev /sys/kernel/tracing" if can else "a kernel with CONFIG_TRACING=y",
    )


def check_kprobes() -> Capability:
    root = tracefs.find_root() or tracefs.TRACEFS_CANDIDATES[0]
    why = kernel_events.kprobes_unavailable(root)
    return Capability(
        "kprobes",
        False,
        why is None,
        "kprobe events available" if why is None else why,
        "a kernel with CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y, or `flightrec vm record`; record "
        "uses the BPF tracepoint backend meanwhile where it loads",
    )


def check_bpf_events() -> Capability:
    root = tracefs.find_root() or tracefs.TRACEFS_CANDIDATES[0]
    why = kernel_events.bpf_unavailable(root)
    return Capability(
        "bpf events",
        False,
        why is None,
        "BTF tracepoint programs load and attach (kernel events without kprobes)" if why is None else why,
        (locate.build_fix("c/xsk_trace") + "; and " if "not built" in (why or "") else "")
        + "a kernel with BTF that allows tp_btf programs",
    )


def check_btf() -> Capability:
    path = Path("/sys/kernel/btf/vmlinux")
    ok = path.exists()
    return Capability(
        "BTF",
        False,
        ok,
        f"{path} present" if ok else f"no {path}",
        "a kernel with CONFIG_DEBUG_INFO_BTF=y (needed for tp_btf kernel events)",
    )


def check_af_xdp() -> Capability:
    why = af_xdp_unavailable()
    return Capability(
        "AF_XDP", True, why is None, "AF_XDP sockets open" if why is None else why, "a kernel with CONFIG_XDP_SOCKETS=y"
    )


def check_netns_veth() -> list[Capability]:
    """Create a namespace and a multi-queue veth pair in it, then delete both."""
    if os.geteuid() != 0:
        return [
            Capability("netns", True, False, "needs root to test", "run as root"),
            Capability("veth", True, False, "needs root to test", "run as root"),
        ]
    name = f"flightrec-doctor-{os.getpid()}"
    made = _run(["ip", "netns", "add", name])
    if made.returncode != 0:
        return [
            Capability(
                "netns",
                True,
                False,
                made.stderr.strip() or "ip netns add failed",
                "apt-get install iproute2; a kernel with CONFIG_NET_NS=y",
            ),
            Capability("veth", True, False, "not tested (no netns)", ""),
        ]
    try:
        veth = _run(
            [
                "ip",
                "-n",
                name,
                "link",
                "add",
                "name",
                "fr-a",
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "type",
                "veth",
                "peer",
                "name",
                "fr-b",
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
            ]
        )
        ok = veth.returncode == 0
        return [
            Capability("netns", True, True, "network namespaces work"),
            Capability(
                "veth",
                True,
                ok,
                "multi-queue veth pairs work" if ok else veth.stderr.strip(),
                "a kernel with CONFIG_VETH (modprobe veth)",
            ),
        ]
    finally:
        _run(["ip", "netns", "delete", name])


def check_bpffs() -> Capability:
    mounted = False
    try:
        mounted = any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in open("/proc/mounts"))
    except OSError:
        pass
    return Capability(
        "bpffs",
        False,
        mounted,
        "mounted at /sys/fs/bpf" if mounted else "not mounted (record does not need it; bpftool pins do)",
        "mount -t bpf bpf /sys/fs/bpf",
    )


def check_tool(name: str, package: str, required: bool, why: str) -> Capability:
    path = shutil.which(name)
    return Capability(name, required, path is not None, path or f"not found ({why})", f"apt-get install {package}")


def check_libxdp() -> Capability:
    ok = _run(["pkg-config", "--exists", "libxdp", "libbpf"]).returncode == 0 if shutil.which("pkg-config") else False
    return Capability(
        "libxdp",
        False,
        ok,
        "libxdp and libbpf headers found" if ok else "libxdp-dev/libbpf-dev missing",
        "apt-get install libxdp-dev libbpf-dev pkg-config (needed to build the forwarder and loaders)",
    )


def check_forwarder() -> Capability:
    why = forwarder.forwarder_missing()
    path = forwarder.forwarder_path()
    detail = str(path) if why is None else f"not built ({path} missing)" if not path.exists() else why
    return Capability("forwarder", True, why is None, detail, locate.build_fix("the forwarder and the BPF loaders"))


def check_native() -> Capability:
    """The analyzer's C scanner and replay walk, the trips' walk and the exports' row printer (flightrec/_*.c)."""
    from flightrec import bulk
    from flightrec.model import replay_native, trips
    from flightrec.parse import scan

    if os.environ.get("FLIGHTREC_PURE_PYTHON"):
        return Capability(
            "C helpers",
            False,
            False,
            "switched off by FLIGHTREC_PURE_PYTHON (analyze and export run several times slower)",
            "unset FLIGHTREC_PURE_PYTHON",
        )
    helpers = (
        ("_scan", scan.available()),
        ("_replay", replay_native.available()),
        ("_trips", trips.available()),
        ("_bulk", bulk.available()),
    )
    missing = [name for name, ok in helpers if not ok]
    if not missing:
        return Capability(
            "C helpers",
            False,
            True,
            "analyzer scanner, replay walk, trips walk and export printer in use ("
            + ", ".join(str(locate.native_library(n)) for n, _ in helpers)
            + ")",
        )
    return Capability(
        "C helpers",
        False,
        False,
        f"{', '.join(missing)} not built or not loadable (analyze and export run several times slower)",
        locate.build_fix("the C helpers", "gcc"),
    )


def check_afxdp_modes() -> list[Capability]:
    """Bind the forwarder on scratch veths in copy and in zero-copy mode: which this host can do."""
    from flightrec.errors import FlightrecError
    from flightrec.record import afxdp

    if os.geteuid() != 0:
        return [Capability("AF_XDP modes", False, False, "needs root to test", "run as root")]
    try:
        probes = {p.asked: p for p in afxdp.probe_veth_modes(("copy", "zerocopy"))}
    except FlightrecError as e:
        return [Capability("AF_XDP modes", False, False, f"not tested: {e}", "")]
    copy, zc = probes["copy"], probes["zerocopy"]
    return [
        Capability(
            "XDP copy",
            False,
            copy.mode == "copy",
            f"veth binds in copy mode, XDP {copy.xdp_attach} (what `record` uses)"
            if copy.mode == "copy"
            else f"veth copy bind failed: {copy.error}",
            "see the line above; a kernel with CONFIG_XDP_SOCKETS",
        ),
        Capability(
            "XDP zero-copy",
            False,
            zc.mode == "zerocopy",
            "veth binds zero-copy"
            if zc.mode == "zerocopy"
            else f"not on veth here ({zc.error}); `record --mode auto` says copy",
            "a driver with AF_XDP zero-copy: `flightrec vm record --kernel 7.3 --nic virtio --mode zerocopy`",
        ),
    ]


def check_vm_zerocopy() -> Capability:
    """Which cached VM kernels can bind zero-copy on the guest's virtio-net NICs (no boot, no apt)."""
    from flightrec.vm.zerocopy import cached_kernels, zerocopy_missing

    kernels = cached_kernels()
    if not kernels:
        return Capability(
            "VM zero-copy",
            False,
            False,
            "no VM kernel cached yet",
            "flightrec vm record --kernel 7.3 --nic virtio --mode zerocopy (fetches it)",
        )
    said = []
    for k in kernels:
        why = zerocopy_missing(k, "virtio")
        said.append(
            f"{k.release} "
            + (
                "zero-copy and copy"
                if why is None
                else "copy only" + (" (virtio_net has the RX half)" if "RX only" in why else "")
            )
        )
    ok = any(zerocopy_missing(k, "virtio") is None for k in kernels)
    return Capability(
        "VM zero-copy",
        False,
        ok,
        "virtio-net in `vm record --nic virtio`: " + "; ".join(said),
        "flightrec vm record --kernel 7.3 --nic virtio --mode zerocopy (fetches Debian's 7.3)",
    )


# In the order `flightrec doctor` prints them; a probe may say one thing or several.
PROBES: list[Callable[[], object]] = [
    check_root,
    check_tracefs,
    check_kprobes,
    check_bpf_events,
    check_btf,
    check_af_xdp,
    check_netns_veth,
    check_afxdp_modes,
    check_vm_zerocopy,
    check_bpffs,
    lambda: check_tool("perf", "linux-perf", False, "used to resolve probe sites"),
    lambda: check_tool("clang", "clang", False, "needed to build the forwarder and the BPF programs"),
    check_libxdp,
    check_forwarder,
    check_native,
    lambda: check_tool("iperf3", "iperf3", True, "drives traffic"),
    lambda: check_tool("ethtool", "ethtool", True, "turns veth offloads off"),
]


def probe_all() -> list[Capability]:
    """Every capability, probed now (the AF_XDP modes and netns ones create and remove scratch veths as root)."""
    out: list[Capability] = []
    for fn in PROBES:
        result = fn()
        out.extend(result if isinstance(result, list) else [result])  # type: ignore[arg-type]
    return out
