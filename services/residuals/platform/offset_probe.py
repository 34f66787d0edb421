"""A consumer group's positions as Kafka sees them, read from outside the group.

Stream processors whose consumer belongs to a framework (faust) use this to check it:
the committed offsets, the high watermarks, and whether a range of offsets holds records.
The probe's own consumer carries the group id (committed offsets are looked up by group)
but never subscribes, so it never joins the group or commits; one lock serialises callers
from different threads (librdkafka handles are not shared between threads here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer

log = logging.getLogger(__name__)


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
        """Per partition (where the group resumes, high watermark): the committed offset,
        or with nothing committed yet the log start (the group reads from the earliest
        record, ``auto.offset.reset=earliest``)."""
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

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """Where the group resumes each partition (see :meth:`positions`)."""
        return {p: start for p, (start, _high) in self.positions(topic, partitions).items()}

    def start_uncommitted_at_log_start(self, topic: str) -> dict[int, int]:
        """Give every partition of ``topic`` the group has no committed offset for one: its
        log start (where ``auto.offset.reset=earliest`` would begin anyway). Returns what
        was committed. Kafka accepts this only while the group has no members, i.e. before
        the first worker joins; later the members' own commits exist and nothing is done.

        Why: faust seeks only partitions *with* a committed offset back after a rebalance,
        so records it fetched and then dropped during recovery are skipped on a partition
        without one, and its commit logic has no committed offset to notice the hole.
        """
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            metadata = self._consumer.list_topics(topic, timeout=self.timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        missing = [p for p, offset in self.committed(topic, partitions).items() if offset is None]
        if not missing:
            return {}
        starts: dict[int, int] = {}
        with self._lock:
            for p in missing:
                low, _high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self.timeout, cached=False
                )
                starts[p] = low
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(topic, p, o) for p, o in starts.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:  # members joined meanwhile: theirs count
                log.info("log-start offsets not committed", extra={"reason": str(exc)})
                return {}
        return starts

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
