"""Can a guest kernel's driver do AF_XDP zero-copy? Answered on the host, before booting.

``vm record --mode zerocopy`` must fail at once, with one line naming what is
missing, where the guest cannot do it, rather than after a boot (or, worse,
by falling back to copy). What the host can see without booting:

- veth has no AF_XDP zero-copy in any kernel (no ``NETDEV_XDP_ACT_XSK_ZEROCOPY``);
- virtio_net without its AF_XDP hooks cannot. 6.11 brought RX zero-copy
  (``virtnet_xsk_wakeup``, its ``ndo_xsk_wakeup``), but the driver sets
  ``NETDEV_XDP_ACT_XSK_ZEROCOPY``, which ``xp_assign_dev()`` checks, only
  since 6.13, together with zero-copy TX (its calls to
  ``xsk_tx_peek_release_desc_batch``). Measured: Debian 12's 6.1 has neither
  (no symbol at all), its 6.12 has the RX half and its bind fails with
  EOPNOTSUPP, Debian 13's 7.3 binds zero-copy. Read from the module's
  symbol table (Debian ships virtio_net as a module, ``.ko`` or ``.ko.xz``).

What it cannot see (the ``xdp_features`` flag the driver sets, the DMA API at
run time) is left to the bind in the guest, which fails with its own one line.
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path
from typing import Optional

from flightrec.vm.initramfs import module_name
from flightrec.vm.kernel import VM_CACHE, GuestKernel, cached_debian_kernel

# The driver's AF_XDP wakeup (6.11, RX): without an ndo_xsk_wakeup xp_assign_dev refuses XDP_ZEROCOPY.
VIRTIO_XSK_SYMBOL = "virtnet_xsk_wakeup"
# Zero-copy TX (6.13), which came with NETDEV_XDP_ACT_XSK_ZEROCOPY in xdp_features.
VIRTIO_XSK_TX_SYMBOL = "xsk_tx_peek_release_desc_batch"


def module_path(modules_dir: Path, name: str) -> Optional[Path]:
    """The file of module ``name`` (from modules.dep), or None when absent or built in."""
    try:
        lines = (modules_dir / "modules.dep").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        ko = line.split(":", 1)[0]
        if module_name(ko) == name:
            return modules_dir / ko
    return None


def module_symbols(path: Path) -> set[str]:
    """The names in a kernel module's symbol table (.ko or .ko.xz).

    :raises OSError, ValueError: unreadable or not an ELF module.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    try:
        elf = ELFFile(io.BytesIO(data))
        symtab = elf.get_section_by_name(".symtab")
    except ELFError as e:
        raise ValueError(f"{path} is not an ELF module: {e}") from None
    if not isinstance(symtab, SymbolTableSection):
        return set()
    return {sym.name for sym in symtab.iter_symbols() if sym.name}


def zerocopy_missing(kernel: GuestKernel, nic: str) -> Optional[str]:
    """What keeps ``nic`` in ``kernel`` from AF_XDP zero-copy, seen from the host; None when
    nothing visible does."""
    if nic == "veth":
        return (
            "veth has no AF_XDP zero-copy in any kernel (it never sets NETDEV_XDP_ACT_XSK_ZEROCOPY): use --nic virtio"
        )
    if kernel.modules_dir is None:
        return None  # a bzImage with everything built in: the bind in the guest decides
    path = module_path(kernel.modules_dir, "virtio_net")
    if path is None:
        return None
    try:
        symbols = module_symbols(path)
    except (OSError, ValueError, lzma.LZMAError):
        return None
    if not symbols:
        return None
    if VIRTIO_XSK_SYMBOL not in symbols:
        return (
            f"virtio_net of kernel {kernel.release} has no AF_XDP zero-copy at all (no {VIRTIO_XSK_SYMBOL} "
            f"in {path.name}); zero-copy came whole with Linux 6.13: use --kernel 7.3, or --mode copy"
        )
    if VIRTIO_XSK_TX_SYMBOL not in symbols:
        return (
            f"virtio_net of kernel {kernel.release} has AF_XDP zero-copy RX only (no {VIRTIO_XSK_TX_SYMBOL} in "
            f"{path.name}) and so no NETDEV_XDP_ACT_XSK_ZEROCOPY: the bind would fail with EOPNOTSUPP; "
            "zero-copy came whole with Linux 6.13: use --kernel 7.3, or --mode copy"
        )
    return None


def cached_kernels(cache: Path = VM_CACHE) -> list[GuestKernel]:
    """The Debian kernels fetched into ``cache`` (no apt, no network), oldest series first."""
    out = [k for k in (cached_debian_kernel(d, d.name) for d in sorted(cache.glob("linux-image-*"))) if k]
    return sorted(out, key=lambda k: [int(p) if p.isdigit() else 0 for p in k.release.split("-")[0].split(".")[:2]])
