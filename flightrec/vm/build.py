"""The project's own guest kernels, built once from Debian's 6.1 source and cached.

    kernel = ensure_kernel("veth-race", say)    # BuiltKernel: bzimage, vmlinux, release
    kernel = built_kernel("veth-fixed")         # the cached one, or None (never builds)

Two kernels, one build tree (``/var/cache/flightrec/kernels/src/linux-source-6.1``):

- ``veth-fixed``: Debian's ``linux-source-6.1`` as it is. It carries upstream
  fa349e396e48 ("veth: Fix race with AF_XDP exposing old or uninitialized
  descriptors"): ``veth_poll()`` calls ``xdp_do_flush()`` before
  ``napi_complete_done()``.
- ``veth-race``: the same with ``flightrec/vm/kernels/veth-race.patch``, the project's own
  revert of that fix (the flush after the napi-complete block again).

The configuration is ``make defconfig``, ``make kvm_guest.config`` and
``flightrec/vm/kernels/flightrec.config`` (virtio, virtiofs, overlay, veth, BPF, AF_XDP,
kprobes, DWARF for the probes resolver), everything built in. The first build
takes about 15 minutes on two cores; the second kernel only recompiles
``drivers/net/veth.c`` and relinks. Each kernel's ``bzImage``, ``vmlinux`` and
``release`` are copied to ``build-<name>/`` beside the tree, with a stamp of
what went into them: a changed patch, fragment or source rebuilds; nothing
else does. ``release`` follows ``scripts/fetch-debug-kernel.sh``'s layout, so
``flightrec.probes.find_vmlinux`` finds the vmlinux inside the guest too.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from flightrec import locate
from flightrec.errors import FlightrecError

if TYPE_CHECKING:
    from flightrec.vm.kernel import GuestKernel

CACHE = Path(os.environ.get("FLIGHTREC_KERNEL_CACHE", "/var/cache/flightrec/kernels"))
KERNELS_DIR = locate.VM_KERNELS_DIR  # package data: the config fragment and veth patches
FRAGMENT = KERNELS_DIR / "flightrec.config"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = f"{SOURCE_PACKAGE}.tar.xz"
VETH = "drivers/net/veth.c"
# name -> the patches applied to veth.c (relative to KERNELS_DIR)
KERNELS: dict[str, tuple[str, ...]] = {"veth-fixed": (), "veth-race": ("veth-race.patch",)}
NAMES = tuple(KERNELS)
TOOLS = ("make", "gcc", "bc", "bison", "flex", "pahole", "patch", "xz")
PACKAGES = "build-essential bc bison flex libssl-dev libelf-dev dwarves patch xz-utils"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuiltKernel:
    """A kernel in the cache: what the VM boots and what the probes resolver reads."""

    name: str
    release: str  # `uname -r` in the guest, e.g. 6.1.192-flightrec-veth-race
    bzimage: Path
    vmlinux: Path  # with DWARF and BTF
    source: str  # Debian's source package version, e.g. 6.1.192-2
    patches: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "release": self.release,
            "bzimage": str(self.bzimage),
            "vmlinux": str(self.vmlinux),
            "source": f"{SOURCE_PACKAGE} {self.source}",
            "patches": list(self.patches),
        }


def _check_name(name: str) -> None:
    if name not in KERNELS:
        raise FlightrecError(f"unknown kernel {name!r}: the project builds {', '.join(NAMES)}")


def out_dir(name: str, cache: Path = CACHE) -> Path:
    return cache / f"build-{name}"


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        except OSError as e:
            raise FlightrecError(f"{p}: {e.strerror}") from None
    return h.hexdigest()[:16]


def _inputs(name: str) -> dict:
    """What a cached kernel must have been built from to be reused."""
    patches = [KERNELS_DIR / p for p in KERNELS[name]]
    return {
        "fragment": _digest([FRAGMENT]),
        "patches": _digest(patches) if patches else "",
        "source": _source_version(),
    }


def _source_version() -> str:
    """The linux-source-6.1 version apt would give (installed, else the candidate)."""
    for cmd in (["dpkg-query", "-W", "-f", "${Version}", SOURCE_PACKAGE], ["apt-cache", "policy", SOURCE_PACKAGE]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode != 0 or not proc.stdout.strip():
            continue
        if cmd[0] == "dpkg-query":
            return proc.stdout.strip()
        m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
        if m and m.group(1) != "(none)":
            return m.group(1)
    raise FlightrecError(f"apt knows no {SOURCE_PACKAGE} (run apt-get update; this needs Debian 12's lists)")


def built_kernel(name: str, cache: Path = CACHE) -> Optional[BuiltKernel]:
    """The cached kernel ``name`` if it was built from today's patch, fragment and source."""
    _check_name(name)
    d = out_dir(name, cache)
    try:
        stamp = json.loads((d / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((d / f).is_file() for f in ("bzImage", "vmlinux", "release")):
        return None
    try:
        if stamp.get("inputs") != _inputs(name):
            return None
    except FlightrecError:
        return None
    return BuiltKernel(
        name, stamp["release"], d / "bzImage", d / "vmlinux", stamp["inputs"]["source"], tuple(KERNELS[name])
    )


def build_missing() -> Optional[str]:
    """Why a kernel cannot be built here (a tool missing), or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"building a kernel needs {', '.join(missing)}: apt-get install {PACKAGES}"
    return None


def ensure_kernel(
    name: str, progress: Progress = _quiet, jobs: Optional[int] = None, cache: Path = CACHE
) -> BuiltKernel:
    """The kernel ``name``, built first if the cache has no current one.

    :raises FlightrecError: unknown name, tools or source missing, the build failed
        (the last lines of build-<name>/build.log in the message).
    """
    _check_name(name)
    found = built_kernel(name, cache)
    if found is not None:
        return found
    why = build_missing()
    if why:
        raise FlightrecError(why)
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time: two flightrec runs must not write into one tree.
    with open(cache / "build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("kernel: another flightrec is building in the same tree; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        found = built_kernel(name, cache)
        if found is not None:
            return found
        return _build(name, progress, jobs or os.cpu_count() or 1, cache)


def _build(name: str, progress: Progress, jobs: int, cache: Path) -> BuiltKernel:
    inputs = _inputs(name)
    tree = _source_tree(cache, inputs["source"], progress)
    _configure(tree, inputs, progress)
    _set_veth(tree, name)
    dest = out_dir(name, cache)
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "build.log"
    localversion = f"-flightrec-{name}"
    progress(
        f"kernel: make -j{jobs} bzImage for {name} (log: {log}; the first build takes ~15 min on 2 cores, "
        "the other kernel then ~1 min)"
    )
    t = time.monotonic()
    with open(log, "w") as f:
        # LOCALVERSION on the command line, not in .config: the two kernels share
        # one configuration, and only init/version.c and the link see it.
        proc = subprocess.Popen(
            ["make", f"-j{jobs}", f"LOCALVERSION={localversion}", "bzImage"],
            cwd=tree,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 60:
                last = time.monotonic()
                progress(f"kernel: still building {name} ({last - t:.0f} s)")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise FlightrecError(
            f"building {name} failed (make exit {proc.returncode}; {log}): " + " | ".join(line.strip() for line in tail)
        )
    release = (tree / "include" / "config" / "kernel.release").read_text().strip()
    for src, dst in ((tree / "arch" / "x86" / "boot" / "bzImage", "bzImage"), (tree / "vmlinux", "vmlinux")):
        tmp = dest / f".{dst}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest / dst)
    (dest / "release").write_text(f"vmlinux-{release}\n")
    (dest / "config").write_bytes((tree / ".config").read_bytes())
    (dest / "stamp.json").write_text(
        json.dumps(
            {"name": name, "release": release, "inputs": inputs, "build_s": round(time.monotonic() - t, 1)}, indent=2
        )
        + "\n"
    )
    progress(f"kernel: {name} built in {time.monotonic() - t:.0f} s: {release}, {dest / 'bzImage'}")
    return BuiltKernel(name, release, dest / "bzImage", dest / "vmlinux", inputs["source"], tuple(KERNELS[name]))


def built_guest_kernel(name: str, progress: Progress = _quiet) -> "GuestKernel":
    """``--kernel veth-race``: the built kernel as the VM runner boots it (vmlinux beside the bzImage).

    :raises FlightrecError: as :func:`ensure_kernel`.
    """
    from flightrec.vm.kernel import bzimage_kernel

    return bzimage_kernel(ensure_kernel(name, progress).bzimage)


def named_kernels() -> dict[str, Callable[[Progress], "GuestKernel"]]:
    """The entries for ``flightrec.vm.kernel.NAMED_KERNELS``: name -> builder."""
    return {name: functools.partial(built_guest_kernel, name) for name in NAMES}


def _tarball(cache: Path, progress: Progress) -> Path:
    """Debian's source tarball: the installed package's, else apt-get download it into the cache."""
    installed = Path("/usr/src") / SOURCE_TARBALL
    if installed.is_file():
        return installed
    cached = cache / "src" / SOURCE_TARBALL
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        progress(f"kernel: apt-get download {SOURCE_PACKAGE} (~140 MB)")
        proc = subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", SOURCE_PACKAGE],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        debs = sorted(Path(tmp).glob(f"{SOURCE_PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise FlightrecError(f"apt-get download {SOURCE_PACKAGE} failed: {why}")
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE) as deb:
            with tarfile.open(fileobj=deb.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name.endswith("/" + SOURCE_TARBALL):
                        with tar.extractfile(member) as src, open(cached.with_suffix(".tmp"), "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        break
        if not cached.with_suffix(".tmp").is_file():
            raise FlightrecError(f"{debs[-1].name} holds no {SOURCE_TARBALL}")
        os.replace(cached.with_suffix(".tmp"), cached)
    return cached


def _source_tree(cache: Path, version: str, progress: Progress) -> Path:
    """The extracted tree, once per source version; veth.c's pristine copy kept beside it."""
    src = cache / "src"
    tree = src / "linux-source-6.1"
    stamp = src / "tree.json"
    try:
        if json.loads(stamp.read_text()).get("source") == version and (tree / "Makefile").is_file():
            return tree
    except (OSError, ValueError):
        pass
    tarball = _tarball(cache, progress)
    progress(f"kernel: extracting {tarball}")
    shutil.rmtree(tree, ignore_errors=True)
    src.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["tar", "-x", "-C", str(src), "-f", str(tarball)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not (tree / "Makefile").is_file():
        raise FlightrecError(f"cannot extract {tarball}: {proc.stderr.strip() or 'no linux-source-6.1/ in it'}")
    shutil.copyfile(tree / VETH, src / "veth.c.orig")
    stamp.write_text(json.dumps({"source": version}) + "\n")
    return tree


def _fragment_options() -> dict[str, str]:
    """CONFIG_X -> 'y' or 'n' as the fragment asks (comments `# CONFIG_X is not set` are 'n')."""
    want = {}
    for line in FRAGMENT.read_text().splitlines():
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip())
        if m:
            want[m.group(1)] = m.group(2)
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip())
        if m:
            want[m.group(1)] = "n"
    return want


def _configure(tree: Path, inputs: dict, progress: Progress) -> None:
    """defconfig + kvm_guest.config + the fragment, unless .config was made from the same fragment."""
    stamp = tree / ".flightrec-config.json"
    try:
        if json.loads(stamp.read_text()) == {"fragment": inputs["fragment"]} and (tree / ".config").is_file():
            return
    except (OSError, ValueError):
        pass
    progress("kernel: configuring (defconfig, kvm_guest.config, kernels/flightrec.config)")
    steps = [
        ["make", "defconfig"],
        ["make", "kvm_guest.config"],
        ["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)],
        ["make", "olddefconfig"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FlightrecError(f"{' '.join(cmd[:2])} failed: {' | '.join(tail)}")
    have = {}
    for line in (tree / ".config").read_text().splitlines():
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line)
        if m:
            have[m.group(1)] = m.group(2)
    # Kconfig drops what a dependency forbids without a word: say which.
    wrong = [k for k, v in _fragment_options().items() if have.get(k, "n") != v]
    if wrong:
        raise FlightrecError(
            f"flightrec/vm/kernels/flightrec.config asks for what Kconfig refused: {', '.join(wrong)} "
            "(a dependency is off)"
        )
    stamp.write_text(json.dumps({"fragment": inputs["fragment"]}) + "\n")


def veth_source(name: str, cache: Path = CACHE) -> bytes:
    """drivers/net/veth.c as kernel ``name`` has it: pristine, or with its patches applied."""
    text = (cache / "src" / "veth.c.orig").read_bytes()
    for patch in KERNELS[name]:
        with tempfile.TemporaryDirectory() as tmp:
            orig, out = Path(tmp) / "veth.c", Path(tmp) / "veth.c.out"
            orig.write_bytes(text)
            proc = subprocess.run(
                ["patch", "-s", "-p1", "-o", str(out), str(orig), str(KERNELS_DIR / patch)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise FlightrecError(
                    f"flightrec/vm/kernels/{patch} does not apply to {SOURCE_PACKAGE}'s {VETH}: "
                    f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}"
                )
            text = out.read_bytes()
    return text


def _set_veth(tree: Path, name: str) -> None:
    """Put kernel ``name``'s veth.c in the tree; untouched when it is already there (no rebuild)."""
    want = veth_source(name, tree.parent.parent)
    path = tree / VETH
    if path.read_bytes() != want:
        tmp = path.with_suffix(".c.tmp")
        tmp.write_bytes(want)
        os.replace(tmp, path)
