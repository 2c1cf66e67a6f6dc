import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixtures() -> pathlib.Path:
    return FIXTURES


@pytest.fixture
def artifacts_dir(tmp_path) -> pathlib.Path:
    """Where a test keeps what CI should keep (traces): $FLIGHTREC_ARTIFACTS or a temp dir."""
    base = os.environ.get("FLIGHTREC_ARTIFACTS")
    return pathlib.Path(base) if base else tmp_path
