"""The offset probe on the real broker: a group's committed offsets and high watermarks, and
whether a range of offsets holds records (aborted transactions and markers do not)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing

import pytest
from confluent_kafka import TopicPartition

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer, make_producer
from residuals.platform.offset_probe import OffsetProbe


@pytest.fixture
def topic(new_topic: Callable[[str, int], tuple[KafkaSettings, str]]) -> tuple[KafkaSettings, str]:
    return new_topic("probe", 2)


def _wait_high_watermark(kafka: KafkaSettings, topic: str, high: int) -> None:
    consumer = make_consumer(kafka, f"{topic}-watermarks")
    try:
        deadline = time.monotonic() + 30
        while consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] < high:
            assert time.monotonic() < deadline, "abort marker not written"
            time.sleep(0.1)
    finally:
        consumer.close()


def test_committed_offsets_watermarks_and_records_in_a_range(
    topic: tuple[KafkaSettings, str],
) -> None:
    kafka, name = topic
    producer = make_producer(kafka)
    for i in range(5):
        producer.produce(name, value=b"plain %d" % i, partition=0)
    assert producer.flush(30) == 0

    # Offsets 5..8 of partition 0: an aborted transaction of three records and its marker;
    # 9 and 10: plain records again.
    txn = make_producer(kafka, transactional_id=f"{name}-txn", **{"message.timeout.ms": 30000})
    txn.init_transactions(30)
    txn.begin_transaction()
    for i in range(3):
        txn.produce(name, value=b"aborted %d" % i, partition=0)
    txn.flush(30)
    txn.abort_transaction(30)
    # The coordinator writes the abort marker (offset 8) shortly after: wait for it.
    _wait_high_watermark(kafka, name, 9)
    for i in range(2):
        producer.produce(name, value=b"after %d" % i, partition=0)
    assert producer.flush(30) == 0

    group = f"{name}-group"
    with closing(OffsetProbe(kafka, group)) as probe:
        assert probe.committed(name, [0, 1]) == {0: None, 1: None}
        assert probe.positions(name, [0, 1]) == {0: (0, 11), 1: (0, 0)}

        member = make_consumer(kafka, group)
        member.commit(offsets=[TopicPartition(name, 0, 4)], asynchronous=False)
        member.close()
        assert probe.committed(name, [0, 1]) == {0: 4, 1: None}
        assert probe.positions(name, [0]) == {0: (4, 11)}
        assert probe.resume_offsets(name, [0, 1]) == {0: 4, 1: 0}

        assert probe.has_records(name, 0, 2, 5)  # plain records
        assert not probe.has_records(name, 0, 5, 9)  # aborted records and the marker only
        assert probe.has_records(name, 0, 5, 10)  # reaches "after 0" at offset 9
        assert probe.committed(name, [0]) == {0: 4}  # looking commits nothing


def test_partitions_without_a_commit_start_at_the_log_start_while_the_group_is_empty(
    topic: tuple[KafkaSettings, str],
) -> None:
    kafka, name = topic
    producer = make_producer(kafka)
    for i in range(4):
        producer.produce(name, value=b"r %d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    group = f"{name}-group"
    member = make_consumer(kafka, group)
    member.commit(offsets=[TopicPartition(name, 1, 2)], asynchronous=False)
    member.close()

    with closing(OffsetProbe(kafka, group)) as probe:
        assert probe.start_uncommitted_at_log_start(name) == {0: 0}
        assert probe.committed(name, [0, 1]) == {0: 0, 1: 2}  # partition 1 kept its own
        assert probe.start_uncommitted_at_log_start(name) == {}  # nothing left to do


def test_log_start_offsets_are_not_committed_once_the_group_has_members(
    topic: tuple[KafkaSettings, str],
) -> None:
    kafka, name = topic
    group = f"{name}-group"
    with closing(make_consumer(kafka, group)) as member:
        member.subscribe([name])
        deadline = time.monotonic() + 60
        while not member.assignment():
            assert time.monotonic() < deadline, "member not assigned"
            member.poll(0.2)
        with closing(OffsetProbe(kafka, group)) as probe:
            assert probe.start_uncommitted_at_log_start(name) == {}  # Kafka refuses outsiders
            assert probe.committed(name, [0, 1]) == {0: None, 1: None}
