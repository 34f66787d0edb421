"""Poison in the registries on the real stack: the meter's licence, key and approval
replicas read a real topic holding bad records and quarantine them to a real quarantine
topic, keeping the last good version; the gateway's directory meets bad PostgreSQL rows and answers
"unknown" for them only."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from residuals.codecs import approvals as approval_codec
from residuals.codecs import licences as codec
from residuals.codecs.signing import public_key_bytes, signing_key_record
from residuals.domain.approvals import Approval
from residuals.ingest.directory import PostgresDirectory
from residuals.meter.lookups import ApprovalRegistry, KeyRegistry, LicenceRegistry
from residuals.platform.config import KafkaSettings, PostgresSettings
from residuals.platform.kafka import AcknowledgedProducer, make_consumer, make_producer
from residuals.platform.postgres import Database
from residuals.platform.quarantine import QuarantinePublisher
from residuals.platform.replica import TopicReplica
from residuals.stack.settings import StackSettings
from residuals.v1 import approvals_pb2, quarantine_pb2
from tests.support.builders import licence
from tests.support.ingest import Registry as Rows
from tests.support.waiting import wait_until

NewTopic = Callable[[str, int], tuple[KafkaSettings, str]]


def read_quarantine(kafka: KafkaSettings, topic: str, expect: int) -> list[Any]:
    consumer = make_consumer(
        kafka, f"test-{uuid.uuid4().hex[:8]}", **{"auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < expect and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append(quarantine_pb2.QuarantinedRecord.FromString(message.value()))
    finally:
        consumer.close()
    return found


def produce(
    kafka: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    producer: Producer = make_producer(kafka, client_id="test-poison")
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def raw(**overrides: Any) -> bytes:
    return codec.to_proto(licence(**overrides)).SerializeToString()


def test_meter_replicas_quarantine_poison_and_keep_the_last_good_version(
    new_topic: NewTopic,
) -> None:
    kafka, licences_topic = new_topic("licences", 2)
    _, keys_topic = new_topic("keys", 1)
    _, quarantine_topic = new_topic("quarantine", 1)
    publisher = QuarantinePublisher(
        AcknowledgedProducer(kafka, client_id="meter-quarantine"), quarantine_topic
    )
    licences = TopicReplica(
        kafka, licences_topic, name="meter-licences", quarantine=publisher.publish
    )
    keys = TopicReplica(kafka, keys_topic, name="meter-keys", quarantine=publisher.publish)
    registry, key_registry = LicenceRegistry(licences), KeyRegistry(keys)

    nan_rate = codec.to_proto(licence(platform_fee="0.20"))
    nan_rate.versions[0].rates.view_cpm = "NaN"
    no_versions = codec.to_proto(licence(licence_id="LIC-2"))
    del no_versions.versions[:]
    bad_time = codec.to_proto(licence(licence_id="LIC-3"))
    bad_time.versions[0].starts_at.nanos = -1
    produce(
        kafka,
        licences_topic,
        [
            (b"LIC-1", raw(platform_fee="0.10")),
            (b"LIC-1", nan_rate.SerializeToString()),
            (b"LIC-1", None),
            (b"LIC-2", no_versions.SerializeToString()),
            (b"LIC-3", bad_time.SerializeToString()),
            (b"\xff\x00", raw()),
            (None, raw()),
            (b"LIC-4", b"\x0a\xff not protobuf"),
        ],
    )
    private = Ed25519PrivateKey.generate()
    good_key = signing_key_record("vk-1", "VEN-1", private)
    short_key = signing_key_record("vk-2", "VEN-1", private)
    short_key.public_key = public_key_bytes(private)[:31]
    produce(
        kafka,
        keys_topic,
        [
            (b"vk-1", good_key.SerializeToString()),
            (b"vk-1", None),
            (b"vk-2", short_key.SerializeToString()),
        ],
    )
    labels = {"consumer": "meter-licences", "topic": licences_topic}
    before = REGISTRY.get_sample_value("residuals_quarantined_records_total", labels) or 0
    licences.start(), keys.start()
    try:
        assert licences.wait_caught_up(60) and keys.wait_caught_up(60)
        wait_until(lambda: licences.poisoned == 7 and keys.poisoned == 2, 30, "poison counted")
        assert registry["LIC-1"].latest.platform_fee == Decimal("0.10")  # the last good one
        assert [registry.get(i) for i in ("LIC-2", "LIC-3", "LIC-4")] == [None, None, None]
        assert key_registry.verifying_key("vk-1") is not None
        assert key_registry.verifying_key("vk-2") is None

        quarantined = read_quarantine(kafka, quarantine_topic, expect=9)
        by_consumer = {q.consumer for q in quarantined}
        assert by_consumer == {"meter-licences", "meter-keys"}
        errors = sorted(q.error for q in quarantined if q.consumer == "meter-licences")
        assert any("versions[0].rates.view_cpm" in e for e in errors)
        assert any("versions: needs at least one version" in e for e in errors)
        assert any("versions[0].starts_at" in e for e in errors)
        assert any("tombstone" in e for e in errors)
        assert any("without a key" in e for e in errors)
        tombstone = next(
            q for q in quarantined if "tombstone" in q.error and q.consumer == "meter-licences"
        )
        assert not tombstone.has_value and tombstone.source_topic == licences_topic
        after = REGISTRY.get_sample_value("residuals_quarantined_records_total", labels)
        assert after == before + 7

        # the reader is still alive: a new good version is served at once
        produce(kafka, licences_topic, [(b"LIC-1", raw(platform_fee="0.30"))])
        wait_until(
            lambda: registry["LIC-1"].latest.platform_fee == Decimal("0.30"), 30, "next version"
        )
    finally:
        licences.stop(), keys.stop()


def approval_record(
    approval_id: str = "APR-1", *, status: int | None = None, revision: int = 1, **fields: Any
) -> approvals_pb2.Approval:
    values: dict[str, Any] = {
        "licence_id": "LIC-1",
        "category": "product_demo",
        "valid_from": datetime(2026, 10, 1, tzinfo=UTC),
        "max_renders": 3,
        **fields,
    }
    message = approval_codec.to_proto(Approval(approval_id, **values))
    if status is not None:
        message.status = status  # type: ignore[assignment]
    message.revision = revision
    return message


def test_the_approval_replica_quarantines_forged_and_stale_records(new_topic: NewTopic) -> None:
    """A forged or replayed record cannot approve a use nor bring back a denied approval:
    the replica refuses it and the registry keeps the last good state."""
    kafka, approvals_topic = new_topic("approvals", 2)
    _, quarantine_topic = new_topic("quarantine", 1)
    publisher = QuarantinePublisher(
        AcknowledgedProducer(kafka, client_id="meter-quarantine"), quarantine_topic
    )
    replica = TopicReplica(
        kafka, approvals_topic, name="meter-approvals", quarantine=publisher.publish
    )
    registry = ApprovalRegistry(replica)
    no_start = approval_record("APR-3", revision=2)
    no_start.ClearField("valid_from")
    denied = approvals_pb2.APPROVAL_STATUS_DENIED
    produce(
        kafka,
        approvals_topic,
        [
            (b"APR-1", approval_record(revision=2).SerializeToString()),
            (b"APR-1", b"\x0a\xff not protobuf"),
            (b"APR-1", approval_record("APR-9", max_renders=1000).SerializeToString()),
            (b"APR-1", None),
            (b"APR-1", approval_record(status=denied, revision=1).SerializeToString()),
            (b"APR-2", approval_record("APR-2", max_renders=0).SerializeToString()),
            (b"APR-3", no_start.SerializeToString()),
            (None, approval_record().SerializeToString()),
        ],
    )
    replica.start()
    try:
        assert replica.wait_caught_up(60)
        wait_until(lambda: replica.poisoned == 7, 30, "poison counted")
        approval = registry.get("APR-1")
        assert approval is not None and approval.max_renders == 3  # the last good state
        assert registry.get("APR-2") is None and registry.get("APR-3") is None
        assert registry.get("APR-9") is None

        quarantined = read_quarantine(kafka, quarantine_topic, expect=7)
        assert {q.consumer for q in quarantined} == {"meter-approvals"}
        errors = [q.error for q in quarantined]
        for expected in (
            "(record)",
            "(key)",
            "tombstone",
            "older than the held revision 2",
            "max_renders",
            "valid_from",
            "without a key",
        ):
            assert any(expected in e for e in errors), (expected, errors)

        # still reading: the next revision (a later decision) is served at once
        produce(
            kafka,
            approvals_topic,
            [(b"APR-1", approval_record(status=denied, revision=3).SerializeToString())],
        )
        wait_until(lambda: registry.get("APR-1") is None, 30, "next revision")
    finally:
        replica.stop()


@pytest.fixture
def directory(stack: StackSettings) -> Iterator[PostgresDirectory]:
    db = Database(PostgresSettings(dsn=stack.dsn, pool_min=1, pool_max=2), application_name="test")
    db.open()
    try:
        yield PostgresDirectory(db, negative_ttl_seconds=0.0)
    finally:
        db.close()


def test_the_gateway_directory_treats_a_bad_row_as_unknown_and_serves_the_rest(
    stack: StackSettings, directory: PostgresDirectory
) -> None:
    run = uuid.uuid4().hex[:8]
    rows = Rows(stack.dsn, run)
    good = rows.vendor("good", currencies=("USD", "EUR"))
    bad = rows.vendor("bad", currencies=("USD",))
    licences = list(good.licences)
    with psycopg.connect(stack.dsn) as conn:
        # written by hand: a currency no one pays in, a key revoked "at infinity", a key
        # revoked before the era, a vendor id with terminal escapes
        conn.execute(
            "UPDATE licences SET currency_code = 'ZZZ' WHERE licence_id = %s", (licences[1],)
        )
        conn.execute(
            "UPDATE vendor_signing_keys SET revoked_at = 'infinity' WHERE key_id = %s",
            (bad.signing_key.key_id,),
        )
        old = f"sk-old-{run}"
        conn.execute(
            "INSERT INTO vendor_signing_keys (key_id, vendor_id, public_key, created_by,"
            " revoked_at) VALUES (%s, %s, %s, 'test', '1970-01-01')",
            (old, good.vendor_id, os.urandom(32)),
        )
        evil_vendor = f"VEN-\x1b[2J-{run}"
        conn.execute(
            "INSERT INTO vendors (vendor_id, created_by) VALUES (%s, 'test')", (evil_vendor,)
        )
        evil = f"sk-evil-{run}"
        conn.execute(
            "INSERT INTO vendor_signing_keys (key_id, vendor_id, public_key, created_by)"
            " VALUES (%s, %s, %s, 'test')",
            (evil, evil_vendor, os.urandom(32)),
        )
    before = sum(
        REGISTRY.get_sample_value(
            "residuals_quarantined_records_total", {"consumer": "ingest-directory", "topic": t}
        )
        or 0
        for t in ("licences", "vendor_signing_keys")
    )
    assert directory.licence(licences[0]) is not None
    assert directory.licence(licences[1]) is None  # ZZZ: unknown, not an exception
    assert directory.signing_key(good.signing_key.key_id) is not None
    for key_id in (bad.signing_key.key_id, old, evil):
        assert directory.signing_key(key_id) is None
        assert directory.signing_key(key_id) is None  # looked up again: reported once
    assert directory.signing_key("sk-\x00-nul") is None  # never reaches the query
    after = sum(
        REGISTRY.get_sample_value(
            "residuals_quarantined_records_total", {"consumer": "ingest-directory", "topic": t}
        )
        or 0
        for t in ("licences", "vendor_signing_keys")
    )
    assert after == before + 4
