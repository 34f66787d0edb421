"""aiokafka, as faust drives it after a rebalance, on the real broker: seeking to the
committed offsets must also rewind a partition committed at offset 0."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from residuals.platform.config import KafkaSettings
from residuals.platform.faust_app import seek_committed_zero_too
from residuals.platform.kafka import make_producer


@pytest.fixture
def topic(new_topic: Callable[[str, int], tuple[KafkaSettings, str]]) -> tuple[KafkaSettings, str]:
    kafka, name = new_topic("seek", 1)
    producer = make_producer(kafka)
    for i in range(5):
        producer.produce(name, value=b"r %d" % i, partition=0)
    assert producer.flush(30) == 0
    return kafka, name


async def _position_after_seek_to_committed(kafka: KafkaSettings, name: str) -> tuple[int, int]:
    """Read the partition to its end, commit 0, seek to committed: (before, after)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"{name}-group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(name, 0)
        read = 0
        while read < 5:
            batches = await consumer.getmany(timeout_ms=10_000)
            read += sum(len(records) for records in batches.values())
        await consumer.commit({tp: 0})
        before = await consumer.position(tp)
        committed = await consumer.seek_to_committed()
        assert committed[tp] == 0
        return before, await consumer.position(tp)
    finally:
        await consumer.stop()


def test_a_partition_committed_at_zero_is_rewound_to_zero(
    topic: tuple[KafkaSettings, str],
) -> None:
    seek_committed_zero_too()
    seek_committed_zero_too()  # applying it twice changes nothing
    assert asyncio.run(_position_after_seek_to_committed(*topic)) == (5, 0)
