"""A restarted ledger writer (``python -m residuals.ledger``, a real process) gets its
partitions back in seconds, not after the Kafka session timeout (45 s):

* stopped with SIGTERM, the sink closes its consumer, which leaves the group, so the next
  process is assigned at the next rebalance;
* killed with SIGKILL it cannot leave; with static membership (``SINK_GROUP_INSTANCE_ID``)
  the next process with the same instance id takes the dead one's place at once.

Readiness is the service's gRPC health: SERVING once its partitions are assigned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import topic_name
from residuals.platform.topics import USAGE_RATED
from residuals.stack.settings import StackSettings
from tests.support.alerts import delete_topics
from tests.support.ledger import Ledger
from tests.support.service_process import ServiceProcess, run_service
from tests.support.sink import (
    LEDGER_TOPICS,
    create_topics,
    isolated_kafka,
    produce,
)
from tests.support.waiting import wait_until

#: librdkafka's default session timeout is 45 s; a restart must take a fraction of it.
FAST = 20.0
GROUP = "ledger-writer"


@pytest.fixture
def kafka(stack: StackSettings) -> Iterator[KafkaSettings]:
    kafka = isolated_kafka(stack, "restart", partitions=3)
    create_topics(kafka, LEDGER_TOPICS)
    try:
        yield kafka
    finally:
        with psycopg.connect(stack.dsn) as conn:
            conn.execute(
                "DELETE FROM consumer_offsets WHERE group_id = %s",
                (f"{kafka.topic_prefix}{GROUP}",),
            )
        delete_topics(kafka)


def _env(stack_env: dict[str, str], kafka: KafkaSettings, **extra: str) -> dict[str, str]:
    return {
        **stack_env,
        "RESIDUALS_TOPIC_PREFIX": kafka.topic_prefix,
        "LEDGER_CONSUMER_GROUP": GROUP,
        "LOG_LEVEL": "INFO",
        **extra,
    }


def _ready_in(service: ServiceProcess, timeout: float = 60.0) -> float:
    started = time.monotonic()
    service.wait_healthy(timeout)
    return time.monotonic() - started


def _logs(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_a_stopped_writer_leaves_the_group_and_its_successor_starts_at_once(
    stack: StackSettings, stack_env: dict[str, str], kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = _env(stack_env, kafka)
    with run_service("ledger", env, _logs(tmp_path, "first")) as first:
        _ready_in(first)
        assert first.stop() == 0
        logs = [line.get("message") for line in first.logs()]
        assert "partitions revoked" in logs  # the consumer was closed: it left the group
    with run_service("ledger", env, _logs(tmp_path, "second")) as second:
        seconds = _ready_in(second)
        assert seconds < FAST, f"the successor waited {seconds:.1f} s for its partitions"
        _stores_a_record(stack, kafka)


def test_a_killed_static_member_is_replaced_at_once(
    stack: StackSettings, stack_env: dict[str, str], kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = _env(stack_env, kafka, SINK_GROUP_INSTANCE_ID="ledger-0")
    with run_service("ledger", env, _logs(tmp_path, "first")) as first:
        _ready_in(first)
        first.kill(timeout=10)  # no clean leave: SIGKILL
    with run_service("ledger", env, _logs(tmp_path, "second")) as second:
        seconds = _ready_in(second)
        assert seconds < FAST, f"the replacement waited {seconds:.1f} s for its partitions"
        _stores_a_record(stack, kafka)


def _stores_a_record(stack: StackSettings, kafka: KafkaSettings) -> None:
    """The process that got the partitions also writes: one rated record is ledgered."""
    ledger = Ledger(stack.dsn)
    try:
        message = ledger.rated(ledger.event("after-restart"))
        produce(kafka, [(topic_name(kafka, USAGE_RATED), 1, message.value(), message.headers())])
        wait_until(
            lambda: bool(
                ledger.rows("SELECT 1 FROM usage_events WHERE vendor_id = %s", ledger.vendor)
            ),
            30,
            "the record to be ledgered by the restarted writer",
        )
    finally:
        ledger.cleanup()
