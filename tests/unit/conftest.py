"""Unit tests: each starts from the same builder state, whatever ran before it."""

from __future__ import annotations

import pytest

from tests.support import builders


@pytest.fixture(autouse=True)
def _events_numbered_from_zero() -> None:
    builders.restart_numbering()
