"""A metering pipeline on the real local stack for tests and the benchmark.

One :class:`Pipeline` is an isolated run: its own topic prefix (so topics, consumer groups
and faust's changelog are new), its own vendor ids (so ledger rows never collide with
other runs) and its own statement period. It publishes licences and signing keys the way
the licence registry's outbox does, signs usage events the way the SDK does, runs the
meter and the ledger writer as real subprocesses (``python -m residuals.meter`` /
``residuals.ledger``) that tests can ``kill -9`` and restart, and reads the ledger back.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from residuals.codecs import licences as licence_codec
from residuals.codecs import receipt
from residuals.codecs.receipt import RECEIPT_HEADER
from residuals.codecs.signing import (
    SIGNATURE_BATCH_SIZE,
    sign_event,
    sign_in_batches,
    signing_key_record,
)
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import from_domain
from residuals.domain.events import UsageEvent, parse_event, parse_timestamp
from residuals.domain.licence_spec import parse_licence
from residuals.domain.licences import Licence
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin, make_consumer, make_producer, topic_name
from residuals.platform.processes import ServiceFailed
from residuals.platform.processes import ServiceProcess as Service
from residuals.platform.roles import role_env
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
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, usage_pb2

REPO = Path(__file__).resolve().parents[2]
PIPELINE_TOPICS = (
    USAGE,
    USAGE_RATED,
    ALERTS,
    USAGE_DLQ,
    LICENCES,
    SIGNING_KEYS,
    APPROVALS,
    QUARANTINE,
)
VENDOR = "residuals-vendor"


def raw_to_proto(raw: Mapping[str, Any]) -> usage_pb2.UsageEvent:
    """The protobuf a vendor sends for a raw event: ``from_domain(parse_event(raw))`` when
    the event is valid, else the fields exactly as given (so the meter rejects it)."""
    parsed = parse_event(raw)
    if isinstance(parsed, UsageEvent):
        return from_domain(parsed)
    message = usage_pb2.UsageEvent()
    for name in (
        "event_id",
        "vendor_id",
        "licence_id",
        "avatar_id",
        "render_id",
        "category",
        "territory",
        "channel",
        "original_event_id",
    ):
        if raw.get(name) is not None:
            setattr(message, name, str(raw[name]))
    kind = str(raw.get("kind") or "")
    if kind:
        message.kind = common_pb2.UsageKind.Value("USAGE_KIND_" + kind)
    if raw.get("occurred_at"):
        set_timestamp(message.occurred_at, parse_timestamp(raw["occurred_at"]))
    if raw.get("quantity") is not None:
        message.quantity = int(raw["quantity"])
    if raw.get("viewable") is not None:
        message.viewable = bool(raw["viewable"])
    if raw.get("ivt") is not None:
        message.ivt = bool(raw["ivt"])
    if raw.get("ad_revenue") is not None:
        message.ad_revenue = str(raw["ad_revenue"])
    return message


@dataclass
class UsageRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class Pipeline:
    """One isolated metering run on the local stack."""

    stack: StackSettings
    work_dir: Path
    partitions: int = 6
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    keys: dict[str, tuple[str, Ed25519PrivateKey]] = field(default_factory=dict)
    licences: list[Licence] = field(default_factory=list)
    produced: list[tuple[int, int]] = field(default_factory=list)
    #: The receipt-stamp key the run's meters trust (RESIDUALS_RECEIPT_KEY): records are
    #: stamped as the ingest gateway stamps them, so a month of any date can be replayed.
    receipt_key: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        self.kafka = KafkaSettings(
            bootstrap_servers=self.stack.bootstrap_servers,
            topic_prefix=f"metering-{self.run_id}.",
            topic_partitions=self.partitions,
        )
        self.dsn = self.stack.dsn
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # --- naming ------------------------------------------------------------------------------

    def vendor(self, name: str) -> str:
        """A vendor id of this run (ledger rows are keyed by vendor)."""
        return f"{name}@{self.run_id}"

    def topic(self, topic: Any) -> str:
        return topic_name(self.kafka, topic)

    # --- Kafka -------------------------------------------------------------------------------

    def create_topics(self) -> None:
        admin = make_admin(self.kafka)
        new = [
            NewTopic(self.topic(t), num_partitions=self.partitions, config=t.config())
            for t in PIPELINE_TOPICS
        ]
        for future in admin.create_topics(new, operation_timeout=30).values():
            future.result(timeout=60)

    def delete_topics(self) -> None:
        admin = make_admin(self.kafka)
        names = [
            t for t in admin.list_topics(timeout=10).topics if t.startswith(self.kafka.topic_prefix)
        ]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=60)

    def _producer(self) -> Any:
        return make_producer(self.kafka, client_id="metering-test", **{"linger.ms": 20})

    def publish_licences(self, specs: Iterable[Mapping[str, Any]]) -> list[Licence]:
        producer = self._producer()
        licences = [parse_licence(dict(spec)) for spec in specs]
        for licence in licences:
            value = licence_codec.to_proto(licence).SerializeToString()
            producer.produce(self.topic(LICENCES), key=licence.licence_id.encode(), value=value)
            producer.poll(0)
        assert producer.flush(60) == 0
        self.licences.extend(licences)
        return licences

    def publish_keys(self, vendors: Iterable[str]) -> None:
        producer = self._producer()
        for vendor in vendors:
            key_id = f"key-{vendor}"
            private = Ed25519PrivateKey.generate()
            self.keys[vendor] = (key_id, private)
            record = signing_key_record(key_id, vendor, private)
            producer.produce(
                self.topic(SIGNING_KEYS), key=key_id.encode(), value=record.SerializeToString()
            )
        assert producer.flush(60) == 0

    def usage_record(
        self,
        raw: Mapping[str, Any],
        *,
        receive_delay: timedelta = timedelta(seconds=2),
        key: str | None = None,
        signer: str | None = None,
    ) -> UsageRecord:
        """The record the gateway publishes for ``raw``, received ``receive_delay`` after it
        occurred (stamped with the run's receipt key, so the run is independent of today's
        date)."""
        message = raw_to_proto(raw)
        vendor = signer or str(raw["vendor_id"])
        key_id, private = self.keys[vendor]
        signed = sign_event(message, key_id, private)
        received = parse_timestamp(raw["occurred_at"]) + receive_delay
        routing = key or str(raw.get("licence_id") or raw.get("_licence_of_original") or vendor)
        value = signed.SerializeToString()
        return UsageRecord(routing.encode(), value, self._headers(vendor, received, value))

    def usage_records(
        self,
        raws: Sequence[Mapping[str, Any]],
        *,
        keys: Sequence[str] | None = None,
        receive_delay: timedelta = timedelta(seconds=2),
        batch: int = SIGNATURE_BATCH_SIZE,
    ) -> list[UsageRecord]:
        """The records SDK clients publish for ``raws`` with ``publish_many``, in order.

        Like :meth:`usage_record`, but each vendor's events (in their order) are signed
        as the SDK does: one signature per chunk of at most ``batch`` events, each
        envelope with its Merkle inclusion proof (``batch=1``: a signature per event).
        ``keys`` are the routing keys, one per event (default: as :meth:`usage_record`).
        """
        if keys is not None and len(keys) != len(raws):
            raise ValueError(f"{len(keys)} routing keys for {len(raws)} events")
        by_vendor: dict[str, list[int]] = {}
        for index, raw in enumerate(raws):
            by_vendor.setdefault(str(raw["vendor_id"]), []).append(index)
        envelopes: list[bytes] = [b""] * len(raws)
        for vendor, indices in by_vendor.items():
            key_id, private = self.keys[vendor]
            messages = [raw_to_proto(raws[i]) for i in indices]
            for i, signed in zip(
                indices, sign_in_batches(messages, key_id, private, batch), strict=True
            ):
                envelopes[i] = signed.SerializeToString()
        records = []
        for index, raw in enumerate(raws):
            vendor = str(raw["vendor_id"])
            received = parse_timestamp(raw["occurred_at"]) + receive_delay
            routing = (keys[index] if keys is not None else None) or str(
                raw.get("licence_id") or raw.get("_licence_of_original") or vendor
            )
            value = envelopes[index]
            records.append(
                UsageRecord(routing.encode(), value, self._headers(vendor, received, value))
            )
        return records

    def _headers(self, vendor: str, received: datetime, value: bytes) -> list[tuple[str, bytes]]:
        """What the gateway adds to an accepted event: its vendor and its receipt stamp."""
        return [
            (RECEIPT_HEADER, receipt.stamp(self.receipt_key, received, value)),
            (VENDOR, vendor.encode()),
        ]

    def sdk_records(
        self,
        raws: Sequence[Mapping[str, Any]],
        *,
        receive_delay: timedelta = timedelta(seconds=3),
        batch: int = SIGNATURE_BATCH_SIZE,
    ) -> list[UsageRecord]:
        """:meth:`usage_records` keyed as the SDK keys them: by licence, a retraction by
        its original's licence (else its vendor)."""
        licence_of: dict[str, str] = {}
        keys = []
        for raw in raws:
            if raw.get("licence_id"):
                licence_of.setdefault(str(raw["event_id"]), str(raw["licence_id"]))
                keys.append(str(raw["licence_id"]))
            else:
                original = str(raw.get("original_event_id", ""))
                keys.append(licence_of.get(original, str(raw["vendor_id"])))
        return self.usage_records(raws, keys=keys, receive_delay=receive_delay, batch=batch)

    def produce(self, records: Sequence[UsageRecord], *, producer: Any = None) -> None:
        """Publish and remember each record's (partition, offset)."""
        own = producer is None
        producer = producer or self._producer()
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                self.produced.append((msg.partition(), msg.offset()))

        topic = self.topic(USAGE)
        for record in records:
            while True:
                try:
                    producer.produce(
                        topic,
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        if own:
            assert producer.flush(180) == 0, "records not delivered"
        assert not failures, failures[:5]

    def records_on(self, *topics: Any) -> int:
        """Records written to ``topics`` so far (sum of their partitions' high watermarks)."""
        from confluent_kafka import TopicPartition

        consumer = make_consumer(self.kafka, f"{self.kafka.topic_prefix}watermarks")
        try:
            total = 0
            for topic in topics:
                for p in range(self.partitions):
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(self.topic(topic), p), timeout=10
                    )
                    total += high
            return total
        finally:
            consumer.close()

    # --- services ----------------------------------------------------------------------------

    def service_env(self, name: str) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "RESIDUALS_TOPIC_PREFIX": self.kafka.topic_prefix,
            "RESIDUALS_TOPIC_PARTITIONS": str(self.partitions),
            "DATABASE_URL": self.dsn,
            **role_env(name),
            "OTEL_SERVICE_NAME": name,
            "METER_DATA_DIR": str(self.work_dir / "meter-data"),
            "LOG_LEVEL": "INFO",
            "RESIDUALS_RECEIPT_KEY": self.receipt_key.hex(),
        }

    def meter(self, name: str = "meter", **env: str) -> Service:
        """A meter process; ``name`` tells several apart (log files, faust data dir)."""
        own = {"METER_DATA_DIR": str(self.work_dir / f"{name}-data")} if name != "meter" else {}
        return Service(
            name,
            "residuals.meter",
            {**self.service_env("meter"), **own, **env},
            self.work_dir,
            log_per_start=True,
        )

    def ledger(self, name: str = "ledger", **env: str) -> Service:
        """A ledger writer process; ``name`` tells several apart (log files)."""
        return Service(
            name,
            "residuals.ledger",
            {**self.service_env("ledger"), **env},
            self.work_dir,
            log_per_start=True,
        )

    # --- ledger ------------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, connect_timeout=10)

    _POSITIONS = (
        "SELECT 'e', source_partition, source_offset FROM usage_events "
        "WHERE source_topic = %(t)s "
        "UNION ALL SELECT 'r', source_partition, source_offset FROM usage_repeats "
        "WHERE source_topic = %(t)s "
        "UNION ALL SELECT 'd', source_partition, source_offset FROM dead_letters "
        "WHERE source_topic = %(t)s"
    )

    def stored_positions(self) -> list[tuple[str, int, int]]:
        """Source positions of this run's usage records in the ledger (every table)."""
        with self.connect() as conn:
            rows = conn.execute(self._POSITIONS, {"t": self.topic(USAGE)}).fetchall()
        return [(str(k), int(p), int(o)) for k, p, o in rows]

    def stored_count(self) -> int:
        """How many of this run's usage records the ledger holds, counted by the server
        (polling the positions themselves cost PostgreSQL more CPU than the benchmark's
        pipeline did per event)."""
        with self.connect() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM ({self._POSITIONS}) AS stored", {"t": self.topic(USAGE)}
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def wait_ledgered(
        self,
        count: int,
        timeout: float,
        services: Sequence[Service] = (),
        *,
        supervise: bool = False,
    ) -> list[tuple[str, int, int]]:
        """Wait until ``count`` records are in the ledger. With ``supervise``, a service that
        exited is started again (what Kubernetes does), else its exit fails the wait."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stored_count() >= count:
                return self.stored_positions()
            for service in services:
                if service.process is not None and not service.alive():
                    if supervise:
                        service.restart()
                        continue
                    raise AssertionError(
                        f"{service.name} exited ({service.process.returncode}):\n"
                        + service.log_tail()
                    )
            if time.monotonic() > deadline:
                rows = self.stored_positions()
                raise AssertionError(
                    f"{len(rows)} of {count} records ledgered after {timeout:.0f} s\n"
                    + self.positions_report(rows)
                    + "\n".join(f"--- {s.name}\n{s.log_summary()}" for s in services)
                )
            time.sleep(0.5)

    def positions_report(self, rows: Sequence[tuple[str, int, int]]) -> str:
        """Where each partition's records are, to tell a stuck meter from a stuck ledger:
        per usage partition produced, ledgered, the meter group's committed offset and the
        high watermark; per rated/dead-letter partition the ledger's stored position."""
        from confluent_kafka import TopicPartition

        produced = Counter(p for p, _o in self.produced)
        ledgered = Counter(p for _t, p, _o in rows)
        missing: dict[int, list[int]] = {}
        stored = {(p, o) for _t, p, o in rows}
        for p, o in self.produced:
            if (p, o) not in stored:
                missing.setdefault(p, []).append(o)
        lines = ["usage partition: produced ledgered meter-committed high missing-offsets"]
        consumer = make_consumer(self.kafka, f"{self.kafka.topic_prefix}meter")
        try:
            usage = [TopicPartition(self.topic(USAGE), p) for p in range(self.partitions)]
            committed = {tp.partition: tp.offset for tp in consumer.committed(usage, timeout=10)}
            for p in range(self.partitions):
                _low, high = consumer.get_watermark_offsets(usage[p], timeout=10)
                gap = sorted(missing.get(p, []))
                span = f"{gap[0]}..{gap[-1]} ({len(gap)})" if gap else "-"
                lines.append(f"  {p}: {produced[p]} {ledgered[p]} {committed.get(p)} {high} {span}")
            with self.connect() as conn:
                offsets = conn.execute(
                    "SELECT topic, partition, next_offset, epoch FROM consumer_offsets "
                    "WHERE topic LIKE %s ORDER BY topic, partition",
                    (self.kafka.topic_prefix + "%",),
                ).fetchall()
            lines.append("ledger positions: topic[partition] stored-next (epoch) / high")
            for topic, p, next_offset, epoch in offsets:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                lines.append(f"  {topic}[{p}] {next_offset} ({epoch}) / {high}")
        except Exception as exc:  # the report must not hide the failure it explains
            lines.append(f"  (positions unavailable: {exc!r})")
        finally:
            consumer.close()
        return "\n".join(lines) + "\n"

    def delete_period(self, period: str) -> None:
        """Forget ledger rows of ``period`` (test-owned periods only)."""
        with self.connect() as conn:
            for table in ("usage_events", "usage_repeats", "dead_letters"):
                conn.execute(f"DELETE FROM {table} WHERE period = %s", (period,))
            conn.execute("DELETE FROM ledger_totals WHERE period = %s", (period,))


@contextlib.contextmanager
def pipeline(stack: StackSettings, work_dir: Path, partitions: int = 6) -> Iterator[Pipeline]:
    run = Pipeline(stack, work_dir, partitions)
    run.create_topics()
    try:
        yield run
    finally:
        run.delete_topics()


# --- reading a run's topics, waiting for its services ----------------------------------------


def read_topic(run: Pipeline, topic: Any, count: int, timeout: float = 60.0) -> list[Any]:
    """Up to ``count`` records of the run's ``topic`` from the beginning (waits ``timeout``)."""
    consumer = make_consumer(run.kafka, f"{run.kafka.topic_prefix}reader-{topic.name}")
    consumer.assign(
        [TopicPartition(run.topic(topic), p, OFFSET_BEGINNING) for p in range(run.partitions)]
    )
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            found.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return found


def wait_serving(service: Service, timeout: float = 90.0) -> None:
    """Wait until ``service`` reports SERVING; fail the test (with its log's tail) if it
    exits or does not in ``timeout`` seconds."""
    try:
        service.wait_healthy(timeout)
    except ServiceFailed as failed:
        raise AssertionError(f"meter not SERVING: {failed}") from None


def kill_while_publishing(run: Pipeline, meter: Service, timeout: float = 30.0) -> None:
    """kill -9 the meter as soon as its outputs grow: in the middle of a batch, whose
    outputs are out and whose state and offsets are not (a kill at a fixed time after a
    chunk sometimes fell between batches and proved nothing)."""
    before = run.records_on(USAGE_RATED, USAGE_DLQ)
    deadline = time.monotonic() + timeout
    while run.records_on(USAGE_RATED, USAGE_DLQ) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    meter.kill9()
