"""`pip install` from a fresh clone, used from another folder: the package carries what it runs.

A clone of this checkout's committed HEAD is built into a wheel by pip (the
pyproject build backend, in its isolated build environment), the wheel is
installed into a fresh venv outside the checkout, and the installed
`flightrec` is run from an empty folder: analyze with the C helpers, doctor
finding the forwarder, and, as root, a 10 s recording.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "seed-fill-order.txt"
sys.path.insert(0, str(ROOT / "tests" / "kernel"))
from recordkit import skip_unless_can_record, snapshot  # noqa: E402

pytestmark = [pytest.mark.slow]

# Words in pip's output that mean it could not reach a package index.
OFFLINE = (
    "Could not find a version that satisfies",
    "No matching distribution",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
)


def _pip(py: Path, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(py), "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 and any(w in proc.stdout + proc.stderr for w in OFFLINE):
        pytest.skip(
            f"pip {args[0]} needs a package index (build backend or dependencies): "
            + (proc.stderr.strip().splitlines() or ["?"])[-1]
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _can_build_bpf() -> bool:
    if not (shutil.which("clang") and shutil.which("make") and shutil.which("pkg-config")):
        return False
    return subprocess.run(["pkg-config", "--exists", "libxdp", "libbpf"]).returncode == 0


def _build_and_install(base: Path, env: dict[str, str]) -> Path:
    """Clone, build the wheel with ``env``, install it into a fresh venv: its `flightrec` script."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs git and a git checkout to clone")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    dist = base / "dist"
    proc = subprocess.run(
        [str(py), "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps", "-w", str(dist), str(clone)],
        cwd=base,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if proc.returncode != 0 and any(w in proc.stdout + proc.stderr for w in OFFLINE):
        pytest.skip(
            "building the wheel needs setuptools>=74.1 from a package index: "
            + (proc.stderr.strip().splitlines() or ["?"])[-1]
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(dist.glob("flightrec-*.whl"))
    assert len(wheels) == 1, wheels
    _pip(py, "install", "-q", str(wheels[0]), cwd=base)
    return env_dir / "bin" / "flightrec"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `flightrec` script of a venv holding the wheel built from a fresh clone."""
    env = dict(os.environ)
    if _can_build_bpf():
        env["FLIGHTREC_REQUIRE_PROGRAMS"] = "1"  # here a c/ build failure is a failure
    return _build_and_install(tmp_path_factory.mktemp("wheel"), env)


def test_without_compilers_it_installs_analyzes_and_says_what_to_install(tmp_path):
    # clang and the C compiler answer "not installed": c/ and the extensions fail to build.
    shim = tmp_path / "shim"
    shim.mkdir()
    for name in ("clang", "cc", "gcc"):
        (shim / name).write_text('#!/bin/sh\necho "$0: not installed (test shim)" >&2\nexit 127\n')
        (shim / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '')}", "CC": str(shim / "cc")}
    env.pop("FLIGHTREC_REQUIRE_PROGRAMS", None)
    flightrec = _build_and_install(tmp_path / "build", env)
    site = flightrec.parents[1]
    assert not list(site.glob("lib/python*/site-packages/flightrec/bin")), "programs from a failed build"
    assert not list(site.glob("lib/python*/site-packages/flightrec/_scan*.so"))
    cwd = _empty_dir(tmp_path)
    shutil.copyfile(FIXTURE, cwd / "trace.txt")
    proc = _run(flightrec, "analyze", "--json", "trace.txt", cwd=cwd)
    assert proc.returncode == 1 and json.loads(proc.stdout)["verdict"] == "kernel", proc.stderr
    lines = _doctor_lines(flightrec, cwd)
    for package in ("clang", "libxdp-dev", "libbpf-dev", "bpftool", "pkg-config"):
        assert package in lines["forwarder"], lines["forwarder"]
    assert "MISSING" in lines["forwarder"] and "reinstall flightrec" in lines["forwarder"]
    assert "missing (optional)" in lines["C helpers"] and "apt-get install gcc" in lines["C helpers"]


def _empty_dir(tmp_path: Path) -> Path:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


def _run(flightrec: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FLIGHTREC_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    return subprocess.run([str(flightrec), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _doctor_lines(flightrec: Path, cwd: Path) -> dict[str, str]:
    proc = _run(flightrec, "doctor", cwd=cwd)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    lines = {}
    for line in proc.stdout.splitlines():
        lines[re.split(r"\s{2,}", line, maxsplit=1)[0]] = line  # name, status, detail: 2+ spaces apart
    return lines


def test_installed_outside_the_checkout(installed):
    site = installed.parents[1]
    out = subprocess.run(
        [str(site / "bin" / "python"), "-c", "import flightrec; print(flightrec.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out.startswith(str(site)) and not out.startswith(str(ROOT)), out


def test_analyze_with_c_helpers(installed, tmp_path):
    cwd = _empty_dir(tmp_path)
    trace = cwd / "trace.txt"
    shutil.copyfile(FIXTURE, trace)
    proc = _run(installed, "analyze", "--json", "trace.txt", cwd=cwd)
    assert proc.returncode == 1, proc.stderr  # the seed excerpt holds the kernel's FILL-order anomaly
    assert json.loads(proc.stdout)["verdict"] == "kernel"
    helpers = _doctor_lines(installed, cwd)["C helpers"]
    assert " ok " in helpers and "in use" in helpers, helpers
    assert str(installed.parents[1]) in helpers, helpers  # the installed ones, not a checkout's


def test_doctor_finds_the_forwarder(installed, tmp_path):
    line = _doctor_lines(installed, _empty_dir(tmp_path))["forwarder"]
    if not _can_build_bpf():
        # Built without clang/libxdp: doctor must say what to install.
        assert "MISSING" in line and "libxdp-dev" in line and "clang" in line, line
        pytest.skip("clang, make, pkg-config or libxdp/libbpf missing here: the wheel carries no forwarder")
    assert " ok " in line and f"{installed.parents[1]}/lib/" in line and line.endswith("/flightrec/bin/forwarder")


def test_the_marker_library_comes_with_the_install(installed, tmp_path):
    """`flightrec markers --cflags` names the installed header, a program compiles with it,
    and the Python module imports from the install."""
    cwd = _empty_dir(tmp_path)
    cflags = _run(installed, "markers", "--cflags", cwd=cwd)
    assert cflags.returncode == 0 and cflags.stdout.startswith(f"-I{installed.parents[1]}/lib/"), cflags
    cc = shutil.which("cc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build against the header")
    (cwd / "uses.c").write_text(
        '#include <flightrec/xsk_markers.h>\nint main(void) { struct fr_markers m; return fr_markers_open(&m, ""); }\n'
    )
    subprocess.run(
        [cc, "-Wall", "-Wextra", "-Werror", *cflags.stdout.split(), "-o", str(cwd / "uses"), str(cwd / "uses.c")],
        check=True,
        timeout=120,
    )
    assert subprocess.run([str(cwd / "uses")], timeout=30).returncode == 0
    py = installed.parent / "python"
    out = subprocess.run(
        [str(py), "-c", "import flightrec.markers as m; print(m.__file__, m.Markers.open().enabled)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin"},
    )
    assert out.stdout.startswith(str(installed.parents[1])) and out.stdout.split()[1] == "False", out.stdout


@pytest.mark.kernel
def test_record_from_an_empty_folder(installed, tmp_path):
    skip_unless_can_record()
    if not _can_build_bpf():
        pytest.skip("the wheel carries no forwarder here (no clang/libxdp)")
    before = snapshot()
    cwd = _empty_dir(tmp_path)
    proc = _run(installed, "record", "--duration", "10", "--plain", cwd=cwd, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = cwd / "flightrec-out"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["outcome"] == "clean" and meta["trace"]["fill_to_rx_markers"] > 0, meta.get("trace")
    assert json.loads((out / "analysis.json").read_text())["verdict"] == "clean"
    assert (out / "report.html").stat().st_size > 0 and (out / "trace.pftrace").stat().st_size > 0
    assert "verdict: clean" in proc.stdout
    assert snapshot() == before
