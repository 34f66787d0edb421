"""Poison never stops the line: the ledger writer on the real local Kafka and PostgreSQL.

Good rated usage and dead letters are produced to the writer's topics (under a prefix of
the test's own) interleaved with poison: a tombstone, undecodable bytes, ids with a NUL
byte or 60,000 characters, timestamps with nanos -1 or seconds 2^62, unknown enum values,
and a tier no integer column holds (PostgreSQL refuses it: the batch is bisected). Every
good record must be stored once, every poison record must be one quarantine row with its
bytes, position and error, the stored positions must reach the end of every partition,
and no batch may be retried. A database that is briefly unreachable is the opposite case:
retried (the sink reports itself stalled meanwhile), never quarantined.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from residuals.codecs.timestamps import set_timestamp
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import topic_name
from residuals.platform.quarantine import Quarantined, headers_from_blob
from residuals.platform.topics import QUARANTINE, USAGE_DLQ, USAGE_RATED
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2, usage_pb2
from tests.support.alerts import delete_topics
from tests.support.ledger import Ledger
from tests.support.sink import (
    LEDGER_TOPICS,
    Landed,
    TcpProxy,
    create_topics,
    isolated_kafka,
    ledger_settings,
    produce,
    running_writer,
    stored_positions,
)
from tests.support.waiting import wait_until

Outcome = usage_pb2.RatedUsage.Outcome


@dataclass
class Run:
    """One test's topics, consumer group, vendor and period."""

    kafka: KafkaSettings
    ledger: Ledger
    group: str
    dsn: str

    @property
    def offsets_group(self) -> str:
        """The group the writer stores its positions under (prefixed, like its topics)."""
        return f"{self.kafka.topic_prefix}{self.group}"

    @property
    def rated(self) -> str:
        return topic_name(self.kafka, USAGE_RATED)

    @property
    def dlq(self) -> str:
        return topic_name(self.kafka, USAGE_DLQ)

    @property
    def quarantine(self) -> str:
        return topic_name(self.kafka, QUARANTINE)

    @property
    def usage(self) -> str:
        """The source topic dead letters name (unique to the run, for clean-up)."""
        return f"{self.kafka.topic_prefix}usage"

    def rated_bytes(self, event_id: str, change: Callable[[usage_pb2.RatedUsage], None]) -> bytes:
        """A good rated record of ``event_id`` changed by ``change`` (the poison)."""
        rated = usage_pb2.RatedUsage.FromString(
            self.ledger.rated(self.ledger.event(event_id)).value()
        )
        change(rated)
        return rated.SerializeToString()

    def dead_letter(self, event_id: str, *, original: bytes = b"junk", **fields: object) -> bytes:
        letter = usage_pb2.DeadLetter(
            reason=common_pb2.REJECT_REASON_MALFORMED,
            detail="bad",
            vendor_id=self.ledger.vendor,
            event_id=event_id,
            original=original,
            source_topic=self.usage,
            source_partition=0,
            source_offset=zlib.crc32(event_id.encode()),
        )
        for name, value in fields.items():
            setattr(letter, name, value)
        set_timestamp(letter.received_at, self.ledger.when())
        return letter.SerializeToString()

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def quarantined(self) -> dict[tuple[str, int, int], tuple[object, ...]]:
        rows = self.rows(
            "SELECT source_topic, source_partition, source_offset, consumer, record_value, "
            "record_headers, error FROM quarantine WHERE source_topic LIKE %s",
            self.kafka.topic_prefix + "%",
        )
        return {(str(r[0]), int(str(r[1])), int(str(r[2]))): r[3:] for r in rows}


@pytest.fixture
def run(stack: StackSettings) -> Iterator[Run]:
    kafka = isolated_kafka(stack, "poison")
    create_topics(kafka, LEDGER_TOPICS)
    ledger = Ledger(stack.dsn)
    test_run = Run(kafka, ledger, "ledger-writer", stack.dsn)
    try:
        yield test_run
    finally:
        ledger.cleanup()
        with psycopg.connect(stack.dsn) as conn:
            conn.execute("DELETE FROM dead_letters WHERE source_topic = %s", (test_run.usage,))
            conn.execute(
                "DELETE FROM quarantine WHERE source_topic LIKE %s", (kafka.topic_prefix + "%",)
            )
            conn.execute(
                "DELETE FROM consumer_offsets WHERE group_id = %s", (test_run.offsets_group,)
            )
        delete_topics(kafka)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _nanos(rated: usage_pb2.RatedUsage) -> None:
    rated.event.occurred_at.nanos = -1


def _far_future(rated: usage_pb2.RatedUsage) -> None:
    rated.event.occurred_at.seconds = 2**62


def _event_id(value: str) -> Callable[[usage_pb2.RatedUsage], None]:
    def change(rated: usage_pb2.RatedUsage) -> None:
        rated.event.event_id = value

    return change


def _set(field: str, value: int) -> Callable[[usage_pb2.RatedUsage], None]:
    def change(rated: usage_pb2.RatedUsage) -> None:
        setattr(rated, field, value)

    return change


def _original_at(seconds: int, nanos: int) -> bytes:
    """A signed envelope whose event claims ``occurred_at`` = (seconds, nanos)."""
    payload = usage_pb2.UsageEvent(event_id="x", vendor_id="v")
    payload.occurred_at.seconds = seconds
    payload.occurred_at.nanos = nanos
    return usage_pb2.SignedUsageEvent(payload=payload.SerializeToString()).SerializeToString()


def test_poison_interleaved_with_good_records_is_quarantined_and_the_rest_stored(
    run: Run,
) -> None:
    good_rated = [f"g{i}" for i in range(24)]
    rated_poison: dict[str, bytes | None] = {
        "tombstone": None,
        "undecodable": b"\xff\xfe\x00 not a protobuf \x1b[31m",
        "nul id": run.rated_bytes("p-nul", _event_id("evil\x00id")),
        "60,000-character id": run.rated_bytes("p-long", _event_id("x" * 60_000)),
        "nanos -1": run.rated_bytes("p-nanos", _nanos),
        "seconds 2^62": run.rated_bytes("p-future", _far_future),
        "unknown outcome": run.rated_bytes("p-outcome", _set("outcome", 99)),
        "tier PostgreSQL refuses": run.rated_bytes("p-tier", _set("tier", 2**32 - 1)),
    }
    ledger_period = str(run.ledger.period)
    good_dead = {
        "d-plain": run.dead_letter("d-plain"),
        # Descriptive vendor text is escaped, not refused: NUL, ANSI, bidi override.
        "d-escaped": run.dead_letter("d-escaped", detail="a\x00b\x1b[2J\u202ec"),
        # Absurd event times: the dead letter counts in the period of its receipt.
        "d-nanos": run.dead_letter("d-nanos", original=_original_at(1_900_000_000, -1)),
        "d-2^62": run.dead_letter("d-2^62", original=_original_at(2**62, 0)),
    }
    dead_poison: dict[str, bytes | None] = {
        "dead tombstone": None,
        "unknown reason": run.dead_letter("d-reason", reason=999),
    }
    relayed = Quarantined(
        consumer="meter-licences",
        topic=f"{run.kafka.topic_prefix}residuals.licences.v1",
        partition=4,
        offset=77,
        key=b"LIC-1",
        value=b"\x00\x01not a licence",
        error="DecodeError: Error parsing message",
        headers=((b"h", b"\x00v"),),
    )
    quarantine_poison = {"garbage on the quarantine topic": b"\x08\xff\xff\xff\xff\xff"}

    # Interleave: poison between good records, on both partitions, all in one batch.
    records: list[tuple[str, int, bytes | None, list[tuple[str, bytes]] | None]] = []
    labels: list[str] = []
    poison_iter = iter(rated_poison.items())
    for i, event_id in enumerate(good_rated):
        message = run.ledger.rated(run.ledger.event(event_id))
        records.append((run.rated, i % 2, message.value(), message.headers()))
        labels.append(event_id)
        if i % 3 == 1 and (poison := next(poison_iter, None)):
            records.append((run.rated, i % 2, poison[1], [("h\x1b[0m", b"\x00\x1b[31m")]))
            labels.append(poison[0])
    for i, (label, value) in enumerate([*good_dead.items(), *dead_poison.items()]):
        records.append((run.dlq, i % 2, value, None))
        labels.append(label)
    records.append((run.quarantine, 0, relayed.to_proto().SerializeToString(), None))
    labels.append("relayed")
    for label, value in quarantine_poison.items():
        records.append((run.quarantine, 1, value, None))
        labels.append(label)
    landed = dict(zip(labels, produce(run.kafka, records), strict=True))
    assert len(landed) == len(records)

    failures = _sample("residuals_sink_failures_total", sink="ledger")
    batches = _sample("residuals_sink_batches_total", sink="ledger")
    counted = _sample("residuals_quarantined_records_total", consumer="ledger", topic=run.rated)
    ends: dict[tuple[str, int], int] = {}
    for item in landed.values():
        key = (item.topic, item.partition)
        ends[key] = max(ends.get(key, 0), item.offset + 1)
    with running_writer(ledger_settings(run.kafka, run.dsn, run.group)):
        wait_until(
            lambda: all(
                stored_positions(run.dsn, run.offsets_group).get(k, 0) >= v for k, v in ends.items()
            ),
            60,
            "the stored positions to reach the end of every partition",
            lambda: (ends, stored_positions(run.dsn, run.offsets_group)),
        )

    # Every good record stored once.
    stored = run.rows(
        "SELECT event_id, count(*) FROM usage_events WHERE vendor_id = %s GROUP BY event_id",
        run.ledger.vendor,
    )
    assert sorted(stored) == sorted((e, 1) for e in good_rated)
    dead = {
        str(r[0]): r[1:]
        for r in run.rows(
            "SELECT event_id, detail, period, reason FROM dead_letters WHERE source_topic = %s",
            run.usage,
        )
    }
    assert sorted(dead) == sorted(good_dead)
    assert dead["d-escaped"][0] == "a\\x00b\\x1b[2J\\u202ec"
    assert dead["d-nanos"][1] == dead["d-2^62"][1] == ledger_period
    assert all(row[2] == "MALFORMED" for row in dead.values())

    # Every poison record: one quarantine row with its bytes, position and error.
    rows = run.quarantined()
    expected_errors = {
        "tombstone": "tombstone",
        "undecodable": "not a RatedUsage",
        "nul id": "non-printable character",
        "60,000-character id": "60,000 characters",
        "nanos -1": "nanos -1",
        "seconds 2^62": "outside 2000-01-01",
        "unknown outcome": "unknown outcome 99",
        "tier PostgreSQL refuses": "out of range for type integer",
        "dead tombstone": "tombstone",
        "unknown reason": "unknown reject reason 999",
        "garbage on the quarantine topic": "QuarantinedRecord",
    }
    for label, fragment in expected_errors.items():
        item: Landed = landed[label]
        consumer, value, headers, error = rows.pop((item.topic, item.partition, item.offset))
        assert consumer == "ledger", label
        assert (bytes(value) if value is not None else None) == item.value, label
        assert fragment in str(error), f"{label}: {error}"
        if item.topic == run.rated:
            assert headers_from_blob(bytes(headers)) == ((b"h\x1b[0m", b"\x00\x1b[31m"),)
    # ...and the record another consumer set aside, stored as it was published.
    consumer, value, headers, error = rows.pop((relayed.topic, relayed.partition, relayed.offset))
    assert (consumer, bytes(value), error) == (relayed.consumer, relayed.value, relayed.error)
    assert headers_from_blob(bytes(headers)) == relayed.headers
    assert rows == {}

    # No batch was retried: the poison cost bisection inside a batch, not a rollback.
    assert _sample("residuals_sink_failures_total", sink="ledger") == failures
    assert _sample("residuals_sink_batches_total", sink="ledger") - batches <= 6
    assert _sample(
        "residuals_quarantined_records_total", consumer="ledger", topic=run.rated
    ) - counted == len(rated_poison)
    # Positions exactly at the end: nothing skipped, nothing to read again.
    positions = stored_positions(run.dsn, run.offsets_group)
    assert {k: v for k, v in positions.items() if k in ends} == ends


def test_a_database_briefly_unreachable_is_retried_not_quarantined(
    run: Run, stack: StackSettings
) -> None:
    upstream = conninfo_to_dict(stack.dsn)
    proxy = TcpProxy((str(upstream.get("host", "127.0.0.1")), int(str(upstream["port"])))).up()
    dsn = make_conninfo(stack.dsn, host="127.0.0.1", port=str(proxy.port))
    settings = ledger_settings(run.kafka, dsn, run.group, stall_seconds=2.0)
    first = [f"a{i}" for i in range(5)]
    second = [f"b{i}" for i in range(5)]

    def send(event_ids: list[str]) -> list[Landed]:
        messages = [run.ledger.rated(run.ledger.event(e)) for e in event_ids]
        return produce(run.kafka, [(run.rated, 0, m.value(), m.headers()) for m in messages])

    def stored() -> set[str]:
        return {str(r[0]) for r in rows()}

    def rows() -> list[tuple[object, ...]]:
        return run.rows("SELECT event_id FROM usage_events WHERE vendor_id = %s", run.ledger.vendor)

    health: list[bool] = []
    failures = _sample("residuals_sink_failures_total", sink="ledger")
    try:
        with running_writer(settings) as writer, psycopg.connect(stack.dsn) as blocker:
            writer.on_stalled = health.append
            send(first)
            wait_until(lambda: stored() == set(first), 30, "the first records")
            # Hold the writer's positions so its next batch waits inside its transaction,
            # then cut the database away under it: the batch fails and is retried.
            blocker.execute(
                "SELECT 1 FROM consumer_offsets WHERE group_id = %s FOR UPDATE",
                (run.offsets_group,),
            )
            send(second)
            wait_until(lambda: _waiting_on_lock(stack.dsn), 30, "the batch to wait")
            proxy.down()  # PostgreSQL unreachable: connections dropped, new ones refused
            down_at = time.monotonic()
            blocker.rollback()
            wait_until(lambda: health == [True], 30, "the sink to report itself stalled")
            assert time.monotonic() - down_at >= 1.0
            assert _sample("residuals_sink_stalled", sink="ledger") == 1
            assert _sample("residuals_sink_failures_total", sink="ledger") > failures
            assert stored() == set(first)
            proxy.up()
            wait_until(lambda: stored() == set(first + second), 60, "the records after")
            wait_until(lambda: health == [True, False], 10, "the sink to advance again")
            assert _sample("residuals_sink_stalled", sink="ledger") == 0
    finally:
        proxy.down()
    assert len(rows()) == len(first + second)  # each once
    assert run.quarantined() == {}  # retried, not quarantined


def _waiting_on_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ledger' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])
