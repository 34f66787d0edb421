"""Wiring of the meter: faust consumes and keeps the state table, confluent-kafka publishes.

faust (at least once, never ``exactly_once``: docs/ARCHITECTURE.md) owns the consumer group,
partition assignment, offset commits and the changelogged state table, which it restores
on start and on rebalance. The usage topic's records reach the meter as the batches faust's
consumer fetched (:mod:`residuals.platform.faust_batches`: faust's per-record streams cost
more CPU than the rating), rated ``METER_BATCH_SIZE`` at a time, which amortises what costs
per batch rather than per record (two producer flushes, metrics).

Per batch, in this order (why: :mod:`residuals.meter.core`):

1. decide every record in order against the state as the batch sees it;
2. publish rated usage, alerts and dead letters, and wait until Kafka acknowledged them;
3. write the batch's state changes to the table's changelog, in record order, with the
   record's own partition, and wait for those acknowledgements too;
4. apply the changes to the local table and let faust ack the records (their offsets are
   committed later, by faust's commit timer).

Any failure in 1-3, or a stop signal in the middle of a batch, ends the process at once:
faust would otherwise ack the batch on the way out and commit records whose effects are
not all in Kafka. A restart re-reads from the last commit and reaches the same state.
So do a hole in a partition's offsets before step 1 and a partition that stops moving
with records waiting (:mod:`residuals.meter.guards`): faust would otherwise commit past
records it never delivered.

Records are published with the platform's :class:`~residuals.platform.kafka.AcknowledgedProducer`
(confluent-kafka, idempotent: per partition, order and no duplicates across retries), not
faust's producer: it costs a few microseconds per record in C instead of tens in Python,
at three to four records per usage record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from residuals.domain.validation import MAX_FUTURE, MAX_PAST
from residuals.meter.continuity import Stall
from residuals.meter.core import Decision, Meter, Record
from residuals.meter.guards import InputGap, InputGuard, StallWatch
from residuals.meter.lookups import ApprovalRegistry, KeyRegistry, LicenceRegistry
from residuals.meter.metrics import MeterMetrics
from residuals.meter.settings import MeterSettings
from residuals.meter.state import expired
from residuals.platform.config import KafkaSettings
from residuals.platform.faust_app import make_faust_app
from residuals.platform.faust_batches import Fetched, deliver_in_batches
from residuals.platform.grpc_server import GrpcServer, make_grpc_server
from residuals.platform.heap import freeze_long_lived
from residuals.platform.kafka import AcknowledgedProducer, topic_name, trace_headers
from residuals.platform.offset_probe import OffsetProbe
from residuals.platform.quarantine import QuarantinePublisher
from residuals.platform.replica import TopicReplica
from residuals.platform.topics import (
    ALERTS,
    APPROVALS,
    LICENCES,
    QUARANTINE,
    SIGNING_KEYS,
    USAGE,
    USAGE_DLQ,
    USAGE_RATED,
)
from residuals.v1 import common_pb2

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

#: Header on alerts: the usage record's timestamp in epoch milliseconds, so the alerts
#: service measures publish -> alert latency. Rated records and dead letters carry it as
#: their own Kafka timestamp instead.
PUBLISHED_AT_HEADER = "residuals-published-at"
EXIT_BATCH_FAILED = 70
EXIT_INPUT_GAP = 71
EXIT_STALLED = 72
#: How long identities and counters are kept after their event: anything older is
#: TOO_LATE on arrival (35 days, 5 minutes of clock skew), plus a day of margin.
RETENTION = MAX_PAST + MAX_FUTURE + timedelta(days=1)
#: Largest record the meter publishes (Kafka's default message.max.bytes is ~1 MB).
MAX_OUTPUT_BYTES = 900_000


_ABSENT = b""
_ZERO = Decimal(0)


class BatchState:
    """The state table as one batch sees it: committed values plus the batch's own writes.

    A record's writes can be undone (:meth:`mark`, :meth:`rollback`), so a record the meter
    fails on leaves no trace in the state of the records after it.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self.partition = 0
        self.overlay: dict[bytes, bytes] = {}
        self.writes: list[tuple[int, bytes, bytes]] = []
        self._undo: list[tuple[bytes, bytes]] = []

    def get(self, key: bytes) -> bytes | None:
        value = self.overlay.get(key)
        if value is not None:
            return value
        stored = self._store.get(key)
        return bytes(stored) if stored is not None else None

    def put(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self._undo.append((key, self.overlay.get(key, _ABSENT)))
        self.overlay[key] = value
        self.writes.append((self.partition if partition is None else partition, key, value))

    def mark(self) -> int:
        return len(self.writes)

    def rollback(self, mark: int) -> None:
        """Undo every write made after ``mark``."""
        while len(self.writes) > mark:
            self.writes.pop()
            key, previous = self._undo.pop()
            if previous is _ABSENT:
                del self.overlay[key]
            else:
                self.overlay[key] = previous


class OutputTooLarge(ValueError):
    """A record the meter would publish is larger than Kafka accepts."""


def make_publisher(kafka: KafkaSettings, client_id: str) -> AcknowledgedProducer:
    """The meter's producer: batches acknowledged together, before the state is written.

    Every send is followed by a barrier (``flush``, which sends at once whatever the
    linger), so the linger only decides how often records go out *while* a batch is
    rated: a short one sent a produce request every few milliseconds, a handful of records
    each, and the broker's CPU is per request (600 produce requests/s at 3,500 events/s,
    measured over JMX). Held to the barrier, a batch goes out in one request per topic.
    """
    tuning: dict[str, Any] = {"linger.ms": 1000}
    return AcknowledgedProducer(kafka, client_id=client_id, **tuning)


def _headers(message: Any) -> dict[str, bytes]:
    raw = getattr(message, "headers", None) or ()
    items: Iterable[tuple[Any, Any]] = raw.items() if isinstance(raw, Mapping) else raw
    out: dict[str, bytes] = {}
    for key, value in items:
        if value is None:
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name.lower()] = value if isinstance(value, bytes) else str(value).encode()
    return out


def record_from(partition: int, record: Any) -> Record:
    """A fetched usage record (aiokafka's ``ConsumerRecord``) as the meter's :class:`Record`."""
    timestamp = record.timestamp
    return Record(
        topic=record.topic,
        partition=partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp=datetime.fromtimestamp((timestamp or 0) / 1000, UTC),
        headers=_headers(record),
        timestamp_type=record.timestamp_type or 0,
    )


class BatchRunner:
    """Rates batches of faust events and writes their outputs and state (steps 1-4)."""

    def __init__(
        self,
        meter: Meter,
        publisher: AcknowledgedProducer,
        store: Any,
        *,
        changelog_topic: str,
        rated_topic: str,
        alerts_topic: str,
        dlq_topic: str,
        metrics: MeterMetrics,
        highwater: Any = None,
        purge_every: float = 600.0,
        guard: InputGuard | None = None,
    ) -> None:
        self.meter = meter
        self.publisher = publisher
        self.store = store
        self.changelog_topic = changelog_topic
        self.rated_topic = rated_topic
        self.alerts_topic = alerts_topic
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.highwater = highwater
        self.purge_every = purge_every
        self.guard = guard
        self._next_purge = time.monotonic() + purge_every
        self._warned_untrusted = False

    async def run(self, records: Sequence[Record]) -> list[Decision]:
        started = time.perf_counter()
        if self.guard is not None:
            await self.guard.check(records)
        state = BatchState(self.store)
        decisions: list[Decision] = []
        send = self.publisher.send
        for record in records:
            state.partition = record.partition
            mark = state.mark()
            try:
                decision = self.meter.process(record, state)
                self._publish(record, decision)
            except Exception as error:  # a defect met by one record must not stop the line
                state.rollback(mark)
                log.exception(
                    "record could not be rated; dead-lettered as UNPROCESSABLE",
                    extra={"partition": record.partition, "offset": record.offset},
                )
                decision = self.meter.unprocessable(record, error)
                # A dead letter's original is cut to the event size limit: it always fits.
                self._publish(record, decision, check_size=False)
            decisions.append(decision)
        await self.publisher.barrier()
        acknowledged = datetime.now(UTC)
        for partition, key, value in state.writes:
            send(self.changelog_topic, key, value, partition=partition)
        if state.writes:
            await self.publisher.barrier()
        for key, value in state.overlay.items():
            self.store[key] = value
        self._observe(records, decisions, acknowledged, time.perf_counter() - started)
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.purge_every
            cutoff = self.purge_cutoff()
            if cutoff is not None:
                await self.purge(cutoff)
        return decisions

    def purge_cutoff(self) -> datetime | None:
        """Before this, no identity or counter can be needed again: the replay window
        behind the stream's clock (the latest trusted receipt), which never runs ahead of
        this meter's own clock, so no record's time, however stamped, can wipe state."""
        latest = self.meter.latest_receipt
        if latest is None:
            return None
        return min(latest, self.meter.now()) - RETENTION

    def _publish(self, record: Record, decision: Decision, *, check_size: bool = True) -> None:
        """Send the records of ``decision``, all serialized and size-checked before the
        first is sent (a record too large for Kafka would fail the whole batch's barrier;
        raising here sends nothing)."""
        if decision.skipped:
            return
        rated = decision.rated.SerializeToString() if decision.rated is not None else None
        dead = decision.dead.SerializeToString() if decision.dead is not None else None
        alerts = [alert.SerializeToString() for alert in decision.alerts]
        if check_size:
            for value in (rated, dead, *alerts):
                if value is not None and len(value) > MAX_OUTPUT_BYTES:
                    raise OutputTooLarge(f"an output record of {len(value):,} bytes")
        send = self.publisher.send
        # Rated records and dead letters carry the usage record's own timestamp, so
        # downstream latency is measured from publication (cheaper than a header).
        published = int(record.timestamp.timestamp() * 1000)
        if rated is not None:
            send(self.rated_topic, record.key, rated, timestamp=published)
        if dead is not None:
            send(self.dlq_topic, record.key, dead, timestamp=published)
        for alert, value in zip(decision.alerts, alerts, strict=True):
            # The alerts service continues the trace from the W3C header.
            headers: list[tuple[str, str | bytes | None]] = [
                (PUBLISHED_AT_HEADER, str(published).encode()),
                *trace_headers(alert.trace),
            ]
            send(self.alerts_topic, alert.licence_id.encode(), value, headers=headers)

    async def purge(self, cutoff: datetime) -> int:
        """Delete state no record can need (:func:`~residuals.meter.state.expired`), with
        tombstones on the changelog first, so memory stays bounded by the replay window."""
        victims = expired(list(self.store.items()), cutoff)
        for partition, key in victims:
            self.publisher.send(self.changelog_topic, key, None, partition=partition)
        if victims:
            await self.publisher.barrier()
        for _partition, key in victims:
            self.store.pop(key, None)
        log.info("state purged", extra={"keys": len(victims), "cutoff": cutoff.isoformat()})
        return len(victims)

    def _observe(
        self,
        records: Sequence[Record],
        decisions: Sequence[Decision],
        acknowledged: datetime,
        seconds: float,
    ) -> None:
        """Metrics of one batch, aggregated first: ``labels()`` costs microseconds a call."""
        m = self.metrics
        m.batch_seconds.observe(seconds)
        untrusted = self.meter.untrusted_timestamps
        if untrusted:
            self.meter.untrusted_timestamps = 0
            m.untrusted_timestamps.inc(untrusted)
            if not self._warned_untrusted:
                self._warned_untrusted = True
                log.error(
                    "the usage topic carries producer timestamps, which vendors can set: "
                    "records are timed by this meter's clock; set "
                    "message.timestamp.type=LogAppendTime on it"
                )
        m.batch_size.observe(len(records))
        last = {record.partition: record.offset for record in records}
        partitions = Counter(record.partition for record in records)
        outcomes = Counter((decision.kind, decision.outcome) for decision in decisions)
        reasons: Counter[str] = Counter()
        violations: Counter[tuple[str, str]] = Counter()
        earned: dict[str, Decimal] = {}
        held: dict[str, Decimal] = {}
        observe = m.latency.observe
        for record, decision in zip(records, decisions, strict=True):
            if decision.skipped:
                continue
            observe(max(0.0, (acknowledged - record.timestamp).total_seconds()))
            if decision.dead is not None:
                reasons[common_pb2.RejectReason.Name(decision.dead.reason)] += 1
            for alert in decision.alerts:
                kind = common_pb2.ViolationKind.Name(alert.kind).removeprefix("VIOLATION_KIND_")
                severity = common_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_")
                violations[(kind, severity)] += 1
            currency = decision.currency
            if currency:
                # The same additions in the same order as ever (the first to Decimal(0)).
                earned[currency] = earned.get(currency, _ZERO) + decision.earned
                held[currency] = held.get(currency, _ZERO) + decision.held
        accrued: dict[tuple[str, str], Decimal] = {}
        for currency, amount in earned.items():  # earned and held have the same currencies
            accrued[(currency, "earned")] = amount
            accrued[(currency, "held")] = held[currency]
        for partition, n in partitions.items():
            m.records_in.labels(str(partition)).inc(n)
        for (kind, outcome), n in outcomes.items():
            m.events.labels(kind, outcome).inc(n)
        for reason, n in reasons.items():
            m.dead_letters.labels(reason.removeprefix("REJECT_REASON_")).inc(n)
        for (kind, severity), n in violations.items():
            m.violations.labels(kind, severity).inc(n)
        for (currency, state), amount in accrued.items():
            if amount:
                m.accrued.labels(currency, state).inc(float(amount))
        if self.highwater is not None and records:
            topic = records[0].topic
            for partition, offset in last.items():
                high = self.highwater(topic, partition)
                if high is not None:
                    m.lag.labels(str(partition)).set(max(0, high - offset - 1))


class MeterService:
    """The faust app, its state table, the registries and the batch runner."""

    def __init__(self, settings: MeterSettings, metrics: MeterMetrics | None = None) -> None:
        self.settings = settings
        kafka = settings.kafka
        self.metrics = metrics or MeterMetrics()
        self.app: faust.App = make_faust_app(
            "meter",
            kafka,
            data_dir=settings.data_dir,
            store=settings.store,
            # Static membership: a meter that exits on a failed batch, a hole or a stall
            # (without leaving the group, so nothing past the failure is committed) and
            # comes back under the same id takes its partitions back at once; a dynamic
            # member would wait for the dead one's session to expire.
            consumer_group_instance_id=settings.instance_id,
            table_standby_replicas=settings.standby_replicas,
        )
        self.usage_topic = self.app.topic(
            topic_name(kafka, USAGE),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        # bytes keys and values: faust stores and replays them raw (no codec).
        self.state = self.app.Table(
            "meter-state", partitions=kafka.topic_partitions, key_type=bytes, value_type=bytes
        )
        # Poison on the registries' topics is set aside on residuals.quarantine.v1 (stored by
        # the ledger writer) while the last good version of that licence or key is served.
        quarantine = QuarantinePublisher(
            AcknowledgedProducer(kafka, client_id=f"{kafka.topic_prefix}meter-quarantine"),
            topic_name(kafka, QUARANTINE),
        )
        self.licences = TopicReplica(
            kafka,
            topic_name(kafka, LICENCES),
            name="meter-licences",
            quarantine=quarantine.publish,
        )
        self.keys = TopicReplica(
            kafka, topic_name(kafka, SIGNING_KEYS), name="meter-keys", quarantine=quarantine.publish
        )
        # Followed live: an approval granted while the meter runs counts from then on.
        self.approvals = TopicReplica(
            kafka,
            topic_name(kafka, APPROVALS),
            name="meter-approvals",
            quarantine=quarantine.publish,
        )
        self.licence_registry = LicenceRegistry(self.licences, settings.licence_cache)
        self.meter = Meter(
            self.licence_registry,
            KeyRegistry(self.keys),
            max_event_bytes=settings.max_event_bytes,
            receipt_key=settings.receipt.key(),
            approvals=ApprovalRegistry(self.approvals),
            # Spans only when they are exported; otherwise the incoming context is passed
            # on unchanged (a span per record is measurable in this CPU-bound loop).
            tracer=trace.get_tracer(__name__) if settings.telemetry.otlp_endpoint else None,
        )
        self.publisher = make_publisher(kafka, f"{kafka.topic_prefix}meter")
        # faust's consumer group is the app id.
        self.offsets = OffsetProbe(kafka, str(self.app.conf.id))
        self.usage_topic_name = topic_name(kafka, USAGE)
        self.stall_watch = StallWatch(
            self.offsets,
            self.usage_topic_name,
            self._assigned_partitions,
            self._stalled,
            stall_after=settings.stall_seconds,
            interval=min(10.0, settings.stall_seconds / 4),
        )
        self.runner: BatchRunner | None = None
        self.health: GrpcServer | None = None
        #: Called once the agent starts consuming (health: SERVING).
        self.on_ready: Callable[[], None] | None = None
        self._register_batches()

    def _highwater(self, topic: str, partition: int) -> int | None:
        from faust.types import TP

        try:
            return int(self.app.consumer.highwater(TP(topic, partition)))
        except Exception:  # no fetch yet for this partition
            return None

    def _make_runner(self) -> BatchRunner:
        kafka = self.settings.kafka
        return BatchRunner(
            self.meter,
            self.publisher,
            self.state.data,
            changelog_topic=self.state.changelog_topic.get_topic_name(),
            rated_topic=topic_name(kafka, USAGE_RATED),
            alerts_topic=topic_name(kafka, ALERTS),
            dlq_topic=topic_name(kafka, USAGE_DLQ),
            metrics=self.metrics,
            highwater=self._highwater,
            purge_every=self.settings.purge_every,
            guard=InputGuard(self.offsets, lambda: int(self.app.consumer_generation_id)),
        )

    def _assigned_partitions(self) -> list[int] | None:
        """The usage partitions this process rates now; ``None`` while faust rebalances or
        restores state (nothing is expected to move then)."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return None
        try:
            assigned = app.consumer.assignment()
        except Exception:  # consumer not started or being replaced
            return None
        return sorted(tp.partition for tp in assigned if tp.topic == self.usage_topic_name)

    def _stalled(self, stalls: list[Stall]) -> None:
        log.error(
            "input partitions stopped moving with records waiting; exiting so they are read "
            "again from the last commit",
            extra={
                "stalls": [
                    {
                        "partition": s.partition,
                        "committed": s.committed,
                        "high": s.high,
                        "seconds": round(s.seconds),
                    }
                    for s in stalls
                ],
                "generation": self.app.consumer_generation_id,
            },
        )
        _exit_now(EXIT_STALLED)

    def _register_batches(self) -> None:
        """The usage topic's records come in whole fetched batches
        (:mod:`residuals.platform.faust_batches`), rated ``batch_size`` at a time."""
        batch_size = self.settings.batch_size

        async def rate(fetched: Fetched) -> None:
            runner = self._started()
            records = [record_from(partition, r) for partition, rs in fetched for r in rs]
            for start in range(0, len(records), batch_size):
                await self._rate(runner, records[start : start + batch_size])

        deliver_in_batches(self.app, self.usage_topic, rate)

        async def started() -> None:
            self._started()

        self.app.task(started)

    def _started(self) -> BatchRunner:
        """The batch runner, made (and SERVING reported) by whichever comes first: the
        app's start or the first fetched batch (a batch must never go unrated: its
        offsets are acknowledged when the handler returns)."""
        if self.runner is None:
            self.runner = self._make_runner()
            self.stall_watch.start()
            if self.on_ready is not None:
                self.on_ready()
        return self.runner

    async def _rate(self, runner: BatchRunner, records: list[Record]) -> None:
        try:
            await runner.run(records)
        except asyncio.CancelledError:
            log.warning("stopped in the middle of a batch; exiting without committing it")
            _exit_now(0)
        except InputGap as gap:
            log.error(
                "records missing from the input; exiting so they are read again",
                extra={"detail": str(gap), "generation": self.app.consumer_generation_id},
            )
            _exit_now(EXIT_INPUT_GAP)
        except BaseException:
            log.exception("batch failed; exiting so the batch is read again")
            _exit_now(EXIT_BATCH_FAILED)

    def prepare_offsets(self) -> None:
        """Before the first meter of a new group joins: a committed offset for every usage
        partition (why: ``OffsetProbe.start_uncommitted_at_log_start``)."""
        started = self.offsets.start_uncommitted_at_log_start(self.usage_topic_name)
        if started:
            log.info(
                "usage partitions without a commit start at the log start",
                extra={"offsets": {str(p): o for p, o in started.items()}},
            )

    def start_registries(self) -> None:
        """Load every licence, signing key and approval before the first record is rated."""
        timeout = self.settings.ready_timeout
        replicas = (self.licences, self.keys, self.approvals)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            if not replica.wait_caught_up(timeout):
                raise TimeoutError(f"{replica.topic} not loaded within {timeout:.0f} s")
        started = time.perf_counter()
        decoded = self.licence_registry.warm()
        # The decoded licences are a million long-lived objects that every full garbage
        # collection would walk again (a third of the meter's CPU per event, measured with
        # bench/meter_cpu.py); frozen, the collector only looks at what the batches make.
        frozen = freeze_long_lived()
        log.info(
            "licences decoded",
            extra={
                "licences": decoded,
                "seconds": round(time.perf_counter() - started, 1),
                "frozen_objects": frozen,
            },
        )
        self.metrics.licences.set_function(lambda: len(self.licences))

    def start(self) -> MeterService:
        """Health (NOT_SERVING until the agent consumes), then every licence and key loaded
        and the group's offsets prepared; faust's worker then runs the agent
        (:func:`residuals.platform.faust_app.run_worker`)."""
        self.health = make_grpc_server(self.settings.grpc).start()
        self.health.set_serving(False)
        self.on_ready = self._serving
        try:
            self.start_registries()
            self.prepare_offsets()
        except BaseException:
            self.stop()
            raise
        return self

    def _serving(self) -> None:
        if self.health is not None:
            self.health.set_serving(True)

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop(1.0)
        self.stall_watch.stop()
        self.licences.stop()
        self.keys.stop()
        self.approvals.stop()
        self.publisher.close(10)
        self.offsets.close()


def _exit_now(code: int) -> None:
    """Leave without faust's shutdown (which would commit the unfinished batch)."""
    logging.shutdown()
    os._exit(code)
