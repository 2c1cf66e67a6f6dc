"""The package build's one custom step: build c/ and ship its programs.

Everything declarative (metadata, the C helpers as extensions, package data)
is in pyproject.toml. What setuptools cannot declare is the forwarder, the BPF
loaders and the BPF objects: c/Makefile builds them (clang, libxdp, libbpf,
bpftool), here into a folder under the build folder, and build_py puts them in
flightrec/bin/ of the wheel, where flightrec/locate.py finds them.

They are built when the package is built, not on first use: `record` runs as
root and must not start by compiling, and the machine that installs flightrec is
the one that runs it (the programs link the system's libxdp and libbpf). Without
the build tools the package still builds and installs (analysis is pure Python
where the C helpers are missing too) and `flightrec doctor` names what to
install. An editable install (`make setup`) skips this: `make build` builds
c/ into build/c/, where locate.py looks in a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# What c/Makefile builds that flightrec runs (keep in step with flightrec/locate.py).
PROGRAMS = ("forwarder", "xsk_trace", "widen", "stamp", "xdp_meta.bpf.o", "widen.bpf.o")
REQUIRED_ENV = "FLIGHTREC_REQUIRE_PROGRAMS"  # "1": a failed c/ build fails the package build


class BuildPyWithPrograms(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        self._build_programs(Path(self.build_lib) / "flightrec" / "bin")

    def _build_programs(self, dest: Path) -> None:
        # A fresh output folder: a checkout's own build (vmlinux.h of another kernel) stays out.
        work = (Path(self.get_finalized_command("build").build_temp) / "c").resolve()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)  # a failed build must not ship an earlier one
        # bpftool lives in /usr/sbin, which a user's PATH (pipx) may lack.
        path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
        bpftool = shutil.which("bpftool", path=path) or "bpftool"
        jobs = str(os.cpu_count() or 1)
        try:
            proc = subprocess.run(
                ["make", "-C", "c", "-j", jobs, f"OUT={work}", f"BPFTOOL={bpftool}", "all"],
                capture_output=True,
                text=True,
                check=False,
            )
            # The compiler's or pkg-config's own words, not make's "Error 1" after them.
            lines = [
                ln
                for ln in (proc.stderr or proc.stdout).splitlines()
                if ln.strip() and not ln.startswith(("make:", "make["))
            ]
            why = None if proc.returncode == 0 else lines[-1] if lines else f"make exit {proc.returncode}"
        except OSError as err:
            why = f"make: {err.strerror}"
        if why is not None:
            msg = (
                f"flightrec: c/ not built ({why}); the forwarder and loaders are left out, so "
                "`flightrec record` cannot run from this install (`flightrec doctor` says what to install)"
            )
            if os.environ.get(REQUIRED_ENV) == "1":
                raise SystemExit(msg)
            self.warn(msg)
            return
        dest.mkdir(parents=True, exist_ok=True)
        for name in PROGRAMS:
            self.copy_file(str(work / name), str(dest / name))


setup(cmdclass={"build_py": BuildPyWithPrograms})
