"""The guest kernel: a Debian kernel package fetched with apt, or a bzImage someone built.

A :class:`GuestKernel` is everything the VM needs from a kernel: the bzImage
to boot, the folder of its modules (None when everything is built in) and
the debug vmlinux the probes resolver reads on the host. Two ways to get one:

- :func:`debian_kernel` (``--kernel linux-image-6.1.*-cloud-amd64``, the
  default): ``apt-get download`` of the newest matching image package
  (``-unsigned`` preferred, the signed one otherwise), ``dpkg-deb -x`` and
  ``busybox depmod -b`` into ``/var/cache/flightrec/vm/<package>/``, once;
  its ``-dbg`` package's vmlinux into the probes' kernel cache, once.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from flightrec.errors import FlightrecError

VM_CACHE = Path(os.environ.get("FLIGHTREC_VM_CACHE", "/var/cache/flightrec/vm"))
DEFAULT_KERNEL = "linux-image-6.1.*-cloud-amd64"
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
        return {"name": self.name, "release": self.release, "bzimage": str(self.bzimage),
                "modules": None if self.modules is None else str(self.modules_dir),
                "vmlinux": None if self.vmlinux is None else str(self.vmlinux)}


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
    text = head[0x200 + ptr:0x200 + ptr + 256].split(b"\0", 1)[0].decode("ascii", "replace")
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
        raise FlightrecError("apt-cache not found: fetching a kernel package needs Debian's apt "
                             "(or pass --kernel /path/to/bzImage)")
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    # pkgnames lists names by prefix without reading descriptions: about 1 s.
    proc = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True, timeout=120,
                          check=False)
    names = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    wanted = (n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + "-unsigned"))
    return sorted(wanted, key=_natural)


def choose_package(pattern: str) -> tuple[str, str]:
    """(image package to download, its base name) for ``pattern``.

    The newest base name wins; its ``-unsigned`` package is preferred (the same
    kernel without the Secure Boot signature), else the signed one.

    :raises FlightrecError: apt knows no such package.
    """
    names = set(_apt_names(pattern))
    bases = sorted({n.removesuffix("-unsigned") for n in names
                    if not n.endswith(("-dbg", "-dbgsym"))}, key=_natural)
    bases = [b for b in bases if fnmatch.fnmatchcase(b, pattern)]
    if not bases:
        raise FlightrecError(f"no kernel package matches {pattern!r} in apt's lists "
                             "(run apt-get update, or pass --kernel /path/to/bzImage)")
    base = bases[-1]
    return (base + "-unsigned" if base + "-unsigned" in names else base), base


def _apt_download(package: str, into: Path, progress: Progress) -> Path:
    """``apt-get download`` one package into ``into``; returns the .deb."""
    progress(f"download: apt-get download {package}")
    try:
        proc = subprocess.run(
            # The _apt sandbox user cannot write root's cache folder; the download is verified by apt anyway.
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            cwd=into, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FlightrecError(f"apt-get download {package} took over {APT_TIMEOUT} s") from None
    debs = sorted(into.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise FlightrecError(f"apt-get download {package} failed: {why}")
    return debs[-1]


def _extract_image(deb: Path, dest: Path) -> str:
    """``dpkg-deb -x`` the image package; ``busybox depmod -b``; returns the release."""
    if shutil.which("dpkg-deb") is None:
        raise FlightrecError("dpkg-deb not found (apt-get install dpkg)")
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FlightrecError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()[:300]}")
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if not images:
        raise FlightrecError(f"{deb.name} holds no boot/vmlinuz-*: not a kernel image package")
    release = images[-1].name.removeprefix("vmlinuz-")
    if (dest / "lib" / "modules" / release).is_dir():
        depmod(dest, release)
    return release


def depmod(root: Path, release: str) -> None:
    """modules.dep for ``root/lib/modules/release`` (busybox's depmod: the host may lack kmod)."""
    busybox = find_busybox()
    proc = subprocess.run([busybox, "depmod", "-b", str(root), release], capture_output=True, text=True,
                          check=False)
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


def debian_kernel(pattern: str = DEFAULT_KERNEL, progress: Progress = _quiet,
                  with_vmlinux: bool = True, cache: Path = VM_CACHE) -> GuestKernel:
    """Fetch (once) the newest Debian kernel image matching ``pattern`` and its debug vmlinux.

    :raises FlightrecError: apt knows no such package, a download or an extraction failed.
    """
    package, base = choose_package(pattern)
    dest = cache / base
    done = dest / "release"
    if done.is_file():
        release = done.read_text().strip()
        progress(f"kernel: {package} (cached in {dest})")
    else:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlightrecError(f"cannot create {cache}: {e.strerror} (run as root)") from None
        # Extract into a scratch folder and rename: an interrupted fetch leaves no half kernel.
        scratch = Path(tempfile.mkdtemp(prefix=f".{base}-", dir=cache))
        try:
            deb = _apt_download(package, scratch, progress)
            progress(f"kernel: extracting {deb.name}")
            release = _extract_image(deb, scratch / "root")
            (scratch / "root" / "release").write_text(release + "\n")
            if not done.is_file():  # another flightrec may have finished first: keep its copy
                shutil.rmtree(dest, ignore_errors=True)  # a partial one without "release"
                os.rename(scratch / "root", dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    bzimage = dest / "boot" / f"vmlinuz-{release}"
    if not bzimage.is_file():
        raise FlightrecError(f"{bzimage} is missing: remove {dest} and run again")
    modules = dest if (dest / "lib" / "modules" / release / "modules.dep").is_file() else None
    vmlinux = debug_vmlinux(base, release, progress) if with_vmlinux else None
    return GuestKernel(package, release, bzimage, modules, vmlinux)


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
    dest = KERNEL_CACHE / package
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        progress(f"download: {package} (~300 MB, once) for the probes resolver")
        deb = _apt_download(package, scratch, progress)
        progress(f"kernel: extracting the debug vmlinux from {deb.name}")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        try:
            untar = subprocess.run(["tar", "-x", "-C", str(scratch), "--wildcards", "./usr/lib/debug/boot/vmlinux-*"],
                                   stdin=tar.stdout, capture_output=True, text=True, check=False)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        image = scratch / "usr" / "lib" / "debug" / "boot" / f"vmlinux-{release}"
        if untar.returncode != 0 or not image.is_file():
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

from flightrec.vm import build as _build  # noqa: E402  (veth-race, veth-fixed: docs/veth-race.md)

NAMED_KERNELS.update(_build.named_kernels())


def guest_kernel(spec: Optional[str], progress: Progress = _quiet, with_vmlinux: bool = True) -> GuestKernel:
    """``--kernel``: None for the default Debian kernel, a name in :data:`NAMED_KERNELS`,
    a path to a bzImage, or a package pattern."""
    if spec in NAMED_KERNELS:
        return NAMED_KERNELS[spec](progress)
    if spec is None:
        return debian_kernel(DEFAULT_KERNEL, progress, with_vmlinux)
    if "/" in spec or Path(spec).is_file():
        return bzimage_kernel(Path(spec))
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+*?\[\]-]*", spec):
        raise FlightrecError(f"--kernel {spec!r} is neither a file nor a Debian package name")
    return debian_kernel(spec, progress, with_vmlinux)


def gnu_build_id(path: Path) -> Optional[str]:
    """The GNU build ID (hex) of an ELF file, from the note named "GNU" only.

    A vmlinux also carries Xen notes whose type 3 reads as NT_GNU_BUILD_ID
    to pyelftools; their name tells them apart.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            for sec in ELFFile(f).iter_sections():
                if sec["sh_type"] != "SHT_NOTE":
                    continue
                for note in sec.iter_notes():
                    if note["n_name"] == "GNU" and note["n_type"] == "NT_GNU_BUILD_ID":
                        desc = note["n_desc"]
                        return desc if isinstance(desc, str) else bytes(desc).hex()
    except (OSError, ELFError):
        return None
    return None
