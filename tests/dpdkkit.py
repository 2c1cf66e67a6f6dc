"""An AF_XDP program flightrec did not write: DPDK's testpmd with its AF_XDP
poll-mode driver, from Debian's packages.

The packages are downloaded (``apt-get download``) and unpacked with
``dpkg-deb -x`` under /var/cache/flightrec/dpdk/<version>/, never installed:
testpmd runs from there with LD_LIBRARY_PATH and loads the two drivers it
needs by path (``-d``). The guest of ``vm record`` sees the host's root, so
the same command line runs there.

testpmd forwards port 0 <-> port 1 (``io`` mode); each port is an AF_XDP
PMD on one of the interfaces flightrec gives the program (``{outer}``,
``{inner}``), with libxdp's XDP program. Record with ``--queues 1``: the PMD
takes a device's queue count from its ethtool *combined* channels, which
veth does not report, so it binds one socket per veth, on queue 0.
``--stats-period`` keeps it running until SIGTERM (without it testpmd waits
for a key on its standard input, which is closed, and exits at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

CACHE = Path(os.environ.get("FLIGHTREC_DPDK_CACHE", "/var/cache/flightrec/dpdk"))
PACKAGE = "dpdk-dev"  # holds /usr/bin/dpdk-testpmd; what it needs at run time, not its headers
NOT_NEEDED = {"libdpdk-dev", "python3"}
DRIVER_PACKAGES = ("librte-net-af-xdp23", "librte-mempool-ring23")  # not among dpdk-dev's own
LIBDIR = "usr/lib/x86_64-linux-gnu"
DRIVERS = ("librte_mempool_ring", "librte_net_af_xdp")
TIMEOUT = 900  # seconds for the downloads (about 40 MB)
RUNTIME_DIR = Path("/run/dpdk")  # EAL's own, made even with --no-shconf (left empty)


def _run(*argv: str, cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ...: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def _candidate(package: str) -> Optional[str]:
    for line in _run("apt-cache", "policy", package).splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def _installed() -> set[str]:
    out = _run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n")
    return {
        name.split(":")[0]
        for name, _, status in (ln.partition(" ") for ln in out.splitlines())
        if status == "installed"
    }


def _runtime_packages() -> list[str]:
    """dpdk-dev's run-time dependencies, recursively, that this machine lacks."""
    direct = [
        ln.split(":", 1)[1].strip()
        for ln in _run("apt-cache", "depends", "--no-recommends", "--no-suggests", PACKAGE).splitlines()
        if ln.strip().startswith("Depends:")
    ]
    roots = [p for p in direct if not p.startswith("<") and p not in NOT_NEEDED] + list(DRIVER_PACKAGES)
    out = _run(
        "apt-cache",
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        *roots,
    )
    have = _installed()
    names = {ln.strip() for ln in out.splitlines() if not ln.startswith(" ") and not ln.startswith("<")}
    return sorted(n for n in names if n and n not in have)


def dpdk_testpmd_root() -> tuple[Optional[Path], str]:
    """The unpacked tree holding usr/bin/dpdk-testpmd, or (None, why not)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None, "needs apt-get and dpkg-deb (Debian)"
    try:
        version = _candidate(PACKAGE)
        if version is None:
            return None, f"apt knows no {PACKAGE} (run apt-get update)"
        root = CACHE / version / "root"
        if (root.parent / "complete").exists():
            return root, ""
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp)
            _run(
                "apt-get",
                "download",
                "-q",
                "-o",
                "APT::Sandbox::User=root",
                f"{PACKAGE}={version}",
                *_runtime_packages(),
                cwd=work,
            )
            tree = work / "root"
            for deb in sorted(work.glob("*.deb")):
                _run("dpkg-deb", "-x", str(deb), str(tree))
            if not (tree / "usr/bin/dpdk-testpmd").is_file():
                return None, f"{PACKAGE} {version} has no usr/bin/dpdk-testpmd"
            shutil.rmtree(root.parent, ignore_errors=True)
            root.parent.mkdir(parents=True)
            tree.rename(root)
            (root.parent / "complete").write_text(version + "\n")
        return root, ""
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return None, f"cannot fetch DPDK's testpmd: {e}"


def pmd_dir(root: Path) -> Path:
    return next((root / LIBDIR / "dpdk").glob("pmds-*"))


def dpdk_testpmd_app(root: Path, lcores: str = "0-1") -> str:
    """`record --app` / `vm record --app` command running testpmd between {outer} and {inner}."""
    libs = root / LIBDIR
    drivers = " ".join(f"-d {min(pmd_dir(root).glob(d + '.so.*'))}" for d in DRIVERS)
    ports = " ".join(
        f"--vdev net_af_xdp{i},iface={{{name}}},start_queue=0,queue_count={{queues}},busy_budget=0"
        for i, name in enumerate(("outer", "inner"))
    )
    return (
        f"env LD_LIBRARY_PATH={libs} {root}/usr/bin/dpdk-testpmd -l {lcores} --no-huge -m 256 --no-pci "
        f"--no-shconf --no-telemetry {drivers} {ports} -- --forward-mode=io --auto-start "
        "--rxq={queues} --txq={queues} --nb-cores=1 --total-num-mbufs=8192 --stats-period 10"
    )


@contextmanager
def dpdk_runtime_dir_removed() -> Iterator[None]:
    """Remove the EAL's runtime folder afterwards, if it was not there before."""
    existed = RUNTIME_DIR.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(RUNTIME_DIR, ignore_errors=True)
