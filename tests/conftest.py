"""Fixtures shared by every test tier.

``stack`` gives integration and e2e tests the real local Kafka broker and PostgreSQL
server (see `residuals stack`). It reuses a stack that is already healthy and leaves it
running; whatever it had to start itself, it stops when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from residuals.platform.config import load
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings


@pytest.fixture(scope="session")
def stack() -> Iterator[StackSettings]:
    """The running stack's settings: ``.bootstrap_servers``, ``.dsn``, ``.topic_partitions``."""
    settings = load(StackSettings)
    started: tuple[str, ...] = ()
    if not lifecycle.health(settings).healthy:
        started = lifecycle.up(settings).started
    # Code under test that reads KafkaSettings / PostgresSettings finds this stack.
    patch = pytest.MonkeyPatch()
    for name, value in settings.exports().items():
        patch.setenv(name, value)
    try:
        yield settings
    finally:
        patch.undo()
        if started:
            lifecycle.down(settings, only=started)


@pytest.fixture(scope="session")
def stack_env(stack: StackSettings) -> dict[str, str]:
    """Environment for subprocesses that should use the local stack."""
    return {**os.environ, **stack.exports()}
