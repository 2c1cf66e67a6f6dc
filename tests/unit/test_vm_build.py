"""The project's kernel recipes (flightrec/vm/build.py): patches that exist, touch
only the file their recipe names and apply; no kernel is built here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flightrec.errors import FlightrecError
from flightrec.vm import build


@pytest.mark.parametrize("name", build.NAMES)
def test_each_patch_touches_only_the_file_its_recipe_names(name):
    recipe = build.KERNELS[name]
    for patch in recipe.patches:
        text = (build.KERNELS_DIR / patch).read_text()
        targets = set(re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M))
        assert targets == {recipe.source.patched}, (patch, targets)


def test_every_package_has_one_file_its_patches_touch():
    by_package: dict[str, set[str]] = {}
    for recipe in build.KERNELS.values():
        by_package.setdefault(recipe.source.package, set()).add(recipe.source.patched)
    assert all(len(files) == 1 for files in by_package.values()), by_package


def _fake(monkeypatch, tmp_path: Path, patch_text: str) -> Path:
    """A recipe `fake` for the pristine file `a.c` in a private cache and kernels folder."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "fake.patch").write_text(patch_text)
    source = build.Source("linux-source-fake", "drivers/a.c")
    monkeypatch.setattr(build, "KERNELS_DIR", kernels)
    monkeypatch.setitem(build.KERNELS, "fake", build.Recipe(source, ("fake.patch",)))
    monkeypatch.setitem(build.KERNELS, "fake-pristine", build.Recipe(source, ()))
    cache = tmp_path / "cache"
    (cache / "src").mkdir(parents=True)
    (cache / "src" / "linux-source-fake.a.c.orig").write_text("int a;\nint b;\n")
    return cache


PATCH = "--- a/drivers/a.c\n+++ b/drivers/a.c\n@@ -1,2 +1,2 @@\n int a;\n-int b;\n+int c;\n"


def test_patched_source_is_the_pristine_file_with_the_recipes_patches(monkeypatch, tmp_path):
    cache = _fake(monkeypatch, tmp_path, PATCH)
    assert build.patched_source("fake-pristine", cache) == b"int a;\nint b;\n"
    assert build.patched_source("fake", cache) == b"int a;\nint c;\n"


def test_a_patch_that_does_not_apply_is_one_clear_error(monkeypatch, tmp_path):
    cache = _fake(monkeypatch, tmp_path, PATCH.replace("-int b;", "-int x;"))
    with pytest.raises(FlightrecError, match=r"fake.patch does not apply to linux-source-fake's drivers/a.c"):
        build.patched_source("fake", cache)


def test_the_file_in_the_tree_is_rewritten_only_when_it_differs(monkeypatch, tmp_path):
    cache = _fake(monkeypatch, tmp_path, PATCH)
    tree = cache / "src" / "linux-source-fake"
    (tree / "drivers").mkdir(parents=True)
    target = tree / "drivers" / "a.c"
    target.write_text("int a;\nint c;\n")
    before = target.stat().st_mtime_ns
    build._set_patched(tree, "fake", cache)  # already the patched text: make must not rebuild it
    assert target.stat().st_mtime_ns == before
    build._set_patched(tree, "fake-pristine", cache)
    assert target.read_text() == "int a;\nint b;\n"
