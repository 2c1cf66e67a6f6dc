"""The VM's parts without booting: the kernel's release and build ID, the module
order, the initramfs as the kernel will unpack it (busybox cpio reads it back)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.probes.dwarf import gnu_build_id
from flightrec.vm import initramfs
from flightrec.vm import kernel as vmkernel
from flightrec.vm.kernel import bzimage_release
from flightrec.vm.runner import death_reason, guest_stall, kernel_reports

from vmkit import REPO


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
    listing = subprocess.run(
        ["busybox", "cpio", "-t"], input=gzip.decompress(path.read_bytes()), capture_output=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.decode().split())
    assert {"init", "bin/busybox", "dev/console", "modules.load"} <= names
    assert any(n.endswith("/virtiofs.ko") for n in names)


# --- Debian kernels by series: --kernel 6.1|6.12|7.3 (fetched with apt, cached) ----------------------


@pytest.fixture(scope="module", params=sorted(vmkernel.SERIES))
def series_kernel(request):
    """(series, GuestKernel) for 6.1, 6.12 and 7.3, without the debug vmlinux (not needed here)."""
    try:
        return request.param, vmkernel.guest_kernel(request.param, with_vmlinux=False)
    except FlightrecError as e:
        pytest.skip(f"cannot fetch Debian's {request.param} kernel: {e}")


def test_series_is_a_kernel_of_that_series_in_debian12s_layout(series_kernel):
    series, k = series_kernel
    assert k.release.startswith(series + ".") and k.release.endswith("-cloud-amd64")
    assert k.name.startswith(f"linux-image-{k.release}")  # the package, -unsigned where Debian has one
    assert k.bzimage == k.bzimage.parent.parent / "boot" / f"vmlinuz-{k.release}"
    assert bzimage_release(k.bzimage) == k.release  # the image's own header, not the package name
    assert k.modules_dir is not None and (k.modules_dir / "modules.dep").is_file()
    order = initramfs.module_order(k.modules_dir, ["overlay", "veth"])
    assert {ko.rsplit("/", 1)[1].split(".ko", 1)[0] for ko in order} >= {"overlay", "veth"}


def test_debian13_image_is_split_into_binary_modules_and_base():
    """7.3's linux-image-* is empty: the kernel, its modules and its base files are packages
    it depends on at exactly its version (apt-cache show's Depends); 6.1's is one package."""
    try:
        k73 = vmkernel.choose_package(vmkernel.SERIES["7.3"][0])
        k61 = vmkernel.choose_package(vmkernel.SERIES["6.1"][0])
    except FlightrecError as e:
        pytest.skip(str(e))
    release = k73.base.removeprefix("linux-image-")
    assert sorted(k73.parts) == [f"linux-{part}-{release}" for part in ("base", "binary", "modules")]
    assert k61.parts == ()


def test_compressed_modules_are_read_by_the_initramfs_busybox(series_kernel, tmp_path):
    """Debian's 6.12 and 7.3 ship modules as .ko.xz; the initramfs carries them as they are, and
    its busybox insmod (like modprobe in the guest) decompresses them itself: each is an ELF
    object once busybox reads it."""
    series, k = series_kernel
    path = initramfs.build(k, cache=tmp_path)
    archive = gzip.decompress(path.read_bytes())
    listed = subprocess.run(
        ["busybox", "cpio", "-i", "--to-stdout", "modules.load"], input=archive, capture_output=True, timeout=60
    )
    modules = listed.stdout.decode().split()
    assert listed.returncode == 0 and modules, listed.stderr
    if series != "6.1":
        assert any(m.endswith(".ko.xz") for m in modules)
    busybox = vmkernel.find_busybox()  # the binary the initramfs carries
    for ko in modules:
        if ko.endswith(".ko.xz"):
            plain = subprocess.run([busybox, "unxz", "-c", str(k.modules_dir / ko)], capture_output=True, timeout=60)
            assert plain.returncode == 0 and plain.stdout[:4] == b"\x7fELF", ko


def test_series_without_its_apt_source_is_one_line(tmp_path):
    """apt without flightrec's trixie-backports source: `--kernel 7.3` says what to run, exit 2."""
    empty = tmp_path / "sources.list.d"
    empty.mkdir()
    conf = tmp_path / "apt.conf"
    # Real apt with no sources at all: no package lists, no cache files written.
    conf.write_text(
        f'Dir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "{empty}";\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "flightrec", "vm", "run", "--kernel", "7.3", "--", "true"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=dict(os.environ, APT_CONFIG=str(conf)),
    )
    if "flightrec: " in out.stderr and "trixie" not in out.stderr:
        pytest.skip(f"vm run stops earlier here: {out.stderr.strip()}")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    hint = "make setup" if not Path(vmkernel.APT_SOURCES).is_file() else "apt-get update"
    assert "trixie-backports" in lines[0] and hint in lines[0], lines[0]


# Excerpts of real guest consoles (Debian's 6.12 and 6.1 cloud kernels under QEMU 7.2 TCG).
OOPS_AT_BOOT = """\
[   17.253698] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[   17.253698] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 6.12.117+deb12-cloud-amd64 #1  Debian 6.12.117-1~deb12u1
[   17.253698] RIP: 0010:enqueue_timer+0xa5/0x100
[   17.253698] Call Trace:
[   17.253698]  <IRQ>
[   17.253698]  add_timer_on+0xfb/0x160
[   17.253698]  clocksource_watchdog+0x439/0x5a0
[   17.253698]  </IRQ>
[   17.253698]  <TASK>
[   17.253698]  asm_sysvec_apic_timer_interrupt+0x1a/0x20
[   17.253698] RIP: 0010:kfree+0x126/0x370
[   17.253698] ---[ end trace 0000000000000000 ]---
[   17.253698] RIP: 0010:enqueue_timer+0xa5/0x100
[   17.253698] Kernel panic - not syncing: Fatal exception in interrupt
[   17.253698] Shutting down cpus with NMI
"""

HUNG = """\
[   30.520878] watchdog: BUG: soft lockup - CPU#0 stuck for 13s! [poke.sh:142]
[   30.520878] RIP: 0010:smp_call_function_many_cond+0xf1/0x330
[   30.520878] RIP: 0033:0x7fc807a5e350
[   38.819141] Sending NMI from CPU 0 to CPUs 1:
[   17.796992] NMI backtrace for cpu 1
[   17.796992] RIP: 0010:kprobe_int3_handler+0xd1/0x1b0
[   17.796992]  exc_int3+0x44/0x120
[   17.796992] RIP: 0010:__schedule+0x1bd/0xa00
[   52.530934] watchdog: BUG: soft lockup - CPU#0 stuck for 35s! [poke.sh:142]
[   52.530934] RIP: 0010:smp_call_function_many_cond+0xf1/0x330
"""


def test_kernel_reports_say_what_and_where():
    assert kernel_reports(HUNG) == [
        "BUG: soft lockup - CPU#0 stuck for 13s! [poke.sh:142] at smp_call_function_many_cond+0xf1/0x330",
        "NMI backtrace for cpu 1 at kprobe_int3_handler+0xd1/0x1b0 < __schedule+0x1bd/0xa00",
    ]
    assert kernel_reports("flightrec-vm: ready 5.6\n") == []


# The init's stall watcher, sysrq w and a faulthandler dump, as a console shows them
# (faulthandler writes to /dev/console directly: no kernel timestamps).
STALLED = """\
flightrec-vm: stall vCPU 1: its heartbeat's write to the job folder (virtiofs) has not returned for 8 s
[   25.501000] sysrq: Show Blocked State
[   25.502000] task:sh              state:D stack:0     pid:77    tgid:77    ppid:1      flags:0x00004002
flightrec-vm: stall task 1 init S do_wait
flightrec-vm: stall task 77 sh D fuse_simple_request
flightrec-vm: stall task 78 sh S request_wait_answer
flightrec-vm: stall task 190 python3 S do_select
Thread 0x00007f2e1c9ff6c0 (most recent call first):
  File "/work/flightrec/flightrec/vm/guest.py", line 52 in watch
  File "/usr/lib/python3.11/threading.py", line 975 in run

Current thread 0x00007f2e1d6b3740 (most recent call first):
  File "/usr/lib/python3.11/subprocess.py", line 2040 in _wait
  File "/work/flightrec/flightrec/record/traffic.py", line 283 in stop
  File "/work/flightrec/flightrec/record/session.py", line 792 in _stop_and_save
  File "<string>", line 1 in <module>
flightrec-vm: stall vCPU 0: its heartbeat loop has not run for 9 s
"""


def test_the_guests_own_account_of_a_hang_is_one_line():
    assert guest_stall(STALLED) == (
        "vCPU 1: its heartbeat's write to the job folder (virtiofs) has not returned for 8 s; "
        "waiting in the kernel: sh (pid 77, D in fuse_simple_request), sh (pid 78, S in request_wait_answer); "
        "flightrec's main thread at flightrec/record/traffic.py:283 in stop "
        "< flightrec/record/session.py:792 in _stop_and_save"
    )
    assert guest_stall(HUNG) == ""  # the kernel's reports are kernel_reports' business
    assert guest_stall("flightrec-vm: stall task 1 init S do_wait\n") == ""  # no reason: said nothing


def test_the_init_script_is_valid_shell_and_its_markers_are_filled():
    script = initramfs.init_script()
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    for marker in ("STALL_MARKER", "STALL_AFTER", "DUMP_PIDS", "HEARTBEAT_FILE", "READY_MARKER"):
        assert marker not in script
    assert initramfs.STALL in script and initramfs.DUMP_PIDS in script
    # the scheduler's trace hooks are pinned while one vCPU runs, before the others come online
    assert script.index("initcall_finish/enable") < script.index('echo 1 > "$c/online"')


def test_death_reason_puts_the_panic_first_then_its_oops():
    assert death_reason(OOPS_AT_BOOT) == (
        "Kernel panic - not syncing: Fatal exception in interrupt; "
        "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI at enqueue_timer+0xa5/0x100 "
        "< kfree+0x126/0x370"
    )
    assert death_reason("one\ntwo\n\nthree\n") == "one | two | three"
    assert death_reason("") == "(no console output)"
