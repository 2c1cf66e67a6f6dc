"""Fixtures for the probe tests (helpers in probekit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from probekit import MINI_SPECS, gcc


@pytest.fixture(scope="session")
def mini_elf(tmp_path_factory) -> Path:
    """mini_xsk.c built like a distro kernel: -g -O2, DWARF 5, with .debug_aranges."""
    return gcc(tmp_path_factory.mktemp("elf") / "mini", "-g", "-O2")


@pytest.fixture(scope="session")
def mini_specs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "mini.toml"
    path.write_text(MINI_SPECS)
    return path
