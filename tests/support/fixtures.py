"""Fixtures shared by every test tier (tests/conftest.py makes them available to all tests).

``stack`` gives integration and e2e tests the real local Kafka broker and PostgreSQL
server (see `residuals stack`). It reuses a stack that is already healthy and leaves it
running; whatever it had to start itself, it stops when the session ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from residuals.platform.config import KafkaSettings, load
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


@pytest.fixture
def new_topic(stack: StackSettings) -> Iterator[Callable[[str, int], tuple[KafkaSettings, str]]]:
    """``new_topic(prefix, partitions)``: a topic of the test's own on the local broker
    (and its Kafka settings), deleted when the test ends."""
    from confluent_kafka.admin import NewTopic

    from residuals.platform.kafka import make_admin

    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    admin = make_admin(kafka)
    created: list[str] = []

    def create(prefix: str, partitions: int) -> tuple[KafkaSettings, str]:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
            future.result(timeout=60)
        created.append(name)
        return kafka, name

    yield create
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=60)
