"""Relays on the real stack with rows Kafka will never accept: a record larger than the
topic's max.message.bytes, headers that do not serialize, a topic the relay does not write,
a payload that is not a PayoutEvent. Each is set aside (quarantine row, marked) and every
other row is published exactly once, in order, without waiting on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import NewTopic
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb

from residuals.licensing.metrics import RelayMetrics
from residuals.licensing.outbox import OUTBOX_ID_HEADER, OutboxRelay
from residuals.licensing.registry import Registry
from residuals.payouts.relay import PayoutRelay
from residuals.platform import topics
from residuals.platform.config import KafkaSettings, PostgresSettings
from residuals.platform.kafka import make_admin
from residuals.platform.postgres import Database
from residuals.stack.settings import StackSettings
from residuals.v1 import payouts_pb2
from tests.support.licensing import (
    ADMIN,
    consume_all,
    create_request,
    header,
    kafka_settings,
    licence_with_id,
    outbox_counts,
    parties,
    reset_registry,
)
from tests.support.payouts import OCT, World

#: Small enough that a padded record is refused, large enough for every real record.
MAX_MESSAGE_BYTES = 4096


def create_small_topics(stack: StackSettings, prefix: str, *chosen: topics.Topic) -> None:
    admin = make_admin(KafkaSettings(bootstrap_servers=stack.bootstrap_servers))
    futures = admin.create_topics(
        [
            NewTopic(
                t.qualified(prefix),
                num_partitions=stack.topic_partitions,
                replication_factor=1,
                config={**t.config(), "max.message.bytes": str(MAX_MESSAGE_BYTES)},
            )
            for t in chosen
        ]
    )
    for future in futures.values():
        future.result(30)


def quarantined(dsn: str, consumer: str, topic_prefix: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT source_offset, source_partition, source_topic, record_value, error"
            " FROM quarantine WHERE consumer = %s AND source_topic LIKE %s"
            " ORDER BY source_offset",
            (consumer, f"{topic_prefix}%"),
        ).fetchall()


@pytest.fixture
def registry(stack: StackSettings) -> Iterator[Registry]:
    reset_registry(stack.dsn)
    db = Database(PostgresSettings(dsn=stack.dsn, pool_min=1, pool_max=2), application_name="t")
    db.open()
    try:
        yield Registry(db)
    finally:
        db.close()


def enqueue(dsn: str, topic: str, key: bytes, payload: bytes, headers: Any) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO outbox (topic, message_key, payload, headers) VALUES (%s,%s,%s,%s)"
            " RETURNING id",
            (topic, key, payload, Jsonb(headers)),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_outbox_sets_aside_rows_kafka_refuses_and_publishes_the_rest_exactly_once(
    stack: StackSettings, registry: Registry
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    create_small_topics(stack, prefix, topics.LICENCES, topics.SIGNING_KEYS)
    parties(registry)
    registry.create_licence(ADMIN, create_request(licence_with_id("LIC-A")))
    good = licence_with_id("LIC-A")
    huge = enqueue(stack.dsn, topics.LICENCES.name, b"LIC-X", b"\x0a" + b"x" * 20_000, {})
    registry.create_licence(ADMIN, create_request(licence_with_id("LIC-B")))
    bad_headers = enqueue(stack.dsn, topics.LICENCES.name, b"LIC-Y", b"", [1, 2])
    nowhere = enqueue(stack.dsn, "residuals.nowhere.v1", b"LIC-Z", b"", {})
    for n in range(5):
        registry.create_licence(ADMIN, create_request(licence_with_id(f"LIC-C{n}")))
    total, _ = outbox_counts(stack.dsn)
    assert total == 10 and good.licence_id == "LIC-A"

    relay = OutboxRelay(
        stack.dsn,
        kafka_settings(stack, prefix),
        batch_size=50,
        metrics=RelayMetrics(CollectorRegistry()),
    )
    assert relay.start()
    try:
        while relay.publish_once():
            pass
    finally:
        relay.close()

    with psycopg.connect(stack.dsn) as conn:
        states = conn.execute(
            "SELECT id, published_at IS NOT NULL, quarantined_at IS NOT NULL FROM outbox"
            " ORDER BY id"
        ).fetchall()
    aside = {huge, bad_headers, nowhere}
    assert [(i, p, q) for i, p, q in states] == [
        (i, i not in aside, i in aside) for i, *_ in states
    ]

    records = consume_all(stack, topics.LICENCES.qualified(prefix), expect=7)
    ids = [int(header(r, OUTBOX_ID_HEADER) or 0) for r in records]
    assert sorted(ids) == sorted(i for i, *_ in states if i not in aside), "each once"
    for partition in {r.partition() for r in records}:
        mine = [i for i, r in zip(ids, records, strict=True) if r.partition() == partition]
        assert mine == sorted(mine), "in commit order"
    assert sorted(r.key() for r in records) == [
        b"LIC-A",
        b"LIC-B",
        *(f"LIC-C{n}".encode() for n in range(5)),
    ]

    rows = quarantined(stack.dsn, "licensing-outbox", prefix)
    assert [r[0] for r in rows] == sorted(aside)
    by_id = {r[0]: r for r in rows}
    assert "MSG_SIZE_TOO_LARGE" in by_id[huge][4]
    assert bytes(by_id[huge][3]) == b"\x0a" + b"x" * 20_000  # the row's bytes, for a re-drive
    assert by_id[huge][1] == -1 and by_id[huge][2] == topics.LICENCES.qualified(prefix)
    assert "headers" in by_id[bad_headers][4]
    assert "not a topic the relay writes" in by_id[nowhere][4]

    # nothing is left behind: later changes go straight out
    registry.create_licence(ADMIN, create_request(licence_with_id("LIC-D")))
    relay = OutboxRelay(
        stack.dsn, kafka_settings(stack, prefix), metrics=RelayMetrics(CollectorRegistry())
    )
    assert relay.start()
    try:
        assert relay.publish_once() == 1
    finally:
        relay.close()


def test_the_payout_relay_sets_aside_an_event_kafka_refuses(
    stack: StackSettings,
    world: World,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    create_small_topics(stack, prefix, topics.PAYOUTS)
    world.close(OCT)
    with world.db.connection() as conn:
        (payout_id, payee_id, payload) = conn.execute(
            "SELECT payout_id, payee_id, payload FROM payout_events"
        ).fetchone() or ("", "", b"")
        bloated = payouts_pb2.PayoutEvent.FromString(payload)
        bloated.payout.failure_reason = "x" * 20_000
        for body in (bloated.SerializeToString(), b"\xff not a payout event", payload):
            conn.execute(
                "INSERT INTO payout_events (payout_id, payee_id, period, state, payload)"
                " VALUES (%s, %s, '2026-10', 'PENDING', %s)",
                (payout_id, payee_id, body),
            )
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers, topic_prefix=prefix)
    relay = PayoutRelay(world.db, kafka, batch=10)
    assert relay.publish_once() == 2
    assert relay.publish_once() == 0
    with world.db.connection() as conn:
        states = conn.execute(
            "SELECT sequence, published_at IS NOT NULL, quarantined_at IS NOT NULL"
            " FROM payout_events ORDER BY sequence"
        ).fetchall()
    # The payouts role may write quarantine rows but not read them: an operator reads.
    with psycopg.connect(world.owner) as conn:
        rows = conn.execute(
            "SELECT source_offset, error FROM quarantine WHERE consumer = 'payouts-relay'"
            " ORDER BY source_offset"
        ).fetchall()
    assert [(p, q) for _, p, q in states] == [
        (True, False),
        (False, True),
        (False, True),
        (True, False),
    ]
    assert [r[0] for r in rows] == [states[1][0], states[2][0]]
    assert "MSG_SIZE_TOO_LARGE" in rows[0][1] and "DecodeError" in rows[1][1]
    records = consume_all(stack, topics.PAYOUTS.qualified(prefix), expect=2)
    # the two good events (a batch the broker refused may be re-sent: at-least-once)
    assert len(records) >= 2 and {r.value() for r in records} == {payload}
