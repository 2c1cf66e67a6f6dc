"""The analyzer reads one way: parse (format) → model → checks → report; no
module imports one later in that order (README.md, Layout)."""

import ast
from pathlib import Path

import flightrec

ORDER = ["parse", "model", "checks", "report"]
ROOT = Path(flightrec.__file__).parent


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_import_points_back_up():
    back = []
    for i, layer in enumerate(ORDER):
        for path in sorted((ROOT / layer).glob("*.py")):
            for name in imported(path):
                parts = name.split(".")
                if parts[0] == "flightrec" and len(parts) > 1 and parts[1] in ORDER[i + 1 :]:
                    back.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not back, back


def test_only_parse_reads_event_text():
    """model/ takes typed columns: it never reaches the parsers' readers."""
    readers = {"flightrec.parse.fields", "flightrec.parse.scan"}
    for path in sorted((ROOT / "model").glob("*.py")):
        assert not imported(path) & readers, path
