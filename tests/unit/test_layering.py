"""The library never imports the CLI, and only flightrec/locate.py derives paths from __file__."""

from __future__ import annotations

import ast
from pathlib import Path

import flightrec

PACKAGE = Path(flightrec.__file__).resolve().parent


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        bad = sorted(n for n in _imports(path) if n == "flightrec.cli" or n.startswith("flightrec.cli."))
        if bad:
            offenders.append(f"{rel}: {', '.join(bad)}")
    assert len(_modules()) > 50 and not offenders, offenders


# The analysis, in the order its data flows (docs/architecture.md): each step may
# import the steps before it, never one after it, and none imports recording.
ANALYSIS_STEPS = ("flightrec.parse", "flightrec.model", "flightrec.checks", "flightrec.analysis", "flightrec.report")
RECORDING = ("flightrec.record", "flightrec.vm", "flightrec.probes", "flightrec.tracefs", "flightrec.cli")


def _step(module: str, steps: tuple[str, ...]) -> int | None:
    return next((i for i, s in enumerate(steps) if module == s or module.startswith(s + ".")), None)


def test_the_analysis_flows_one_way():
    offenders = []
    for path in _modules():
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        me = ".".join(p for p in rel.parts if p != "__init__")
        mine = _step(me, ANALYSIS_STEPS)
        if mine is None:
            continue
        for name in _imports(path):
            later = _step(name, ANALYSIS_STEPS)
            if (later is not None and later > mine) or _step(name, RECORDING) is not None:
                offenders.append(f"{me} imports {name}")
    assert not offenders, offenders


def test_only_locate_finds_paths_from_its_own_file():
    offenders = []
    for path in _modules():
        if path.name == "locate.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Name) and node.id == "__file__":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_the_package_build_ships_what_locate_looks_for():
    """setup.py cannot import flightrec in its build environment: its list is checked here."""
    from flightrec import locate

    tree = ast.parse((PACKAGE.parent / "setup.py").read_text())
    shipped = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PROGRAMS" for t in n.targets)
    )
    assert sorted(shipped) == sorted([*locate.PROGRAMS, *locate.BPF_OBJECTS])
