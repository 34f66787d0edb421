"""Producing records and waiting for Kafka's acknowledgement, per request.

The gateway answers a publish only after every record it wrote for that request (accepted
events to the usage topic, rejected ones to the dead-letter topic) was acknowledged by the
broker with ``acks=all``: an OK answer means durable. One idempotent producer serves all
requests (librdkafka batches across them); a background thread serves delivery reports
and each request waits on its own :class:`Receipt`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_producer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]


class Receipt:
    """Delivery of one group of records; :meth:`wait` until all are reported."""

    def __init__(self, count: int) -> None:
        self._pending = count
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.errors: list[tuple[int, str]] = []
        if count == 0:
            self._done.set()

    def report(self, index: int, error: KafkaError | str | None) -> None:
        with self._lock:
            if error is not None:
                text = error if isinstance(error, str) else f"{error.name()}: {error.str()}"
                self.errors.append((index, text))
            self._pending -= 1
            if self._pending <= 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        """True when every record was reported (successfully or not) within ``timeout``."""
        return self._done.wait(timeout)

    @property
    def ok(self) -> bool:
        return self._done.is_set() and not self.errors


class AckingProducer:
    """An idempotent ``acks=all`` producer with per-request delivery receipts."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        ack_timeout: float,
        client_id: str = "ingest",
        **overrides: Any,
    ) -> None:
        self.ack_timeout = ack_timeout
        settings: dict[str, Any] = {
            # Give up (and answer UNAVAILABLE) instead of holding a request for minutes.
            "message.timeout.ms": max(1000, int(ack_timeout * 1000)),
            "linger.ms": 5,
        }
        settings.update(overrides)
        self._producer = make_producer(kafka, client_id=client_id, **settings)
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="ingest-kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self._producer.poll(0.1)

    def send(self, records: Sequence[Record]) -> Receipt:
        """Produce ``records``; the receipt completes when all are acknowledged or failed."""
        receipt = Receipt(len(records))
        deadline = time.monotonic() + self.ack_timeout
        for index, record in enumerate(records):

            def delivered(error: KafkaError | None, _msg: Any, index: int = index) -> None:
                receipt.report(index, error)

            while True:
                try:
                    self._producer.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=record.headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # local queue full: wait for the poller to drain it
                    if time.monotonic() > deadline:
                        receipt.report(index, "local producer queue full")
                        break
                    time.sleep(0.005)
        return receipt

    def ready(self, timeout: float = 5.0) -> bool:
        """True when the cluster answered a metadata request (readiness)."""
        try:
            self._producer.list_topics(timeout=timeout)
        except Exception:  # any failure means not ready
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the poller."""
        self._stopped.set()
        self._poller.join()
        left = self._producer.flush(timeout)
        if left:
            log.warning("ingest producer closed with %d undelivered records", left)
