"""Test-suite wiring: the shared fixtures and each test's tier marker.

Fixtures and helpers live in :mod:`tests.support`; the modules in ``pytest_plugins`` hold
the fixtures every test can ask for (the stack's, and the payouts close tests' ``world``).
A test's tier is its directory: everything under ``tests/unit`` is marked ``unit``, under
``tests/integration`` ``integration`` and under ``tests/e2e`` ``e2e``, so ``-m integration``
selects a tier without each module repeating ``pytestmark``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.payouts"]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by ``-m``
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
