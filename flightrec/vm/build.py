"""The project's own guest kernels, built once from Debian's kernel sources and cached.

    kernel = ensure_kernel("veth-race", say)    # BuiltKernel: bzimage, vmlinux, release
    kernel = built_kernel("veth-fixed")         # the cached one, or None (never builds)

Each kernel is a bug pair's half: a Debian source package as it is, or with one
of the project's patches to the one file the bug lives in. The two halves of a
pair share one build tree (``/var/cache/flightrec/kernels/src/<package>``):

- ``veth-fixed``: Debian's ``linux-source-6.1`` as it is. It carries upstream
  fa349e396e48 ("veth: Fix race with AF_XDP exposing old or uninitialized
  descriptors"): ``veth_poll()`` calls ``xdp_do_flush()`` before
  ``napi_complete_done()``.
- ``veth-race``: the same with ``flightrec/vm/kernels/veth-race.patch``, the project's own
  revert of that fix (the flush after the napi-complete block again).
- ``cq-immature``: Debian's ``linux-source-6.12`` as it is (6.12.117 has no
  30f241fcf52a, "xsk: Fix immature cq descriptor production"): a COMPLETION
  address is written when its slot is reserved, and any skb destructor
  publishes by count (docs/cq-race.md).
- ``cq-fixed``: the same with ``flightrec/vm/kernels/cq-fixed.patch``, the project's
  own fix: reserve only, the skb keeps its addresses, its destructor writes
  them into the slots it publishes.

The configuration is ``make defconfig``, ``make kvm_guest.config`` and
``flightrec/vm/kernels/flightrec.config`` (virtio, virtiofs, overlay, veth, BPF, AF_XDP,
kprobes, DWARF for the probes resolver), everything built in. A tree's first
build takes about 15 minutes on two cores (6.12: ~20); its other kernel only
recompiles the patched file and relinks. Each kernel's ``bzImage``, ``vmlinux`` and
``release`` are copied to ``build-<name>/`` beside the trees, with a stamp of
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
KERNELS_DIR = locate.VM_KERNELS_DIR  # package data: the config fragment and the patches
FRAGMENT = KERNELS_DIR / "flightrec.config"


@dataclass(frozen=True)
class Source:
    """A Debian kernel source package, and the one file the project's patches to it touch."""

    package: str  # linux-source-6.1: /usr/src/<package>.tar.xz holds <package>/
    patched: str  # drivers/net/veth.c

    @property
    def tarball(self) -> str:
        return f"{self.package}.tar.xz"


@dataclass(frozen=True)
class Recipe:
    source: Source
    patches: tuple[str, ...]  # applied in order to source.patched (relative to KERNELS_DIR)


LINUX_61 = Source("linux-source-6.1", "drivers/net/veth.c")
LINUX_612 = Source("linux-source-6.12", "net/xdp/xsk.c")
KERNELS: dict[str, Recipe] = {
    "veth-fixed": Recipe(LINUX_61, ()),
    "veth-race": Recipe(LINUX_61, ("veth-race.patch",)),
    "cq-immature": Recipe(LINUX_612, ()),
    "cq-fixed": Recipe(LINUX_612, ("cq-fixed.patch",)),
}
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
            "source": f"{KERNELS[self.name].source.package} {self.source}",
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
    recipe = KERNELS[name]
    patches = [KERNELS_DIR / p for p in recipe.patches]
    return {
        "fragment": _digest([FRAGMENT]),
        "patches": _digest(patches) if patches else "",
        "source": _source_version(recipe.source.package),
    }


def _source_version(package: str) -> str:
    """The package's version apt would give (installed, else the candidate)."""
    for cmd in (["dpkg-query", "-W", "-f", "${Version}", package], ["apt-cache", "policy", package]):
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
    raise FlightrecError(f"apt knows no {package} (run apt-get update; this needs Debian 12's lists)")


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
        name, stamp["release"], d / "bzImage", d / "vmlinux", stamp["inputs"]["source"], KERNELS[name].patches
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
    tree = _source_tree(KERNELS[name].source, cache, inputs["source"], progress)
    _configure(tree, inputs, progress)
    _set_patched(tree, name, cache)
    dest = out_dir(name, cache)
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "build.log"
    localversion = f"-flightrec-{name}"
    progress(
        f"kernel: make -j{jobs} bzImage for {name} (log: {log}; a tree's first build takes ~15-20 min on 2 cores, "
        "the other kernel of its pair then ~1 min)"
    )
    t = time.monotonic()
    with open(log, "w") as f:
        # LOCALVERSION on the command line, not in .config: a pair's two kernels share
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
    return BuiltKernel(name, release, dest / "bzImage", dest / "vmlinux", inputs["source"], KERNELS[name].patches)


def built_guest_kernel(name: str, progress: Progress = _quiet) -> "GuestKernel":
    """``--kernel veth-race``: the built kernel as the VM runner boots it (vmlinux beside the bzImage).

    :raises FlightrecError: as :func:`ensure_kernel`.
    """
    from flightrec.vm.kernel import bzimage_kernel

    return bzimage_kernel(ensure_kernel(name, progress).bzimage)


def named_kernels() -> dict[str, Callable[[Progress], "GuestKernel"]]:
    """The entries for ``flightrec.vm.kernel.NAMED_KERNELS``: name -> builder."""
    return {name: functools.partial(built_guest_kernel, name) for name in NAMES}


def _tarball(source: Source, cache: Path, progress: Progress) -> Path:
    """Debian's source tarball: the installed package's, else apt-get download it into the cache."""
    installed = Path("/usr/src") / source.tarball
    if installed.is_file():
        return installed
    cached = cache / "src" / source.tarball
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        progress(f"kernel: apt-get download {source.package} (~150 MB)")
        proc = subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", source.package],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        debs = sorted(Path(tmp).glob(f"{source.package}_*.deb"))
        if proc.returncode != 0 or not debs:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise FlightrecError(f"apt-get download {source.package} failed: {why}")
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE) as deb:
            with tarfile.open(fileobj=deb.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name.endswith("/" + source.tarball):
                        with tar.extractfile(member) as src, open(cached.with_suffix(".tmp"), "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        break
        if not cached.with_suffix(".tmp").is_file():
            raise FlightrecError(f"{debs[-1].name} holds no {source.tarball}")
        os.replace(cached.with_suffix(".tmp"), cached)
    return cached


def _pristine(source: Source, cache: Path) -> Path:
    """Where the patched file's copy as Debian ships it is kept, beside the tree."""
    return cache / "src" / f"{source.package}.{Path(source.patched).name}.orig"


def _source_tree(source: Source, cache: Path, version: str, progress: Progress) -> Path:
    """The extracted tree, once per source version; the patched file's pristine copy kept beside it."""
    src = cache / "src"
    tree = src / source.package
    stamp = src / f"{source.package}.json"
    try:
        if json.loads(stamp.read_text()).get("source") == version and (tree / "Makefile").is_file():
            return tree
    except (OSError, ValueError):
        pass
    tarball = _tarball(source, cache, progress)
    progress(f"kernel: extracting {tarball}")
    shutil.rmtree(tree, ignore_errors=True)
    src.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["tar", "-x", "-C", str(src), "-f", str(tarball)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not (tree / "Makefile").is_file():
        raise FlightrecError(f"cannot extract {tarball}: {proc.stderr.strip() or f'no {source.package}/ in it'}")
    shutil.copyfile(tree / source.patched, _pristine(source, cache))
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


def patched_source(name: str, cache: Path = CACHE) -> bytes:
    """The patched file (``KERNELS[name].source.patched``) as kernel ``name`` has it:
    pristine, or with its patches applied. Needs the tree extracted once."""
    recipe = KERNELS[name]
    text = _pristine(recipe.source, cache).read_bytes()
    for patch in recipe.patches:
        with tempfile.TemporaryDirectory() as tmp:
            orig, out = Path(tmp) / "orig", Path(tmp) / "out"
            orig.write_bytes(text)
            proc = subprocess.run(
                ["patch", "-s", "-p1", "-o", str(out), str(orig), str(KERNELS_DIR / patch)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise FlightrecError(
                    f"flightrec/vm/kernels/{patch} does not apply to {recipe.source.package}'s "
                    f"{recipe.source.patched}: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}"
                )
            text = out.read_bytes()
    return text


def _set_patched(tree: Path, name: str, cache: Path) -> None:
    """Put kernel ``name``'s patched file in the tree; untouched when it is already there (no rebuild)."""
    want = patched_source(name, cache)
    path = tree / KERNELS[name].source.patched
    if path.read_bytes() != want:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(want)
        os.replace(tmp, path)
