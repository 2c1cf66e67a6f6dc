"""The guest kernel: a Debian kernel package fetched with apt, or a bzImage someone built.

A :class:`GuestKernel` is everything the VM needs from a kernel: the bzImage
to boot, the folder of its modules (None when everything is built in) and
the debug vmlinux the probes resolver reads on the host. Two ways to get one:

- :func:`debian_kernel` (``--kernel 6.1|6.12|7.3``, a package name or a
  pattern; the default is 6.1): ``apt-get download NAME=VERSION`` of the
  newest matching image package (``-unsigned`` preferred, the signed one
  otherwise) and, for Debian 13's split packages, of the ``linux-binary-``,
  ``linux-modules-`` and ``linux-base-`` it depends on; ``dpkg-deb -x`` and
  ``busybox depmod -b`` into ``/var/cache/flightrec/vm/<package>/`` in the
  layout Debian 12 uses (``boot/vmlinuz-<release>``,
  ``lib/modules/<release>/``), once; its ``-dbg`` package's vmlinux into the
  probes' kernel cache, once.
- :func:`bzimage_kernel` (``--kernel /path/to/bzImage``): a self-built kernel
  with the modules the VM needs built in; a ``vmlinux`` beside it is used
  for the probes.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from flightrec.errors import FlightrecError

VM_CACHE = Path(os.environ.get("FLIGHTREC_VM_CACHE", "/var/cache/flightrec/vm"))
# --kernel SERIES: the newest stock Debian cloud kernel of the series, and where apt finds it.
SERIES: dict[str, tuple[str, str]] = {
    "6.1": ("linux-image-6.1.*-cloud-amd64", "bookworm"),
    "6.12": ("linux-image-6.12.*-cloud-amd64", "bookworm-security"),
    "7.3": ("linux-image-7.3.*+deb13-cloud-amd64", "trixie-backports"),
}
DEFAULT_KERNEL = SERIES["6.1"][0]
# scripts/install-deps.sh installs it from scripts/apt/, pinned so apt installs nothing from it.
APT_SOURCES = Path("/etc/apt/sources.list.d/flightrec-kernels.sources")
APT_TIMEOUT = 600  # seconds for one apt-get download (a -dbg package is ~300 MB)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestKernel:
    """A bootable kernel and what goes with it."""

    name: str  # what the user asked for, resolved: a package name or a path
    release: str  # `uname -r` in the guest
    bzimage: Path
    modules: Optional[Path]  # <root> holding lib/modules/<release>/ with modules.dep; None: all built in
    vmlinux: Optional[Path]  # debug vmlinux for the probes resolver; None: no kernel probes

    @property
    def modules_dir(self) -> Optional[Path]:
        return None if self.modules is None else self.modules / "lib" / "modules" / self.release

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "release": self.release,
            "bzimage": str(self.bzimage),
            "modules": None if self.modules is None else str(self.modules_dir),
            "vmlinux": None if self.vmlinux is None else str(self.vmlinux),
        }


def _quiet(_: str) -> None:
    pass


def bzimage_release(path: Path) -> str:
    """The kernel release string from a bzImage's setup header (``kernel_version`` at 0x20e).

    :raises FlightrecError: not a bzImage.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except OSError as e:
        raise FlightrecError(f"cannot read kernel image {path}: {e.strerror}") from None
    # Documentation/x86/boot.rst: "HdrS" at 0x202, version pointer at 0x20e (relative to 0x200).
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise FlightrecError(f"{path} is not an x86 bzImage (no HdrS boot header)")
    (ptr,) = struct.unpack_from("<H", head, 0x20E)
    text = head[0x200 + ptr : 0x200 + ptr + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    release = text.split(" ", 1)[0]
    if not release:
        raise FlightrecError(f"{path}: the bzImage names no kernel release")
    return release


def bzimage_kernel(path: Path, vmlinux: Optional[Path] = None) -> GuestKernel:
    """A self-built bzImage with virtio-pci, virtiofs, fuse and overlay built in.

    ``vmlinux`` defaults to a ``vmlinux`` file beside the bzImage or in the
    build tree two levels up (``arch/x86/boot/bzImage``).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FlightrecError(f"kernel image {path} does not exist")
    release = bzimage_release(path)
    if vmlinux is None:
        for guess in (path.parent / "vmlinux", path.parent.parent.parent.parent / "vmlinux"):
            if guess.is_file():
                vmlinux = guess
                break
    return GuestKernel(str(path), release, path, None, vmlinux)


def _natural(name: str) -> list:
    """Sort key where 6.1.0-56 > 6.1.0-9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _apt_names(pattern: str) -> list[str]:
    """Package names apt knows that match the shell ``pattern`` (local lists only: no network)."""
    if shutil.which("apt-cache") is None:
        raise FlightrecError(
            "apt-cache not found: fetching a kernel package needs Debian's apt (or pass --kernel /path/to/bzImage)"
        )
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    # pkgnames lists names by prefix without reading descriptions: about 1 s.
    proc = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True, timeout=120, check=False)
    names = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    wanted = (n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + "-unsigned"))
    return sorted(wanted, key=_natural)


@dataclass(frozen=True)
class KernelPackage:
    """The image package to download and what comes with it, all at one version."""

    package: str  # the image package: linux-image-<release>[-unsigned]
    base: str  # without -unsigned: the cache folder's name and the -dbg package's stem
    version: str
    # Debian 13 splits the image: an empty linux-image-* depending on linux-binary-*
    # (usr/lib/modules/<release>/vmlinuz), linux-modules-* (.ko.xz) and linux-base-*
    # (System.map, config, modules.builtin), each "(= version)". Debian 12: none.
    parts: tuple[str, ...] = ()


def _apt_records(names: list[str]) -> dict[str, dict[str, str]]:
    """The newest record apt has of each name (apt-cache show lists versions newest first).

    A name no version provides is absent. Local lists only; works for pinned-away
    suites too (trixie-backports at -1 has no candidate, but its records are there).
    """
    if not names:
        return {}
    proc = subprocess.run(["apt-cache", "show", *names], capture_output=True, text=True, timeout=120, check=False)
    records: dict[str, dict[str, str]] = {}
    for para in proc.stdout.split("\n\n"):
        fields = {}
        for line in para.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            records.setdefault(fields["Package"], fields)
    return records


def _parts(record: dict[str, str]) -> tuple[str, ...]:
    """The packages ``record`` depends on at exactly its own version (Debian 13's split image)."""
    parts = []
    for group in record.get("Depends", "").split(","):
        m = re.fullmatch(r"\s*([a-z0-9][a-z0-9.+-]*)\s*\(\s*=\s*(\S+)\s*\)\s*", group)
        if m and m[2] == record["Version"]:
            parts.append(m[1])
    return tuple(parts)


def _no_package(pattern: str) -> str:
    """One line saying why apt has no kernel for ``pattern`` and what to run."""
    series = next((name for name, (pat, _suite) in SERIES.items() if pat == pattern), None)
    if series is not None:
        suite = SERIES[series][1]
        if suite == "trixie-backports" and not APT_SOURCES.is_file():
            return (
                f"kernel {series} comes from trixie-backports, which is not in apt's sources: "
                f"run `make setup` (scripts/install-deps.sh adds {APT_SOURCES}, pinned)"
            )
        return f"no kernel package matches {pattern!r} in apt's lists: run apt-get update ({series} is in {suite})"
    return (
        f"no kernel package matches {pattern!r} in apt's lists "
        "(run apt-get update, or pass --kernel 6.1|6.12|7.3 or /path/to/bzImage)"
    )


def choose_package(pattern: str) -> KernelPackage:
    """The image package to download for ``pattern``.

    The newest base name that apt has a version of wins; its ``-unsigned``
    package is preferred (the same kernel without the Secure Boot signature),
    else the signed one.

    :raises FlightrecError: apt knows no such package.
    """
    names = set(_apt_names(pattern))
    bases = sorted({n.removesuffix("-unsigned") for n in names if not n.endswith(("-dbg", "-dbgsym"))}, key=_natural)
    bases = [b for b in bases if fnmatch.fnmatchcase(b, pattern)]
    # pkgnames also lists names only mentioned by other packages: keep those with a version.
    records = _apt_records(sorted(names))
    for base in reversed(bases):
        for package in (base + "-unsigned", base):
            if package in records:
                record = records[package]
                return KernelPackage(package, base, record["Version"], _parts(record))
    raise FlightrecError(_no_package(pattern))


def _apt_download(packages: list[tuple[str, str]], into: Path, progress: Progress) -> list[Path]:
    """``apt-get download NAME=VERSION...`` into ``into``; returns the .debs in the same order.

    By exact version: a pinned-away suite gives apt no candidate to pick.
    """
    wanted = [f"{name}={version}" for name, version in packages]
    progress(f"download: apt-get download {' '.join(wanted)}")
    try:
        proc = subprocess.run(
            # The _apt sandbox user cannot write root's cache folder; the download is verified by apt anyway.
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *wanted],
            cwd=into,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FlightrecError(f"apt-get download {' '.join(wanted)} took over {APT_TIMEOUT} s") from None
    debs = [sorted(into.glob(f"{name}_*.deb")) for name, _version in packages]
    if proc.returncode != 0 or not all(debs):
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        if "404" in proc.stderr:  # the lists name a version the mirror has since replaced
            why += " (apt's lists are older than the mirror: run apt-get update)"
        raise FlightrecError(f"apt-get download {' '.join(wanted)} failed: {why}")
    return [found[-1] for found in debs]


def _extract_image(debs: list[Path], dest: Path) -> str:
    """``dpkg-deb -x`` the image package (and its parts); ``busybox depmod -b``; returns the release.

    Debian 13's kernel is ``usr/lib/modules/<release>/vmlinuz`` with the modules
    beside it: moved to ``boot/vmlinuz-<release>`` and ``lib/modules/<release>``,
    Debian 12's layout, which the rest of flightrec reads.
    """
    if shutil.which("dpkg-deb") is None:
        raise FlightrecError("dpkg-deb not found (apt-get install dpkg)")
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FlightrecError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()[:300]}")
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if not images:
        split = sorted((dest / "usr" / "lib" / "modules").glob("*/vmlinuz"))
        if split:
            (dest / "boot").mkdir(exist_ok=True)
            images = [dest / "boot" / f"vmlinuz-{split[-1].parent.name}"]
            os.rename(split[-1], images[0])
    if not images:
        raise FlightrecError(
            f"{', '.join(d.name for d in debs)} hold no boot/vmlinuz-* nor "
            "usr/lib/modules/*/vmlinuz: not a kernel image package"
        )
    release = images[-1].name.removeprefix("vmlinuz-")
    merged = dest / "usr" / "lib" / "modules" / release
    modules = dest / "lib" / "modules" / release
    if merged.is_dir() and not modules.exists():
        modules.parent.mkdir(parents=True, exist_ok=True)
        os.rename(merged, modules)
        try:
            merged.parent.rmdir()
        except OSError:
            pass  # other releases' folders in it: keep it
    if modules.is_dir():
        depmod(dest, release)
    return release


def depmod(root: Path, release: str) -> None:
    """modules.dep for ``root/lib/modules/release`` (busybox's depmod: the host may lack kmod)."""
    busybox = find_busybox()
    proc = subprocess.run([busybox, "depmod", "-b", str(root), release], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (root / "lib" / "modules" / release / "modules.dep").is_file():
        raise FlightrecError(f"busybox depmod -b {root} {release} failed: {proc.stderr.strip()[:300]}")


def find_busybox() -> str:
    """A statically linked busybox (Debian: busybox-static), needed in the initramfs and for depmod."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.access(path, os.X_OK):
            with open(path, "rb") as f:
                head = f.read(4096)
            # A dynamic binary names its interpreter in PT_INTERP; a static one has no ld-linux path.
            if b"ld-linux" in head:
                raise FlightrecError(f"{path} is dynamically linked: apt-get install busybox-static")
            return path
    raise FlightrecError("busybox not found: apt-get install busybox-static")


def debian_kernel(
    pattern: str = DEFAULT_KERNEL, progress: Progress = _quiet, with_vmlinux: bool = True, cache: Path = VM_CACHE
) -> GuestKernel:
    """Fetch (once) the newest Debian kernel image matching ``pattern`` and its debug vmlinux.

    :raises FlightrecError: apt knows no such package, a download or an extraction failed.
    """
    chosen = choose_package(pattern)
    package, base = chosen.package, chosen.base
    dest = cache / base
    done = dest / "release"
    if done.is_file():
        release = done.read_text().strip()
        progress(f"kernel: {package} {chosen.version} (cached in {dest})")
    else:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlightrecError(f"cannot create {cache}: {e.strerror} (run as root)") from None
        # Extract into a scratch folder and rename: an interrupted fetch leaves no half kernel.
        scratch = Path(tempfile.mkdtemp(prefix=f".{base}-", dir=cache))
        try:
            debs = _apt_download([(name, chosen.version) for name in (package, *chosen.parts)], scratch, progress)
            progress(f"kernel: extracting {', '.join(d.name for d in debs)}")
            release = _extract_image(debs, scratch / "root")
            (scratch / "root" / "release").write_text(release + "\n")
            if not done.is_file():  # another flightrec may have finished first: keep its copy
                shutil.rmtree(dest, ignore_errors=True)  # a partial one without "release"
                os.rename(scratch / "root", dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    kernel = cached_debian_kernel(dest, package)
    if kernel is None:
        raise FlightrecError(f"{dest / 'boot' / f'vmlinuz-{release}'} is missing: remove {dest} and run again")
    return replace(kernel, vmlinux=debug_vmlinux(base, release, progress) if with_vmlinux else None)


def cached_debian_kernel(dest: Path, name: str) -> Optional[GuestKernel]:
    """The kernel fetched into ``dest`` (its release, bzImage and modules; no vmlinux), or None
    when ``dest`` holds no complete one."""
    try:
        release = (dest / "release").read_text().strip()
    except OSError:
        return None
    bzimage = dest / "boot" / f"vmlinuz-{release}"
    if not bzimage.is_file():
        return None
    modules = dest if (dest / "lib" / "modules" / release / "modules.dep").is_file() else None
    return GuestKernel(name, release, bzimage, modules, None)


def debug_vmlinux(base: str, release: str, progress: Progress = _quiet) -> Path:
    """The ``<base>-dbg`` package's vmlinux, in the probes' kernel cache (fetched once).

    Uses the layout of scripts/fetch-debug-kernel.sh (``<cache>/<pkg>/vmlinux``
    and ``release``), so ``flightrec.probes.find_vmlinux`` finds it too.
    """
    from flightrec.probes import KERNEL_CACHE, find_vmlinux

    found = find_vmlinux(release)
    if found is not None:
        return found
    package = base + "-dbg"
    record = _apt_records([package]).get(package)
    if record is None:
        raise FlightrecError(
            f"apt knows no {package}: no debug vmlinux for the probes (run apt-get update, or --kernel-events none)"
        )
    dest = KERNEL_CACHE / package
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        progress(f"download: {package} (~350 MB, once) for the probes resolver")
        (deb,) = _apt_download([(package, record["Version"])], scratch, progress)
        progress(f"kernel: extracting the debug vmlinux from {deb.name}")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        try:
            # Debian 12: usr/lib/debug/boot/vmlinux-<release>. Debian 13: a link there to
            # usr/lib/debug/lib/modules/<release>/vmlinux, unpacked too.
            untar = subprocess.run(
                ["tar", "-x", "-C", str(scratch), "--wildcards", "./usr/lib/debug/*vmlinux*"],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        image = (scratch / "usr" / "lib" / "debug" / "boot" / f"vmlinux-{release}").resolve()
        if untar.returncode != 0 or not image.is_file() or not image.is_relative_to(scratch.resolve()):
            raise FlightrecError(f"{deb.name} holds no usr/lib/debug/boot/vmlinux-{release}")
        os.rename(image, dest / "vmlinux")
        (dest / "release").write_text(f"vmlinux-{release}\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest / "vmlinux"


# Named kernels another module builds (e.g. "veth-race": a kernel from Debian's
# source with a patch): name -> function(progress) returning the GuestKernel.
# `--kernel NAME` looks here before it looks for a file or a package.
NAMED_KERNELS: dict[str, Callable[[Progress], GuestKernel]] = {}

from flightrec.vm import build as _build  # noqa: E402  (veth-race, cq-fixed, ...: build.NAMES)

NAMED_KERNELS.update(_build.named_kernels())


def guest_kernel(spec: Optional[str], progress: Progress = _quiet, with_vmlinux: bool = True) -> GuestKernel:
    """``--kernel``: None for the default Debian kernel, a name in :data:`NAMED_KERNELS`,
    a series in :data:`SERIES`, a path to a bzImage (``./7.3`` for a file of that name),
    or a package name or pattern."""
    if spec in NAMED_KERNELS:
        return NAMED_KERNELS[spec](progress)
    if spec is None:
        return debian_kernel(DEFAULT_KERNEL, progress, with_vmlinux)
    if spec in SERIES:
        return debian_kernel(SERIES[spec][0], progress, with_vmlinux)
    if "/" in spec or Path(spec).is_file():
        return bzimage_kernel(Path(spec))
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+*?\[\]-]*", spec):
        raise FlightrecError(f"--kernel {spec!r} is neither a file nor a Debian package name")
    return debian_kernel(spec, progress, with_vmlinux)
