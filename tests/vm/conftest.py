"""Real QEMU guests: skipped with the reason when QEMU, virtiofsd, busybox-static,
root or the kernel package cannot be had. Each VM test keeps under ~2.5 min."""

from __future__ import annotations

import pytest

from vmkit import skip_unless_vm


@pytest.fixture(scope="session")
def guest_kernel():
    """Debian's 6.1 cloud kernel with its debug vmlinux (fetched once, cached)."""
    skip_unless_vm()
    from flightrec.errors import FlightrecError
    from flightrec.vm.kernel import guest_kernel as fetch

    try:
        return fetch(None)
    except FlightrecError as e:
        pytest.skip(f"cannot fetch the guest kernel: {e}")
