"""The outbox relay: registry changes from PostgreSQL to Kafka, in commit order, exactly once.

Writers append to ``outbox`` inside the transaction that makes the change, under an
advisory lock, so outbox ids follow commit order (:func:`residuals.licensing.store.enqueue`).
The relay:

1. holds a PostgreSQL session advisory lock, so one relay publishes at a time (a second
   one waits as a hot standby and takes over when the first dies);
2. starts a *transactional* producer: ``init_transactions()`` fences any previous relay
   with the same ``transactional.id`` and aborts its unfinished transaction;
3. **recovers**: reads the last committed records of every partition of the topics it
   writes and takes the highest ``residuals-outbox-id`` header; every row up to it was
   published (ids are published in increasing order and a Kafka transaction commits a
   batch as a whole), so those rows are marked published now. This closes the one gap
   of a plain outbox, a crash after Kafka committed but before PostgreSQL was updated;
4. loops: reads unpublished rows in id order, produces them in one Kafka transaction,
   commits it (which waits for every delivery), then marks the rows published.

A row Kafka refuses whatever is retried (larger than the topic's ``max.message.bytes``,
headers or a topic that cannot be produced) must not hold back every later row: the relay
bisects the failed batch down to that row (:mod:`residuals.platform.setaside`), stores it
in the quarantine table (consumer ``licensing-outbox``) and marks it ``quarantined_at`` -
in PostgreSQL *before* the Kafka transaction holding the rows after it commits, so
recovery never mistakes it for published - and publishes the others in id order.

Guarantee: each outbox row not set aside appears **exactly once** in the topic for
``read_committed`` consumers, in id (= commit) order per key, across relay crashes and
restarts. Consumers reading uncommitted data may also see records of a batch that was
aborted and retried, i.e. at-least-once, still in order; each record is a licence's full
state with a ``revision``, so a duplicate is harmless and compaction keeps the newest
state. A set-aside licence row is superseded by the licence's next change (every record
is its full state); until then the topic holds its previous state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from opentelemetry import trace

from residuals.licensing.metrics import RelayMetrics, default_metrics
from residuals.licensing.store import OUTBOX_CHANNEL
from residuals.platform import topics
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_consumer, make_producer, topic_name
from residuals.platform.quarantine import describe
from residuals.platform.setaside import RecordRefused, is_permanent, publish_in_order, set_aside

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

OUTBOX_ID_HEADER = "residuals-outbox-id"
RELAY_LOCK = 0x6F75_7462_6F78_0001  # "outbox" + 1: one relay at a time
#: Topics the relay writes (recovery scans them all).
RELAY_TOPICS: tuple[topics.Topic, ...] = (topics.LICENCES, topics.SIGNING_KEYS, topics.APPROVALS)
#: The consumer name of rows the relay sets aside (quarantine table, metric).
CONSUMER = "licensing-outbox"
_UNPUBLISHED = "published_at IS NULL AND quarantined_at IS NULL"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes
    payload: bytes
    #: As stored (a JSON object of strings when written by the registry).
    headers: Any

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The record's headers; ValueError when the stored ones are not strings."""
        if not isinstance(self.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise ValueError(f"headers are not a JSON object of strings: {self.headers!r:.200}")
        headers = [(k, v.encode("utf-8")) for k, v in self.headers.items()]
        headers.append((OUTBOX_ID_HEADER, str(self.id).encode("ascii")))
        return headers


def transactional_id(kafka: KafkaSettings) -> str:
    """One id per deployment (and per topic prefix, so isolated test runs never fence)."""
    return f"{kafka.topic_prefix}residuals-licensing-outbox"


class OutboxRelay:
    """Publishes the outbox; :meth:`run` until ``stop`` is set (or :meth:`publish_once`)."""

    def __init__(
        self,
        dsn: str,
        kafka: KafkaSettings,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.dsn = dsn
        self.kafka = kafka
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.metrics = metrics or default_metrics()
        self._producer: Any = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        #: Set once the relay holds the lock and has recovered: it is publishing.
        self.active = threading.Event()
        self._stop: threading.Event | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, stop: threading.Event | None = None) -> bool:
        """Become the active relay: lock, fence, recover. False if ``stop`` came first."""
        self._lock_conn = psycopg.connect(
            self.dsn, autocommit=True, application_name="outbox-relay"
        )
        waited = False
        while not self._try_lock():
            if not waited:
                log.info("another outbox relay is active; standing by")
                waited = True
            if stop is not None and stop.wait(self.poll_interval):
                return False
        self._lock_conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
        self._conn = psycopg.connect(self.dsn, autocommit=True, application_name="outbox-relay")
        self._producer = make_producer(
            self.kafka,
            transactional_id=transactional_id(self.kafka),
            client_id="outbox-relay",
            # A transaction must be able to outlive each of its messages' delivery timeout.
            **{"transaction.timeout.ms": 60_000, "message.timeout.ms": 30_000},
        )
        self._producer.init_transactions(30)
        recovered = self.recover()
        log.info("outbox relay active", extra={"recovered_rows": recovered})
        self.active.set()
        return True

    def _try_lock(self) -> bool:
        assert self._lock_conn is not None
        row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,)).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.active.clear()
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                conn.close()
        self._conn = self._lock_conn = None

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set; waits for NOTIFY (or polls) when idle."""
        self._stop = stop
        if not self.start(stop):
            return
        try:
            while not stop.is_set():
                published = self.publish_once()
                if published < self.batch_size:
                    self._wait(stop)
        finally:
            self.close()

    def _wait(self, stop: threading.Event) -> None:
        assert self._lock_conn is not None
        # Returns at the first notification or after poll_interval; a missed NOTIFY only
        # costs latency because the next poll finds the row anyway.
        for _ in self._lock_conn.notifies(timeout=self.poll_interval, stop_after=1):
            break

    # --- recovery ----------------------------------------------------------------------

    def recover(self) -> int:
        """Mark rows already in Kafka as published; returns how many were marked."""
        highest = highest_published_id(self.kafka)
        if highest is None:
            return 0
        assert self._conn is not None
        cur = self._conn.execute(
            f"UPDATE outbox SET published_at = clock_timestamp() WHERE id <= %s AND {_UNPUBLISHED}",
            (highest,),
        )
        marked = cur.rowcount
        if marked:
            self.metrics.recovered.inc(marked)
            log.warning(
                "outbox rows were in Kafka but not marked (relay stopped between commit and"
                " mark); marked now, not re-sent",
                extra={"rows": marked, "highest_outbox_id": highest},
            )
        return marked

    # --- publishing --------------------------------------------------------------------

    def _pending(self) -> list[OutboxRow]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT id, topic, message_key, payload, headers FROM outbox"
            f" WHERE {_UNPUBLISHED} ORDER BY id LIMIT %s",
            (self.batch_size,),
        ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4]) for r in rows]

    def _observe_backlog(self) -> None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)"
            f" FROM outbox WHERE {_UNPUBLISHED}"
        ).fetchone()
        assert row is not None
        self.metrics.pending.set(int(row[0]))
        self.metrics.lag.set(float(row[1]))

    def publish_once(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        rows = self._pending()
        if rows:
            with tracer.start_as_current_span(
                "outbox publish", attributes={"outbox.rows": len(rows)}
            ):
                self._publish(rows)
        self._observe_backlog()
        return len(rows)

    def _publish(self, rows: Sequence[OutboxRow]) -> None:
        publish_in_order(rows, self._send, self._set_aside)

    def _send(self, rows: Sequence[OutboxRow]) -> None:
        """Publish ``rows`` in one transaction and mark them; :class:`RecordRefused` when
        Kafka refuses them for good (the transaction is aborted: nothing of it is seen)."""
        from confluent_kafka import KafkaException

        producer = self._producer
        assert producer is not None and self._conn is not None
        while True:
            producer.begin_transaction()
            try:
                for index, row in enumerate(rows):
                    self._produce(producer, index, row)
                    producer.poll(0)
                self._commit()
                break
            except KafkaException as error:
                self.metrics.failures.inc()
                if not error.args[0].txn_requires_abort():
                    raise  # fatal (e.g. fenced by a newer relay): stop; a restart recovers
                producer.abort_transaction(30)
                if is_permanent(error.args[0]):
                    raise RecordRefused(describe(error)) from None
                log.warning("outbox batch aborted; retrying", extra={"error": str(error)})
                if self._stopping():
                    raise  # shutting down: the rows stay unpublished for the next relay
                time.sleep(0.5)
        self._mark(rows)
        for row in rows:
            self.metrics.published.labels(row.topic).inc()

    def _produce(self, producer: Any, index: int, row: OutboxRow) -> None:
        """Produce one row into the open transaction; a row that cannot be produced at all
        aborts it with :class:`RecordRefused` naming the row."""
        from confluent_kafka import KafkaException

        try:
            if row.topic not in {t.name for t in RELAY_TOPICS}:
                raise ValueError(f"{row.topic!r:.100} is not a topic the relay writes")
            producer.produce(
                topic_name(self.kafka, row.topic),
                key=row.key,
                value=row.payload,
                headers=row.kafka_headers(),
            )
        except (KafkaException, ValueError, TypeError) as error:
            if isinstance(error, KafkaException) and not is_permanent(error.args[0]):
                raise
            producer.abort_transaction(30)
            raise RecordRefused(describe(error), culprit=index) from None

    def _set_aside(self, row: OutboxRow, error: str) -> None:
        assert self._conn is not None
        try:
            headers = [(k.encode(), v) for k, v in row.kafka_headers()]
        except ValueError:
            headers = []
        set_aside(
            self._conn,
            consumer=CONSUMER,
            table="outbox",
            id_column="id",
            row_id=row.id,
            topic=f"{self.kafka.topic_prefix}{row.topic}",
            key=row.key,
            value=row.payload,
            headers=headers,
            error=error,
        )
        log.error(
            "outbox row set aside: Kafka refuses it; later rows go on",
            extra={"outbox_id": row.id, "topic": row.topic, "error": error},
        )

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _commit(self) -> None:
        """Commit the open transaction: flushes, and waits for every delivery.

        A retriable failure is retried as a commit (the transaction stays open); one that
        needs an abort is raised to :meth:`_publish`, which re-sends the whole batch.
        """
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.commit_transaction(60)
                return
            except KafkaException as error:
                if not error.args[0].retriable() or self._stopping():
                    raise
                self.metrics.failures.inc()
                time.sleep(0.5)

    def _mark(self, rows: Sequence[OutboxRow]) -> None:
        """Record that Kafka has ``rows`` (after the transaction committed there)."""
        assert self._conn is not None
        self._conn.execute(
            "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%s)",
            ([row.id for row in rows],),
        )


def highest_published_id(kafka: KafkaSettings, *, timeout: float = 30.0) -> int | None:
    """The largest ``residuals-outbox-id`` among committed records of the relay's topics.

    Reads only the tail of each partition: ids grow along every partition, so each
    partition's last data record carries its highest id. Compaction never removes a
    partition's last record (no later record shares its key), and a transaction adds one
    control record per partition, so a few offsets back always hold data when any exists.
    """
    from confluent_kafka import TopicPartition

    consumer = make_consumer(
        kafka,
        f"{transactional_id(kafka)}-recovery",
        client_id="outbox-relay-recovery",
        **{"enable.partition.eof": True},
    )
    highest: int | None = None
    try:
        for topic in RELAY_TOPICS:
            name = topic_name(kafka, topic)
            metadata = consumer.list_topics(name, timeout=timeout)
            partitions = sorted(metadata.topics[name].partitions)
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=timeout
                )
                window = 8
                while high > low:
                    start = max(low, high - window)
                    found = _max_header(consumer, name, partition, start, high, timeout)
                    if found is not None:
                        highest = found if highest is None else max(highest, found)
                        break
                    if start == low:
                        break
                    window *= 8
    finally:
        consumer.close()
    return highest


def _max_header(
    consumer: Any, topic: str, partition: int, start: int, end: int, timeout: float
) -> int | None:
    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    best: int | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                break
            raise RuntimeError(f"reading {topic}[{partition}]: {message.error()}")
        for key, value in message.headers() or ():
            if key == OUTBOX_ID_HEADER and value:
                number = int(value.decode("ascii"))
                best = number if best is None else max(best, number)
        if message.offset() >= end - 1:
            break
    else:
        raise TimeoutError(f"reading the tail of {topic}[{partition}] took over {timeout}s")
    consumer.unassign()
    return best
