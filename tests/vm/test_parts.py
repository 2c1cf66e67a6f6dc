"""The VM's parts without booting: the kernel's release and build ID, the module
order, the initramfs as the kernel will unpack it (busybox cpio reads it back)."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from flightrec.errors import FlightrecError
from flightrec.vm import initramfs
from flightrec.vm.kernel import bzimage_release, gnu_build_id


def test_bzimage_release_matches_the_package(guest_kernel):
    assert bzimage_release(guest_kernel.bzimage) == guest_kernel.release


def test_bzimage_release_refuses_other_files(tmp_path):
    f = tmp_path / "not-a-kernel"
    f.write_bytes(b"\x7fELF" + b"\0" * 4096)
    with pytest.raises(FlightrecError, match="not an x86 bzImage"):
        bzimage_release(f)


def test_build_id_is_the_gnu_note_not_a_xen_note(guest_kernel):
    """A vmlinux's Xen notes have type 3 too; only the note named GNU is the build ID."""
    if guest_kernel.vmlinux is None:
        pytest.skip(f"no debug vmlinux for {guest_kernel.release}")
    out = subprocess.run(["readelf", "-n", str(guest_kernel.vmlinux)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("readelf (binutils) not available")
    ids = [ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines() if "Build ID:" in ln]
    assert ids and gnu_build_id(guest_kernel.vmlinux) == ids[0]


def test_modules_load_after_their_dependencies(guest_kernel):
    if guest_kernel.modules_dir is None:
        pytest.skip("kernel without a modules folder")
    order = initramfs.module_order(guest_kernel.modules_dir, ["virtio_pci", "virtiofs", "overlay", "veth"])
    names = [ko.rsplit("/", 1)[1].removesuffix(".ko") for ko in order]
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")
    assert names.index("fuse") < names.index("virtiofs")
    assert {"overlay", "veth"} <= set(names)
    assert len(names) == len(set(names))


def test_initramfs_unpacks_with_init_console_and_modules(guest_kernel, tmp_path):
    path = initramfs.build(guest_kernel, cache=tmp_path)
    assert initramfs.build(guest_kernel, cache=tmp_path) == path  # cached
    listing = subprocess.run(["busybox", "cpio", "-t"], input=gzip.decompress(path.read_bytes()),
                             capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.decode().split())
    assert {"init", "bin/busybox", "dev/console", "modules.load"} <= names
    assert any(n.endswith("/virtiofs.ko") for n in names)
