"""Kafka -> PostgreSQL with exactly-once effect: the loop every confluent-kafka sink shares.

One PostgreSQL transaction per consumed batch: lock the batch's partition positions
(:class:`~residuals.platform.offsets.OffsetStore`), check that this worker still owns them
(the epoch it acquired on assignment: a zombie is fenced and commits nothing), drop
records another worker already applied, let the service write its rows (``apply``),
advance the positions, commit. Kafka
offsets are committed afterwards, asynchronously, only so lag tools see progress; on
assignment the consumer seeks to the positions stored in PostgreSQL. The consumer reads
``read_committed`` (``make_consumer``), so records of aborted producer transactions never
reach ``apply``.

Poison never stops the line: ``apply`` runs in a savepoint, and when it fails because of
a record (:func:`~residuals.platform.isolation.is_record_error`) the batch is bisected
(:func:`~residuals.platform.isolation.apply_isolating`); each record that fails alone is
stored in the ``quarantine`` table (:mod:`residuals.platform.quarantine`) in the same
transaction, and the positions advance past it. Other failures (database unreachable,
fenced) roll the batch back and retry it with exponential back-off; a batch that keeps
failing for ``stall_seconds`` marks the sink stalled (``residuals_sink_stalled``, and the
service's health goes NOT_SERVING through ``on_stalled``) until a batch commits again.

On every exit ``run`` closes the consumer, which leaves the group, so a restarted worker
gets its partitions back at the next rebalance instead of after the session timeout;
``group_instance_id`` (static membership, opt-in) also covers a kill -9.

Metrics (labelled by ``sink`` name): records applied and skipped, batches, batch
duration, failures, stalled, and consumer lag per partition from librdkafka's statistics;
quarantined records are ``residuals_quarantined_records_total{consumer, topic}``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from psycopg import Connection

from residuals.platform.config import KafkaSettings, env
from residuals.platform.isolation import Isolation, Retryable, apply_isolating
from residuals.platform.kafka import make_consumer
from residuals.platform.offsets import OffsetStore
from residuals.platform.pipeline_metrics import PipelineMetrics, pipeline_metrics
from residuals.platform.postgres import Database
from residuals.platform.quarantine import (
    Pending,
    Quarantined,
    QuarantineMetrics,
    describe,
    quarantine_metrics,
)

log = logging.getLogger(__name__)

R = TypeVar("R")


class _Probed(Exception):
    """Ends a probe's savepoint so that what it applied is rolled back."""


class Fenced(Retryable):
    """Another worker acquired a partition of the batch: this one must not commit it."""


#: Writes some records (already de-duplicated) inside the sink's transaction and returns
#: what ``after_commit`` needs of them. May be called several times per transaction (on
#: parts of a batch being isolated), each call in its own savepoint.
ApplyBatch = Callable[[Connection[Any], Sequence[Any]], R]
#: Runs after the transaction committed with the records applied and the result of each
#: ``apply`` call kept (notify watchers, end spans); must not raise.
AfterCommit = Callable[[Sequence[Any], Sequence[R]], None]


@dataclass(frozen=True)
class SinkSettings:
    """How a sink retries, when it reports itself stalled, and its group membership."""

    stall_seconds: float = env(
        "SINK_STALL_SECONDS",
        60.0,
        help="a batch failing (rolled back and retried) for this long marks the sink stalled: "
        "residuals_sink_stalled=1 and gRPC health NOT_SERVING until a batch commits",
        minimum=1,
    )
    retry_backoff_max_seconds: float = env(
        "SINK_RETRY_BACKOFF_MAX_SECONDS",
        10.0,
        help="longest wait between retries of a failing batch (doubles from 1 s)",
        minimum=0.1,
    )
    group_instance_id: str | None = env(
        "SINK_GROUP_INSTANCE_ID",
        None,
        help="Kafka static membership (group.instance.id): a stable, unique name per replica "
        "(e.g. a StatefulSet pod name) lets a restarted or killed worker take its partitions "
        "back at once; unset = dynamic membership (a stopping worker leaves the group)",
    )


class SinkMetrics:
    """Prometheus series of the sinks in one process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records = Counter(
            "residuals_sink_records_total",
            "Kafka records written to PostgreSQL by a sink.",
            ("sink", "topic"),
            registry=registry,
        )
        self.skipped = Counter(
            "residuals_sink_skipped_records_total",
            "Records dropped because their offset was already stored (re-delivery, zombie).",
            ("sink", "topic"),
            registry=registry,
        )
        self.batches = Counter(
            "residuals_sink_batches_total",
            "Transactions committed by a sink.",
            ("sink",),
            registry=registry,
        )
        self.failures = Counter(
            "residuals_sink_failures_total",
            "Batches rolled back (they are retried from the stored position).",
            ("sink",),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "residuals_sink_batch_seconds",
            "Time to write and commit one batch.",
            ("sink",),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.stalled = Gauge(
            "residuals_sink_stalled",
            "1 while a sink's batch has been failing for longer than SINK_STALL_SECONDS "
            "(it cannot advance), else 0.",
            ("sink",),
            registry=registry,
        )
        # Shared with consumers that are not sinks (the meter): one series name for lag,
        # one for quarantined records.
        if registry is REGISTRY:
            self.lag = pipeline_metrics().consumer_lag
            self.quarantined: QuarantineMetrics = quarantine_metrics()
        else:
            self.lag = PipelineMetrics(registry).consumer_lag
            self.quarantined = QuarantineMetrics(registry)

    def stats_callback(self, group_id: str) -> Callable[[str], None]:
        """A librdkafka ``stats_cb`` that publishes per-partition consumer lag."""

        def on_stats(raw: str) -> None:
            try:
                stats = json.loads(raw)
                for topic, body in stats.get("topics", {}).items():
                    for partition, p in body.get("partitions", {}).items():
                        lag = p.get("consumer_lag", -1)
                        if partition == "-1" or lag is None or lag < 0:
                            continue
                        self.lag.labels(group_id, topic, partition).set(lag)
            except (ValueError, AttributeError, TypeError):
                log.debug("unreadable librdkafka statistics", exc_info=True)

        return on_stats


@functools.cache
def default_metrics() -> SinkMetrics:
    """The sink series on the global registry, created once per process."""
    return SinkMetrics()


def make_sink_consumer(
    kafka: KafkaSettings,
    group_id: str,
    *,
    client_id: str | None = None,
    metrics: SinkMetrics | None = None,
    stats_interval_ms: int = 5000,
    group_instance_id: str | None = None,
    **overrides: Any,
) -> Any:
    """A read_committed, manually committing consumer that reports lag to ``metrics``;
    a static group member when given a ``group_instance_id``."""
    metrics = metrics or default_metrics()
    static = {"group.instance.id": group_instance_id} if group_instance_id else {}
    return make_consumer(
        kafka,
        group_id,
        client_id=client_id,
        **{
            "statistics.interval.ms": stats_interval_ms,
            "stats_cb": metrics.stats_callback(group_id),
            **static,
            **overrides,
        },
    )


class KafkaPostgresSink(Generic[R]):
    """Consumes ``topics`` and applies each batch in one transaction with its offsets."""

    def __init__(
        self,
        *,
        name: str,
        consumer: Any,
        db: Database,
        group_id: str,
        topics: Sequence[str],
        apply: ApplyBatch[R],
        after_commit: AfterCommit[R] | None = None,
        batch_size: int = 1000,
        poll_timeout: float = 0.1,
        retry_backoff: float = 1.0,
        settings: SinkSettings | None = None,
        on_stalled: Callable[[bool], None] | None = None,
        quarantine: Pending | None = None,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.db = db
        self.offsets = OffsetStore(group_id)
        self.topics = tuple(topics)
        self.apply = apply
        self.after_commit = after_commit
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retry_backoff = retry_backoff
        self.settings = settings or SinkSettings()
        self.on_stalled = on_stalled
        self.metrics = metrics or default_metrics()
        #: Quarantine rows of the open transaction; ``apply`` may store its own there
        #: (records it cannot decode), reported with the sink's once the batch commits.
        self.quarantine = quarantine or Pending(self.metrics.quarantined)
        #: Set once partitions were assigned (readiness).
        self.assigned = threading.Event()
        #: Who this worker is in consumer_offsets.owner, and the epochs it acquired.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._epochs: dict[tuple[str, int], int] = {}
        #: Monotonic time the batch not yet committed was first attempted (None: none).
        self._pending_since: float | None = None
        self.stalled = False
        self._stall_lock = threading.Lock()
        self._closed = False
        # Every series exists from the start: "none yet" is a 0, not a gap.
        self.metrics.stalled.labels(name).set(0)
        for topic in self.topics:
            self.metrics.quarantined.records.labels(name, topic)

    # --- assignment ----------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(
            list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Acquire every assigned partition and seek it to the position stored in PostgreSQL."""
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        with self.db.connection() as conn:
            stored = {
                topic: self.offsets.acquire(conn, topic, numbers, self.owner)
                for topic, numbers in sorted(by_topic.items())
            }
        for tp in partitions:
            position = stored[tp.topic][tp.partition]
            self._epochs[(tp.topic, tp.partition)] = position.epoch
            tp.offset = position.next_offset
        consumer.assign(partitions)
        self._pending_since = None  # a new assignment: whatever failed is read afresh
        log.info(
            "partitions assigned",
            extra={
                "sink": self.name,
                "partitions": [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions],
            },
        )
        self.assigned.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._epochs.pop((tp.topic, tp.partition), None)
        self._pending_since = None
        log.info("partitions revoked", extra={"sink": self.name, "count": len(partitions)})

    # --- batches -------------------------------------------------------------------------

    def poll_batch(self) -> list[Any]:
        """Up to ``batch_size`` records (errors logged and dropped; a fatal one raised)."""
        from confluent_kafka import KafkaException

        messages = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout)
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():  # e.g. another worker took this group.instance.id
                    raise KafkaException(error)
                log.warning("consumer error", extra={"sink": self.name, "error": str(error)})
                continue
            records.append(message)
        return records

    def process(self, records: Sequence[Any]) -> int:
        """Apply ``records`` exactly once; returns how many were applied (not skipped,
        not quarantined)."""
        if not records:
            return 0
        started = time.perf_counter()
        by_partition: dict[tuple[str, int], list[Any]] = {}
        for record in records:
            by_partition.setdefault((record.topic(), record.partition()), []).append(record)
        fresh: list[Any] = []
        skipped: dict[str, int] = {}
        advanced: dict[str, dict[int, int]] = {}
        done: Isolation[Any, R] = Isolation()
        try:
            with self.db.connection() as conn:
                for topic in sorted({t for t, _ in by_partition}):
                    numbers = [p for t, p in by_partition if t == topic]
                    stored = self.offsets.lock(conn, topic, numbers)
                    for partition in numbers:
                        position = stored.get(partition)
                        mine = self._epochs.get((topic, partition))
                        if position is None or mine is None or position.epoch != mine:
                            raise Fenced(
                                f"{topic}[{partition}] is owned by epoch "
                                f"{position.epoch if position else None}, not {mine}"
                            )
                        floor = position.next_offset
                        batch = by_partition[(topic, partition)]
                        kept = [r for r in batch if r.offset() >= floor]
                        skipped[topic] = skipped.get(topic, 0) + len(batch) - len(kept)
                        fresh.extend(kept)
                        last = max(r.offset() for r in batch) + 1
                        if last > floor:
                            advanced.setdefault(topic, {})[partition] = last
                if fresh:
                    done = self._apply_isolating(conn, fresh)
                for topic, positions in advanced.items():
                    self.offsets.advance(conn, topic, positions)
        except Exception:
            self.quarantine.rolled_back()
            self.metrics.failures.labels(self.name).inc()
            self._rewind(by_partition)
            raise
        self.quarantine.committed()
        self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
        self.metrics.batches.labels(self.name).inc()
        for topic, count in skipped.items():
            if count:
                self.metrics.skipped.labels(self.name, topic).inc(count)
        applied = Tally(record.topic() for record in done.applied)
        for topic, count in applied.items():  # labels() costs microseconds: once per topic
            self.metrics.records.labels(self.name, topic).inc(count)
        self._commit_kafka(advanced)
        if self.after_commit is not None and done.applied:
            try:
                self.after_commit(done.applied, done.results)
            except Exception:
                log.exception("after-commit hook failed", extra={"sink": self.name})
        return len(done.applied)

    def _apply_isolating(self, conn: Connection[Any], records: list[Any]) -> Isolation[Any, R]:
        """``apply`` in savepoints, bisecting around records that make it fail; each one
        that fails alone is quarantined in this transaction."""

        def attempt(chunk: Sequence[Any]) -> R:
            # A savepoint (the transaction began with the offset locks): a failed attempt
            # leaves nothing, not even the quarantine rows ``apply`` stored.
            with self.quarantine.savepoint(), conn.transaction():
                return self.apply(conn, chunk)

        def probe(chunk: Sequence[Any]) -> None:
            """Whether ``chunk`` applies, leaving nothing either way."""
            try:
                with self.quarantine.savepoint(), conn.transaction():
                    self.apply(conn, chunk)
                    raise _Probed
            except _Probed:
                pass

        done = apply_isolating(records, attempt, probe=probe)
        if done.poison:
            log.warning(
                "batch isolated around poison records",
                extra={
                    "sink": self.name,
                    "records": len(records),
                    "poison": len(done.poison),
                    "attempts": done.attempts,
                },
            )
            self.quarantine.store(
                conn, [Quarantined.of(self.name, record, error) for record, error in done.poison]
            )
        return done

    def _rewind(self, by_partition: dict[tuple[str, int], list[Any]]) -> None:
        """After a rollback, read the batch again from its first record."""
        from confluent_kafka import TopicPartition

        for (topic, partition), batch in by_partition.items():
            first = min(r.offset() for r in batch)
            try:
                self.consumer.seek(TopicPartition(topic, partition, first))
            except Exception:
                log.warning(
                    "could not rewind after a failed batch; the next assignment will",
                    extra={"sink": self.name, "topic": topic, "partition": partition},
                    exc_info=True,
                )

    def _commit_kafka(self, advanced: dict[str, dict[int, int]]) -> None:
        """Mirror the stored positions to Kafka for lag tools (never relied on)."""
        if not advanced:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [
            TopicPartition(topic, partition, position)
            for topic, positions in advanced.items()
            for partition, position in positions.items()
        ]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException:
            log.debug("kafka offset commit failed (positions are in PostgreSQL)", exc_info=True)

    # --- stall ---------------------------------------------------------------------------

    def check_stall(self, now: float | None = None) -> bool:
        """Stalled when the batch not yet committed was first attempted ``stall_seconds``
        ago: failing and retried, or stuck in a call that does not return (a database that
        does not answer). Checked after each failure and every second by a watchdog."""
        since = self._pending_since
        now = time.monotonic() if now is None else now
        stalled = since is not None and now - since >= self.settings.stall_seconds
        self._set_stalled(stalled)
        return stalled

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(1.0) and not self._closed:
            self.check_stall()

    def _set_stalled(self, stalled: bool) -> None:
        with self._stall_lock:
            if stalled == self.stalled:
                return
            self.stalled = stalled
        self.metrics.stalled.labels(self.name).set(1 if stalled else 0)
        if stalled:
            log.error(
                "sink stalled: the same batch keeps failing",
                extra={"sink": self.name, "seconds": self.settings.stall_seconds},
            )
        else:
            log.info("sink advancing again", extra={"sink": self.name})
        if self.on_stalled is not None:
            try:
                self.on_stalled(stalled)
            except Exception:
                log.exception("stall listener failed", extra={"sink": self.name})

    # --- loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; a failed batch is retried with exponential
        back-off. The consumer is closed (the group left) however the loop ends."""
        watchdog = threading.Thread(
            target=self._watch, args=(stop,), name=f"{self.name}-stall-watch", daemon=True
        )
        try:
            self.subscribe()
            watchdog.start()
            backoff = self.retry_backoff
            while not stop.is_set():
                records = self.poll_batch()
                if records and self._pending_since is None:
                    self._pending_since = time.monotonic()
                try:
                    self.process(records)
                except Exception as error:
                    self.check_stall()
                    log.error(
                        "batch failed; retrying",
                        extra={"sink": self.name, "error": describe(error), "retry_in": backoff},
                        exc_info=not isinstance(error, Fenced),
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.settings.retry_backoff_max_seconds)
                    continue
                if records:
                    self._pending_since = None
                    self._set_stalled(False)
                    backoff = self.retry_backoff
        finally:
            self.close()

    def close(self) -> None:
        """Close the consumer once: a dynamic member leaves the group, so its partitions
        are reassigned at once (a static member keeps them until its session times out)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.consumer.close()
        except Exception:
            log.warning("consumer close failed", extra={"sink": self.name}, exc_info=True)
