"""An in-process replica of a compacted topic: every partition, latest value per key.

Services that need a whole registry locally (the meter needs every licence and every
vendor signing key) read its compacted topic from the beginning and keep following it.
This is what a faust ``GlobalTable`` does, without its documented failure mode (with
several app instances a GlobalTable can get stuck in an infinite recovery loop; faust's
own docstring recommends one partition as the workaround) and without joining a consumer
group: the replica assigns itself every partition, so any number of instances can read.

Values are kept as the record bytes (callers decode on demand); a tombstone (null value)
deletes the key. Reads from other threads are safe: each update is a single dict
operation under the GIL.

A reader of a registry must never stop on a record, nor forget a good value because of a
bad one. So a replica can be given a ``check`` (:meth:`TopicReplica.admit_with`): a record
it refuses - undecodable, out of bounds, a tombstone where nothing is ever deleted - is
poison. So is a record without a key. Poison is quarantined (the ``quarantine`` callback,
e.g. :meth:`residuals.platform.quarantine.QuarantinePublisher.publish`, with the replica's
``name`` as the consumer; without one it is logged and counted in
``residuals_quarantined_records_total``) and skipped: the key keeps its last good value,
and reading goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer
from residuals.platform.quarantine import Quarantined, quarantine_metrics, report

log = logging.getLogger(__name__)

#: Refuses a record (key, value) by raising; the exception is the quarantine's first error.
RecordCheck = Callable[[bytes, bytes | None], None]


class TopicReplica(Mapping[bytes, bytes]):
    """``key`` → latest value of a compacted topic, kept current by a background thread."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        name: str,
        poll_timeout: float = 0.2,
        on_update: Callable[[bytes, bytes | None], None] | None = None,
        check: RecordCheck | None = None,
        quarantine: Callable[[Quarantined], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.name = name
        self.poll_timeout = poll_timeout
        self.on_update = on_update
        self.check = check
        self.quarantine = quarantine
        # The series exists from the start at 0, so an alert on its first increase fires.
        quarantine_metrics().records.labels(name, topic)
        self._data: dict[bytes, bytes] = {}
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets: dict[int, int] = {}
        self.records = 0
        #: Records refused (quarantined) since start.
        self.poisoned = 0

    # --- Mapping ---------------------------------------------------------------------------

    def __getitem__(self, key: bytes) -> bytes:
        return self._data[key]

    def get(self, key: bytes, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def admit_with(self, check: RecordCheck) -> TopicReplica:
        """Keep only records ``check`` accepts; it sees tombstones too (value None), so a
        registry whose records are never deleted refuses them. Set before :meth:`start`."""
        self.check = check
        return self

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> TopicReplica:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"replica-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def wait_caught_up(self, timeout: float) -> bool:
        """Block until every record present at start has been read (readiness)."""
        return self._caught_up.wait(timeout)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the reader ------------------------------------------------------------------------

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

        extra: dict[str, Any] = {"enable.partition.eof": True}
        consumer = make_consumer(
            self.kafka,
            # A group id is required by librdkafka, but nothing is committed and partitions
            # are assigned explicitly, so instances never share or rebalance anything.
            f"{self.kafka.topic_prefix}replica-{self.name}",
            **extra,
        )
        try:
            while not self._stop.is_set():
                try:
                    metadata = consumer.list_topics(self.topic, timeout=10)
                    partitions = sorted(metadata.topics[self.topic].partitions)
                    if not partitions:
                        raise KafkaException(f"topic {self.topic} has no partitions")
                    for p in partitions:
                        _low, high = consumer.get_watermark_offsets(
                            TopicPartition(self.topic, p), timeout=10
                        )
                        self._targets[p] = high
                    break
                except (KafkaException, KeyError):
                    log.warning("replica waiting for topic", extra={"topic": self.topic})
                    time.sleep(1.0)
            else:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            self._check_caught_up({})
            positions: dict[int, int] = {}
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=10_000, timeout=self.poll_timeout):
                    error = message.error()
                    partition, offset = message.partition(), message.offset()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        log.warning("replica read error", extra={"error": str(error)})
                        continue
                    if partition is None or offset is None:
                        continue
                    if error is not None:  # end of partition: offset is the next one
                        positions[partition] = offset
                        continue
                    self._apply(message)
                    positions[partition] = offset + 1
                if not self._caught_up.is_set():
                    self._check_caught_up(positions)
        except Exception:
            log.exception("replica reader failed", extra={"topic": self.topic})
            raise
        finally:
            consumer.close()

    def _apply(self, message: Any) -> None:
        """Take one record, or quarantine it; never raises (the reader must go on)."""
        key, value = message.key(), message.value()
        self.records += 1
        if key is None:
            self._poison(message, "record without a key")
            return
        if self.check is not None:
            try:
                self.check(key, value)
            except Exception as error:  # any refusal: the record is poison, not the reader
                self._poison(message, error)
                return
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value
        if self.on_update is not None:
            try:
                self.on_update(key, value)
            except Exception:
                log.exception("replica update callback failed", extra={"topic": self.topic})

    def _poison(self, message: Any, error: BaseException | str) -> None:
        self.poisoned += 1
        record = Quarantined.of(self.name, message, error)
        if self.quarantine is not None:
            try:
                self.quarantine(record)  # publishes, logs and counts it
                return
            except Exception:
                log.exception("quarantine failed", extra={"consumer": self.name})
        report(record)  # counted and logged, at least

    def _check_caught_up(self, positions: Mapping[int, int]) -> None:
        if all(positions.get(p, 0) >= high for p, high in self._targets.items() if high > 0):
            self._caught_up.set()
            log.info(
                "replica caught up",
                extra={"topic": self.topic, "keys": len(self._data), "records": self.records},
            )
