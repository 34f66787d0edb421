"""A consumer group's positions as Kafka sees them, read from outside the group.

Stream processors whose consumer belongs to a framework (faust) use this to check it:
the committed offsets, the high watermarks, and whether a range of offsets holds records.
The probe's own consumer carries the group id (committed offsets are looked up by group)
but never subscribes, so it never joins the group or commits; one lock serialises callers
from different threads (librdkafka handles are not shared between threads here).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer


class OffsetProbe:
    def __init__(self, kafka: KafkaSettings, group_id: str, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._consumer: Any = make_consumer(kafka, group_id, client_id=f"{group_id}-probe")
        self._lock = threading.Lock()

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset (next to read) per partition; ``None``: none yet."""
        from confluent_kafka import TopicPartition

        if not partitions:
            return {}
        with self._lock:
            found = self._consumer.committed(
                [TopicPartition(topic, p) for p in partitions], timeout=self.timeout
            )
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def positions(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Per partition (committed offset, high watermark); with nothing committed yet the
        log start counts as committed (the group starts from the earliest record)."""
        from confluent_kafka import TopicPartition

        committed = self.committed(topic, partitions)
        out: dict[int, tuple[int, int]] = {}
        with self._lock:
            for p in partitions:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self.timeout, cached=False
                )
                start = committed.get(p)
                out[p] = (low if start is None else start, high)
        return out

    def has_records(self, topic: str, partition: int, start: int, end: int) -> bool:
        """Whether offsets ``start`` up to (excluding) ``end`` hold a record this group
        would read (``read_committed``: transaction markers and aborted records do not
        count). Undecided (no answer in time) counts as yes: the caller then re-reads."""
        from confluent_kafka import TopicPartition

        with self._lock:
            consumer = self._consumer
            consumer.assign([TopicPartition(topic, partition, start)])
            try:
                messages = consumer.consume(num_messages=1, timeout=self.timeout)
            finally:
                consumer.unassign()
        for message in messages:
            if message.error() is None:
                return bool(message.offset() < end)
        return True

    def close(self) -> None:
        with self._lock:
            self._consumer.close()
