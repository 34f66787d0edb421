"""Quarantine: where a consumer puts a record it cannot process, so the line moves on.

A poison record must never stop a partition, a sink or a period close. Every consumer
that meets a record it cannot process (undecodable, out of bounds, or one that makes its
write fail) turns it into a :class:`Quarantined` - the record exactly as read, where it
was read, and the first error - and carries on with the next one:

* consumers with a database (the ledger writer, the alerts service, the relays) store it
  with :func:`store` in the ``quarantine`` table (migration 0008), in the transaction that
  commits the rest of their batch;
* consumers without one (the meter's licence and key readers) publish it with
  :class:`QuarantinePublisher` to ``residuals.quarantine.v1``, which the ledger writer
  stores the same way.

Either way ``residuals_quarantined_records_total{consumer, topic}`` counts it (an alert
rule fires on any increase), and ``residuals dlq quarantine list|show|redrive`` lets an
operator look at it and produce it back to its topic once the defect is fixed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from psycopg import Connection

from residuals.codecs.timestamps import bounded_datetime, set_timestamp
from residuals.domain.bounds import MAX_ERROR_CHARS as MAX_ERROR_CHARS  # re-exported
from residuals.domain.bounds import describe as describe  # re-exported (lives with printable)
from residuals.domain.bounds import printable
from residuals.platform.kafka import AcknowledgedProducer, DeliveryFailed
from residuals.v1 import quarantine_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One record set aside by ``consumer``: as read, where read, and why."""

    consumer: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    quarantined_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, consumer: str, message: Any, error: BaseException | str) -> Quarantined:
        """From a confluent-kafka ``Message`` and what went wrong with it."""
        return cls(
            consumer=consumer,
            topic=message.topic() or "",
            partition=int(message.partition() or 0),
            offset=int(message.offset() or 0),
            key=message.key(),
            value=message.value(),
            error=describe(error),
            headers=normalise_headers(message.headers()),
        )

    def to_proto(self) -> quarantine_pb2.QuarantinedRecord:
        record = quarantine_pb2.QuarantinedRecord(
            consumer=self.consumer,
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=self.offset,
            key=self.key or b"",
            value=self.value or b"",
            has_value=self.value is not None,
            headers=[quarantine_pb2.RecordHeader(key=k, value=v) for k, v in self.headers],
            error=self.error,
        )
        set_timestamp(record.quarantined_at, self.quarantined_at)
        return record

    @classmethod
    def from_proto(cls, record: quarantine_pb2.QuarantinedRecord) -> Quarantined:
        return cls(
            consumer=printable(record.consumer, 128),
            topic=printable(record.source_topic, 256),
            partition=record.source_partition,
            offset=record.source_offset,
            key=bytes(record.key) or None,
            value=bytes(record.value) if record.has_value else None,
            error=printable(record.error, MAX_ERROR_CHARS),
            headers=tuple((bytes(h.key), bytes(h.value)) for h in record.headers),
            quarantined_at=bounded_datetime(record, "quarantined_at") or datetime.now(UTC),
        )


def normalise_headers(raw: Any) -> tuple[tuple[bytes, bytes], ...]:
    """Kafka headers (confluent's list of pairs, or a mapping) as byte pairs."""
    if not raw:
        return ()
    items = raw.items() if hasattr(raw, "items") else raw
    out: list[tuple[bytes, bytes]] = []
    for key, value in items:
        k = key if isinstance(key, bytes) else str(key).encode("utf-8", "backslashreplace")
        v = b"" if value is None else value if isinstance(value, bytes) else str(value).encode()
        out.append((k, v))
    return tuple(out)


def _headers_blob(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    return quarantine_pb2.QuarantinedRecord(
        headers=[quarantine_pb2.RecordHeader(key=k, value=v) for k, v in headers]
    ).SerializeToString()


def headers_from_blob(blob: bytes) -> tuple[tuple[bytes, bytes], ...]:
    record = quarantine_pb2.QuarantinedRecord.FromString(blob)
    return tuple((bytes(h.key), bytes(h.value)) for h in record.headers)


_INSERT = """
INSERT INTO quarantine (consumer, source_topic, source_partition, source_offset,
                        record_key, record_value, record_headers, error, quarantined_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (consumer, source_topic, source_partition, source_offset) DO NOTHING
"""


def insert(conn: Connection[Any], records: Iterable[Quarantined]) -> list[Quarantined]:
    """Insert ``records`` in the caller's transaction; returns those that were new (a
    re-delivered record is kept once). Counts and logs nothing: see :func:`report`."""
    new: list[Quarantined] = []
    with conn.cursor() as cur:
        for r in records:
            cur.execute(
                _INSERT,
                (
                    printable(r.consumer, 128),
                    printable(r.topic, 256),
                    r.partition,
                    r.offset,
                    r.key,
                    r.value,
                    _headers_blob(r.headers),
                    describe(r.error),
                    r.quarantined_at,
                ),
            )
            if cur.rowcount:
                new.append(r)
    return new


def store(
    conn: Connection[Any], records: Iterable[Quarantined], metrics: QuarantineMetrics | None = None
) -> int:
    """Insert ``records`` and report the new ones; returns how many were new. For callers
    whose transaction ends right after; a sink defers the report (:class:`Pending`)."""
    new = insert(conn, records)
    for record in new:
        report(record, metrics)
    return len(new)


def store_once(conn: Connection[Any], records: Sequence[Quarantined]) -> int:
    """:func:`store` for records a reader meets again on every pass (the period close, a
    dry run and every reconciliation read the same rows): those already stored are left
    alone before anything is written, so each is one row, counted and logged once."""
    new = [
        r
        for r in records
        if conn.execute(
            "SELECT 1 FROM quarantine WHERE consumer = %s AND source_topic = %s"
            " AND source_partition = %s AND source_offset = %s",
            (r.consumer, r.topic, r.partition, r.offset),
        ).fetchone()
        is None
    ]
    return store(conn, new) if new else 0


class Pending:
    """Quarantine rows written in a transaction that has not committed yet.

    A sink applies parts of a batch in savepoints while it isolates a poison record, and
    retries a batch the database failed: rows are inserted at once, in the transaction,
    but counted and logged only when it commits (:meth:`committed`), so an attempt that
    was rolled back counts nothing and a record is counted once.
    """

    def __init__(self, metrics: QuarantineMetrics | None = None) -> None:
        self.metrics = metrics
        self._records: list[Quarantined] = []

    def store(self, conn: Connection[Any], records: Iterable[Quarantined]) -> int:
        new = insert(conn, records)
        self._records.extend(new)
        return len(new)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Forget what is stored inside the block if it raises (its savepoint rolls back)."""
        mark = len(self._records)
        try:
            yield
        except BaseException:
            del self._records[mark:]
            raise

    def committed(self) -> None:
        records, self._records = self._records, []
        for record in records:
            report(record, self.metrics)

    def rolled_back(self) -> None:
        self._records.clear()


def report(record: Quarantined, metrics: QuarantineMetrics | None = None) -> None:
    """Count a quarantined record in the metric and log it (escaped, bounded)."""
    (metrics or quarantine_metrics()).count(record)
    log.warning(
        "record quarantined",
        extra={
            "consumer": printable(record.consumer, 128),
            "topic": printable(record.topic, 256),
            "partition": record.partition,
            "offset": record.offset,
            "error": describe(record.error),
        },
    )


class QuarantineMetrics:
    """``residuals_quarantined_records_total``: one series for every consumer."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records = Counter(
            "residuals_quarantined_records_total",
            "Records a consumer could not process and set aside (quarantine table or "
            "residuals.quarantine.v1), by consumer and source topic.",
            ("consumer", "topic"),
            registry=registry,
        )

    def count(self, record: Quarantined) -> None:
        self.records.labels(printable(record.consumer, 64), printable(record.topic, 128)).inc()


@functools.cache
def quarantine_metrics() -> QuarantineMetrics:
    """The series on the global registry, created once per process."""
    return QuarantineMetrics()


class QuarantinePublisher:
    """For consumers without a database: publish to ``residuals.quarantine.v1`` and wait
    for the acknowledgement (a quarantined record is not lost if the process dies next)."""

    def __init__(
        self, producer: AcknowledgedProducer, topic: str, metrics: QuarantineMetrics | None = None
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics or quarantine_metrics()

    def publish(self, record: Quarantined, timeout: float = 30.0) -> None:
        value = record.to_proto().SerializeToString()
        self.producer.send(self.topic, record.consumer.encode(), value)
        try:
            self.producer.acknowledge(timeout)
            failed = None
        except DeliveryFailed as error:
            failed = error
        report(record, self.metrics)
        if failed is not None:
            log.error(
                "quarantine record not acknowledged by Kafka",
                extra={"consumer": record.consumer, "errors": [str(e) for e in failed.errors[:3]]},
            )


# --- reading and marking stored rows (operators: residuals dlq quarantine) ---------------

_COLUMNS = (
    "id, consumer, source_topic, source_partition, source_offset, record_key, record_value, "
    "record_headers, error, quarantined_at, redriven_at, redriven_by"
)
STATES = ("open", "redriven", "all")


@dataclass(frozen=True)
class Row:
    """A row of the quarantine table: the record set aside, and whether it was re-driven."""

    id: int
    record: Quarantined
    redriven_at: datetime | None = None
    redriven_by: str | None = None

    @classmethod
    def of(cls, r: Sequence[Any]) -> Row:
        record = Quarantined(
            consumer=str(r[1]),
            topic=str(r[2]),
            partition=int(r[3]),
            offset=int(r[4]),
            key=bytes(r[5]) if r[5] is not None else None,
            value=bytes(r[6]) if r[6] is not None else None,
            headers=headers_from_blob(bytes(r[7] or b"")),
            error=str(r[8]),
            quarantined_at=r[9],
        )
        return cls(int(r[0]), record, r[10], r[11])

    @property
    def state(self) -> str:
        if self.redriven_at is None:
            return "open"
        return f"redriven {self.redriven_at:%Y-%m-%d %H:%M} by {self.redriven_by}"

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id,
            "quarantined_at": r.quarantined_at.isoformat(),
            "consumer": r.consumer,
            "topic": r.topic,
            "position": f"{r.partition}:{r.offset}",
            "state": self.state,
            "error": r.error,
        }


def select(
    conn: Connection[Any],
    *,
    ids: Sequence[int] = (),
    consumer: str | None = None,
    topic: str | None = None,
    state: str = "open",
    limit: int = 0,
    lock: bool = False,
) -> list[Row]:
    """Rows matching the filters, oldest first (``lock``: FOR UPDATE, to re-drive)."""
    where: list[str] = []
    params: list[Any] = []
    if ids:
        where.append("id = ANY(%s)")
        params.append(list(ids))
    if consumer:
        where.append("consumer = %s")
        params.append(consumer)
    if topic:
        where.append("source_topic = %s")
        params.append(topic)
    if state == "open":
        where.append("redriven_at IS NULL")
    elif state == "redriven":
        where.append("redriven_at IS NOT NULL")
    sql = f"SELECT {_COLUMNS} FROM quarantine"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit:
        sql += " LIMIT %s"
        params.append(limit)
    if lock:
        sql += " FOR UPDATE"
    return [Row.of(r) for r in conn.execute(sql, params).fetchall()]


def mark_redriven(conn: Connection[Any], row_id: int, who: str) -> None:
    """Record that ``who`` produced quarantined row ``row_id`` back to its source topic."""
    conn.execute(
        "UPDATE quarantine SET redriven_at = now(), redriven_by = %s WHERE id = %s", (who, row_id)
    )
