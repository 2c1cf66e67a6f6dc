import pytest

from recordkit import skip_unless_can_record, snapshot


@pytest.fixture
def machine():
    """Skip unless recording is possible; assert the machine is unchanged afterwards."""
    skip_unless_can_record()
    before = snapshot()
    yield before
    assert snapshot() == before
