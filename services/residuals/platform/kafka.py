"""confluent-kafka clients configured the one way money-carrying code needs them.

Producers are idempotent with ``acks=all``: a retried send can neither be lost nor
duplicated inside a partition, which is what lets every sink de-duplicate by
``(vendor_id, event_id)`` alone. Consumers never auto-commit and read only committed
records: sinks store their offsets in PostgreSQL in the same transaction as their rows
(docs/ARCHITECTURE.md), and must never see records of an aborted transaction.

The ``*_config`` functions are pure (tested without a broker); ``make_*`` build clients;
:class:`AcknowledgedProducer` is how every service produces and waits for Kafka's
acknowledgement.
Extra librdkafka properties (SASL, tuning) go in ``**overrides`` with their dotted names,
e.g. ``make_producer(kafka, **{"linger.ms": 50})``; overrides win over the defaults.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from residuals.platform.config import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from residuals.platform.topics import Topic
    from residuals.v1.common_pb2 import TraceContext

ConfigValue = str | int | float | bool
KafkaConfig = dict[str, Any]

log = logging.getLogger(__name__)

# Throughput defaults, sized for tens of thousands of small (~300 byte) events per second:
# wait a few ms to fill batches and allow large ones. Latency stays far below the 1-2 s
# publish->alert/ledger targets. No compression: the meter reads these topics with faust
# (aiokafka), which can only decode lz4/zstd/snappy when the optional `cramjam` package is
# installed, and it is not a dependency. Override per producer if the consumers can.
PRODUCER_DEFAULTS: dict[str, ConfigValue] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 10,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 500_000,
    "message.timeout.ms": 120_000,
}

CONSUMER_DEFAULTS: dict[str, ConfigValue] = {
    "enable.auto.commit": False,
    # Sinks call store_offsets/commit themselves (after their transaction commits).
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 100,
    "max.poll.interval.ms": 300_000,
    "session.timeout.ms": 45_000,
}


#: W3C Trace Context header names on Kafka records (what the consumers extract).
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"


def trace_headers(trace: TraceContext | None) -> list[tuple[str, bytes]]:
    """The Kafka headers that continue the trace a record's message carries (none when it
    carries none), so a consumer joins the trace of the request that caused the record."""
    if trace is None or not trace.traceparent:
        return []
    headers = [(TRACEPARENT_HEADER, trace.traceparent.encode("ascii", "replace"))]
    if trace.tracestate:
        headers.append((TRACESTATE_HEADER, trace.tracestate.encode("ascii", "replace")))
    return headers


def topic_name(kafka: KafkaSettings, topic: Topic | str) -> str:
    """The physical topic name: ``RESIDUALS_TOPIC_PREFIX`` + the catalogue name.

    Accepts a :class:`residuals.platform.topics.Topic` or a plain base name, so tests can
    use throw-away topics and every service resolves catalogue topics the same way.
    """
    base = topic if isinstance(topic, str) else topic.name
    if not base:
        raise ValueError("empty topic name")
    return f"{kafka.topic_prefix}{base}"


def _base(kafka: KafkaSettings, client_id: str | None) -> KafkaConfig:
    config: KafkaConfig = {"bootstrap.servers": kafka.bootstrap_servers}
    if client_id:
        config["client.id"] = client_id
    return config | security_config(kafka)


def security_config(kafka: KafkaSettings) -> KafkaConfig:
    """librdkafka's security settings (SASL/SCRAM principals in production, ACLs per vendor)."""
    config: KafkaConfig = {}
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol.lower()
    if kafka.uses_sasl:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password or ""
    if kafka.uses_ssl and kafka.ssl_ca_location:
        config["ssl.ca.location"] = kafka.ssl_ca_location
    return config


def producer_config(
    kafka: KafkaSettings,
    *,
    transactional_id: str | None = None,
    client_id: str | None = None,
    **overrides: Any,
) -> KafkaConfig:
    """librdkafka configuration of an idempotent (optionally transactional) producer."""
    config = _base(kafka, client_id) | PRODUCER_DEFAULTS
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.update(overrides)
    if config.get("transactional.id") and not config.get("enable.idempotence"):
        raise ValueError("a transactional producer must be idempotent")
    return config


def consumer_config(
    kafka: KafkaSettings,
    group_id: str,
    *,
    read_committed: bool = True,
    client_id: str | None = None,
    **overrides: Any,
) -> KafkaConfig:
    """librdkafka configuration of a manually committing consumer in ``group_id``."""
    if not group_id:
        raise ValueError("a consumer needs a group id")
    config = _base(kafka, client_id) | CONSUMER_DEFAULTS
    config["group.id"] = group_id
    config["isolation.level"] = "read_committed" if read_committed else "read_uncommitted"
    config.update(overrides)
    return config


def admin_config(kafka: KafkaSettings, **overrides: Any) -> KafkaConfig:
    """librdkafka configuration of an admin client."""
    return _base(kafka, None) | overrides


def make_producer(
    kafka: KafkaSettings,
    *,
    transactional_id: str | None = None,
    client_id: str | None = None,
    **overrides: Any,
) -> Producer:
    """An idempotent producer (``acks=all``); transactional when given an id.

    A transactional producer still needs ``init_transactions()`` before use. Call
    ``poll()`` regularly (or ``flush()``) so delivery reports and logs are served.
    """
    from confluent_kafka import Producer

    config = producer_config(
        kafka, transactional_id=transactional_id, client_id=client_id, **overrides
    )
    config.setdefault("logger", logging.getLogger("residuals.kafka.producer"))
    return Producer(config)


def make_consumer(
    kafka: KafkaSettings,
    group_id: str,
    *,
    read_committed: bool = True,
    client_id: str | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with auto-commit off and ``isolation.level=read_committed``."""
    from confluent_kafka import Consumer

    config = consumer_config(
        kafka, group_id, read_committed=read_committed, client_id=client_id, **overrides
    )
    config.setdefault("logger", logging.getLogger("residuals.kafka.consumer"))
    return Consumer(config)


def make_admin(kafka: KafkaSettings, **overrides: Any) -> AdminClient:
    """An admin client (topic creation, metadata, offsets)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(admin_config(kafka, **overrides))


# --- producing with acknowledgements ------------------------------------------------------


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge every record sent before an acknowledgement barrier."""

    def __init__(self, unacknowledged: int, errors: Sequence[Any]) -> None:
        self.unacknowledged = unacknowledged
        self.errors = list(errors)
        shown = [str(e) for e in self.errors[:5]]
        super().__init__(f"{unacknowledged} records unacknowledged; errors: {shown}")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce as part of a group confirmed by one :class:`Receipt`."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] = field(default_factory=list)
    partition: int = -1


class Receipt:
    """Kafka's answer for a group of records: :meth:`wait` until every one is reported,
    then :attr:`errors` (index, text) and :attr:`landed` (index -> topic, partition, offset)."""

    def __init__(self, count: int) -> None:
        self._pending = count
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.errors: list[tuple[int, str]] = []
        self.landed: dict[int, tuple[str, int, int]] = {}
        if count == 0:
            self._done.set()

    def report(self, index: int, error: Any, message: Any = None) -> None:
        with self._lock:
            if error is not None:
                text = error if isinstance(error, str) else f"{error.name()}: {error.str()}"
                self.errors.append((index, text))
            elif message is not None:
                self.landed[index] = (message.topic(), message.partition(), message.offset())
            self._pending -= 1
            if self._pending <= 0:
                self._done.set()

    def reporter(self, index: int) -> Callable[[Any, Any], None]:
        """The delivery callback of record ``index``."""
        return lambda error, message: self.report(index, error, message)

    def wait(self, timeout: float) -> bool:
        """True when every record was reported (acknowledged or failed) within ``timeout``."""
        return self._done.wait(timeout)

    @property
    def ok(self) -> bool:
        return self._done.is_set() and not self.errors


class AcknowledgedProducer:
    """The one way Residuals produces records and learns they are durable.

    An idempotent ``acks=all`` producer (:func:`make_producer`) with two ways to confirm:

    * :meth:`send` many records, then :meth:`acknowledge` (or ``await`` :meth:`barrier`):
      waits for every record sent so far and raises :class:`DeliveryFailed` if any was
      refused. Failures reach one producer-wide callback (a Python callback per
      acknowledged record costs ~1 µs, at three to four records per usage event in the
      meter), so only failures are reported unless ``report_successes``.
    * :meth:`send_group`: records confirmed by their own :class:`Receipt` (the gateway
      answers each request when its records are acknowledged; a re-drive needs the offset
      its record landed at). Needs ``report_successes``; with ``background_poll`` a thread
      serves the reports, so waiting on a receipt needs no :meth:`acknowledge`.

    A full local queue is waited out by serving delivery reports (``BufferError``). The
    licensing outbox relay is the one transactional producer: its acknowledgement is the
    transaction's commit (``licensing/outbox.py``).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        client_id: str,
        report_successes: bool = False,
        background_poll: bool = False,
        **overrides: Any,
    ) -> None:
        self.errors: list[Any] = []
        tuning: dict[str, Any] = {
            "on_delivery": self._delivered,
            "delivery.report.only.error": not report_successes,
            **overrides,
        }
        self.producer = make_producer(kafka, client_id=client_id, **tuning)
        self._stopped = threading.Event()
        self._poller: threading.Thread | None = None
        if background_poll:
            self._poller = threading.Thread(
                target=self._poll, name=f"{client_id}-kafka-poll", daemon=True
            )
            self._poller.start()

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.errors.append(error)

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self.producer.poll(0.1)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int = -1,
        timestamp: int = 0,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        give_up_at: float | None = None,
    ) -> bool:
        """Produce one record (confirmed by the next :meth:`acknowledge`, or by
        ``on_delivery``); False when the local queue stayed full past ``give_up_at``
        (``time.monotonic()``). Raises what librdkafka raises for a record it cannot
        produce at all (too large, unknown partition)."""
        produce = self.producer.produce
        while True:
            try:
                if on_delivery is not None:
                    produce(
                        topic,
                        value,
                        key,
                        partition,
                        timestamp=timestamp,
                        headers=headers,
                        on_delivery=on_delivery,
                    )
                elif headers:
                    produce(topic, value, key, partition, timestamp=timestamp, headers=headers)
                else:
                    produce(topic, value, key, partition, timestamp=timestamp)
                return True
            except BufferError:  # local queue full: let deliveries drain
                if give_up_at is not None and time.monotonic() > give_up_at:
                    return False
                if self._poller is None:
                    self.producer.poll(0.05)
                else:
                    time.sleep(0.005)

    def send_group(
        self, records: Sequence[Outgoing], *, give_up_at: float | None = None
    ) -> Receipt:
        """Produce ``records``; the receipt completes when each is acknowledged or failed."""
        receipt = Receipt(len(records))
        for index, record in enumerate(records):
            if not self.send(
                record.topic,
                record.key,
                record.value,
                partition=record.partition,
                headers=record.headers,
                on_delivery=receipt.reporter(index),
                give_up_at=give_up_at,
            ):
                receipt.report(index, "local producer queue full")
        return receipt

    def acknowledge(self, timeout: float = 120.0) -> None:
        """Wait until every record sent so far is acknowledged; :class:`DeliveryFailed`
        if any was refused or some are still unacknowledged after ``timeout``."""
        remaining = self.producer.flush(timeout)
        if remaining or self.errors:
            errors, self.errors = self.errors, []
            raise DeliveryFailed(remaining, errors)

    async def barrier(self, timeout: float = 120.0) -> None:
        """:meth:`acknowledge` without blocking the event loop."""
        await asyncio.to_thread(self.acknowledge, timeout)

    def ready(self, timeout: float = 5.0) -> bool:
        """True when the cluster answered a metadata request (readiness)."""
        try:
            self.producer.list_topics(timeout=timeout)
        except Exception:  # any failure means not ready
            return False
        return True

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout``) and stop the poller; returns how
        many records were left undelivered (logged)."""
        self._stopped.set()
        if self._poller is not None:
            self._poller.join()
        left = int(self.producer.flush(timeout))
        if left:
            log.warning("producer closed with undelivered records", extra={"records": left})
        return left
