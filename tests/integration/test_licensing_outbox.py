"""The outbox on the real stack: registry changes reach the compacted topics in commit
order, each exactly once (read_committed), across a relay killed mid-stream, a crash
between the Kafka commit and the PostgreSQL mark, and a standby relay taking over."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from residuals.codecs import licences as licence_codec
from residuals.codecs.timestamps import set_timestamp
from residuals.licensing.metrics import RelayMetrics
from residuals.licensing.outbox import OUTBOX_ID_HEADER, OutboxRelay
from residuals.licensing.registry import Registry
from residuals.platform import topics
from residuals.platform.config import PostgresSettings
from residuals.platform.postgres import Database
from residuals.platform.processes import ServiceProcess
from residuals.platform.roles import database_role
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_pb2, licence_service_pb2
from tests.support.licensing import (
    ADMIN,
    consume_all,
    create_request,
    create_topics,
    ensure_parties,
    header,
    kafka_settings,
    licence_with_id,
    new_prefix,
    outbox_counts,
    parties,
    reset_registry,
    start_service,
)
from tests.support.waiting import wait_until


@pytest.fixture
def prefix(stack: StackSettings) -> str:
    reset_registry(stack.dsn)
    value = new_prefix()
    create_topics(stack, value)
    return value


@pytest.fixture
def registry(stack: StackSettings) -> Iterator[Registry]:
    settings = PostgresSettings(
        dsn=stack.dsn, pool_min=1, pool_max=4, user=database_role("licensing")
    )
    db = Database(settings, application_name="test")
    db.open()
    try:
        yield Registry(db)
    finally:
        db.close()


def ts(value: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    set_timestamp(stamp, value)
    return stamp


def lifecycle(registry: Registry, licence_id: str) -> None:
    """create -> amend -> suspend -> revoke: four changes, revisions 1..4."""
    licence = licence_with_id(licence_id)
    message = licence_codec.to_proto(licence)
    registry.create_licence(ADMIN, create_request(licence))
    terms = licence_pb2.LicenceVersion()
    terms.CopyFrom(message.versions[0])
    terms.rates.view_cpm = "5.00"
    registry.amend_licence(
        ADMIN,
        licence_service_pb2.AmendLicenceRequest(
            licence_id=licence_id, terms=terms, effective_from=ts(datetime(2026, 6, 1, tzinfo=UTC))
        ),
    )
    registry.suspend_licence(
        ADMIN, licence_service_pb2.SuspendLicenceRequest(licence_id=licence_id, reason="audit")
    )
    registry.revoke_licence(
        ADMIN,
        licence_service_pb2.RevokeLicenceRequest(
            licence_id=licence_id, wind_down_days=3, reason="withdrawn"
        ),
    )


def check_exactly_once_in_order(records: list[Any], dsn: str) -> None:
    """Each outbox row once; per licence, revisions strictly ascending; last = database."""
    ids = [int(header(r, OUTBOX_ID_HEADER) or 0) for r in records]
    with psycopg.connect(dsn) as conn:
        expected = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM outbox WHERE topic = %s ORDER BY id", (topics.LICENCES.name,)
            )
        ]
        revisions = dict(conn.execute("SELECT licence_id, revision FROM licences").fetchall())
    assert sorted(ids) == expected, "every change exactly once"
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record, outbox_id in zip(records, ids, strict=True):
        message = licence_pb2.Licence.FromString(record.value())
        assert record.key().decode() == message.licence_id
        by_key[message.licence_id].append((outbox_id, message.revision))
    for licence_id, seen in by_key.items():
        assert [rev for _, rev in seen] == list(range(1, len(seen) + 1)), licence_id
        assert [i for i, _ in seen] == sorted(i for i, _ in seen), licence_id
        assert seen[-1][1] == revisions[licence_id]


def test_changes_arrive_in_order_with_full_state(stack: StackSettings, prefix: str) -> None:
    started = start_service(stack, prefix, relay=True)
    service = started.service
    try:
        from tests.support.licensing import api_key

        admin = api_key(stack.dsn, ADMIN)
        licence = licence_with_id("LIC-OUT")
        ensure_parties(service, admin, licence)
        message = licence_codec.to_proto(licence)
        service.call("CreateLicence", create_request(licence), admin)
        terms = licence_pb2.LicenceVersion()
        terms.CopyFrom(message.versions[0])
        terms.rates.view_cpm = "5.00"
        service.call(
            "AmendLicence",
            licence_service_pb2.AmendLicenceRequest(
                licence_id="LIC-OUT",
                terms=terms,
                effective_from=ts(datetime(2026, 6, 1, tzinfo=UTC)),
            ),
            admin,
        )
        service.call(
            "SuspendLicence",
            licence_service_pb2.SuspendLicenceRequest(licence_id="LIC-OUT", reason="audit"),
            admin,
        )
        final = service.call(
            "RevokeLicence",
            licence_service_pb2.RevokeLicenceRequest(licence_id="LIC-OUT", wind_down_days=3),
            admin,
        ).licence
        public = (
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        key = service.call(
            "RegisterSigningKey",
            licence_service_pb2.RegisterSigningKeyRequest(
                vendor_id="VEN-OUT", public_key=public, key_id="vk-out"
            ),
            admin,
        ).key

        records = consume_all(stack, topics.LICENCES.qualified(prefix), expect=4)
        assert [r.key() for r in records] == [b"LIC-OUT"] * 4
        states = [licence_pb2.Licence.FromString(r.value()) for r in records]
        assert [s.revision for s in states] == [1, 2, 3, 4]
        assert [len(s.versions) for s in states] == [1, 2, 2, 3]
        assert [len(s.suspensions) for s in states] == [0, 0, 1, 1]
        assert states[1].versions[1].rates.view_cpm == "5.00"
        assert states[3].versions[2].HasField("revoked_at")
        assert states[3].versions[2].wind_down_days == 3
        # The last record is the licence as the API returns it (status at publication).
        assert licence_codec.from_proto(states[3]) == licence_codec.from_proto(final)
        # Every record continues the trace of the request that made the change.
        server_traces = {
            f"{span.context.trace_id:032x}"
            for span in service.spans.get_finished_spans()
            if span.name.endswith(("Licence", "RevokeLicence"))
        }
        record_traces = {(header(r, "traceparent") or "--").split("-")[1] for r in records}
        assert len(record_traces) == 4 and record_traces <= server_traces
        ids = [int(header(r, OUTBOX_ID_HEADER) or 0) for r in records]
        assert ids == sorted(ids)

        (key_record,) = consume_all(stack, topics.SIGNING_KEYS.qualified(prefix), expect=1)
        assert key_record.key() == b"vk-out"
        assert licence_pb2.VendorSigningKey.FromString(key_record.value()) == key

        wait_until(lambda: outbox_counts(stack.dsn) == (5, 5), 10, "rows marked published")
        relay_registry = service.relay_registry
        assert (
            relay_registry.get_sample_value(
                "residuals_outbox_published_total", {"topic": topics.LICENCES.name}
            )
            == 4
        )
        assert (
            relay_registry.get_sample_value(
                "residuals_outbox_published_total", {"topic": topics.SIGNING_KEYS.name}
            )
            == 1
        )
        wait_until(
            lambda: relay_registry.get_sample_value("residuals_outbox_pending") == 0, 5, "gauge"
        )
    finally:
        started.close()


def _relay_process(stack: StackSettings, prefix: str, log_dir: Path) -> ServiceProcess:
    """``residuals licensing relay``: each start logs to its own ``relay-<n>.log``."""
    env = {
        **stack.exports(),
        "RESIDUALS_TOPIC_PREFIX": prefix,
        "LICENSING_OUTBOX_BATCH_SIZE": "4",
        "LICENSING_OUTBOX_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
    }
    return ServiceProcess(
        "relay", "residuals", env, log_dir, args=("licensing", "relay"), log_per_start=True
    )


def test_relay_killed_mid_stream_resumes_exactly_once(
    stack: StackSettings, prefix: str, registry: Registry, tmp_path: Path
) -> None:
    parties(registry)
    licences = [f"LIC-K{n:03d}" for n in range(60)]
    for licence_id in licences:
        lifecycle(registry, licence_id)
    total, published = outbox_counts(stack.dsn)
    assert (total, published) == (4 * len(licences), 0)

    relay = _relay_process(stack, prefix, tmp_path).start()
    try:
        wait_until(
            lambda: outbox_counts(stack.dsn)[1] >= 20,
            60,
            "the relay to start publishing",
            every=0.05,
        )
    finally:
        relay.kill(timeout=10)
    at_kill = outbox_counts(stack.dsn)[1]
    assert 0 < at_kill < total, f"kill was not mid-stream ({at_kill}/{total} published)"
    print(f"killed the relay with {at_kill}/{total} rows marked published")

    relay.start()  # the second run
    try:
        wait_until(lambda: outbox_counts(stack.dsn)[1] == total, 90, "every row published")
    finally:
        relay.terminate()
        assert relay.wait(20) == 0, relay.log_text()

    records = consume_all(stack, topics.LICENCES.qualified(prefix), expect=total)
    assert len(records) == total
    check_exactly_once_in_order(records, stack.dsn)


class CrashBeforeMark(OutboxRelay):
    """Dies after Kafka committed a batch and before PostgreSQL recorded it."""

    def _mark(self, rows: Any) -> None:
        raise SystemExit("simulated crash between Kafka commit and PostgreSQL update")


def test_crash_between_kafka_commit_and_mark_is_not_resent(
    stack: StackSettings, prefix: str, registry: Registry
) -> None:
    parties(registry)
    for licence_id in ("LIC-C1", "LIC-C2"):
        lifecycle(registry, licence_id)
    kafka = kafka_settings(stack, prefix)
    crashing = CrashBeforeMark(
        stack.dsn, kafka, batch_size=3, metrics=RelayMetrics(CollectorRegistry())
    )
    assert crashing.start()
    with pytest.raises(SystemExit):
        crashing.publish_once()
    crashing.close()  # the process is gone: nothing marked, 3 records committed in Kafka
    assert outbox_counts(stack.dsn) == (8, 0)

    metrics_registry = CollectorRegistry()
    relay = OutboxRelay(stack.dsn, kafka, batch_size=3, metrics=RelayMetrics(metrics_registry))
    assert relay.start()  # recovery marks the 3 rows Kafka already has
    assert outbox_counts(stack.dsn) == (8, 3)
    assert metrics_registry.get_sample_value("residuals_outbox_recovered_total") == 3
    while relay.publish_once():
        pass
    relay.close()
    assert outbox_counts(stack.dsn) == (8, 8)
    records = consume_all(stack, topics.LICENCES.qualified(prefix), expect=8)
    check_exactly_once_in_order(records, stack.dsn)


def test_a_standby_relay_takes_over(stack: StackSettings, prefix: str, registry: Registry) -> None:
    parties(registry)
    kafka = kafka_settings(stack, prefix)
    stop_first, stop_second = threading.Event(), threading.Event()
    first = OutboxRelay(
        stack.dsn, kafka, poll_interval=0.1, metrics=RelayMetrics(CollectorRegistry())
    )
    second = OutboxRelay(
        stack.dsn, kafka, poll_interval=0.1, metrics=RelayMetrics(CollectorRegistry())
    )
    threads = [
        threading.Thread(target=first.run, args=(stop_first,), daemon=True),
        threading.Thread(target=second.run, args=(stop_second,), daemon=True),
    ]
    threads[0].start()
    assert first.active.wait(30)
    threads[1].start()
    lifecycle(registry, "LIC-S1")
    wait_until(lambda: outbox_counts(stack.dsn) == (4, 4), 30, "the first relay to publish")
    assert not second.active.is_set()
    stop_first.set()
    threads[0].join(30)
    assert second.active.wait(30), "the standby did not take over"
    lifecycle(registry, "LIC-S2")
    wait_until(lambda: outbox_counts(stack.dsn) == (8, 8), 30, "the second relay to publish")
    stop_second.set()
    threads[1].join(30)
    records = consume_all(stack, topics.LICENCES.qualified(prefix), expect=8)
    check_exactly_once_in_order(records, stack.dsn)


def test_outbox_ids_follow_commit_order_under_concurrency(
    stack: StackSettings, prefix: str, registry: Registry
) -> None:
    """Concurrent writers on the same and different licences: ids never go back in time."""
    parties(registry)
    licence_ids = [f"LIC-P{n}" for n in range(4)]
    for licence_id in licence_ids:
        registry.create_licence(ADMIN, create_request(licence_with_id(licence_id)))

    errors: list[BaseException] = []

    def churn(licence_id: str, worker: int) -> None:
        try:
            for n in range(10):
                day = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=worker * 10 + n)
                registry.suspend_licence(
                    ADMIN,
                    licence_service_pb2.SuspendLicenceRequest(
                        licence_id=licence_id,
                        reason=f"w{worker}-{n}",
                        starts_at=ts(day),
                        ends_at=ts(day + timedelta(hours=1)),
                    ),
                )
        except BaseException as error:
            errors.append(error)

    workers = [
        threading.Thread(target=churn, args=(licence_id, worker))
        for licence_id in licence_ids
        for worker in (0, 1)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    with psycopg.connect(stack.dsn) as conn:
        rows = conn.execute(
            "SELECT message_key, payload FROM outbox WHERE topic = %s ORDER BY id",
            (topics.LICENCES.name,),
        ).fetchall()
    seen: dict[str, int] = {}
    for key, payload in rows:
        revision = licence_pb2.Licence.FromString(bytes(payload)).revision
        assert revision == seen.get(bytes(key).decode(), 0) + 1
        seen[bytes(key).decode()] = revision
    assert seen == dict.fromkeys(licence_ids, 21)
