"""The local stack is real: topics, migrations and a Kafka round trip against live servers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.cimpl import NewTopic

from residuals.platform import migrations, topics
from residuals.stack import kafka, postgres
from residuals.stack.settings import StackSettings


@pytest.fixture(scope="module")
def admin(stack: StackSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.bootstrap_servers})


def test_catalogue_topics_exist_with_configured_partitions(
    stack: StackSettings, admin: AdminClient
) -> None:
    metadata = admin.list_topics(timeout=10)
    for topic in topics.ALL:
        assert topic.name in metadata.topics, f"{topic.name} missing"
        partitions = metadata.topics[topic.name].partitions
        assert len(partitions) == stack.topic_partitions, topic.name


def test_licences_topic_is_compacted_and_logs_are_retained(admin: AdminClient) -> None:
    resources = [ConfigResource("topic", t.name) for t in topics.ALL]
    described = admin.describe_configs(resources)
    policies = {}
    for resource, future in described.items():
        config = future.result(timeout=10)
        policies[resource.name] = config["cleanup.policy"].value
        if not topics.by_name(resource.name).compacted:
            expected = str(topics.by_name(resource.name).retention_ms)
            assert config["retention.ms"].value == expected, resource.name
    assert policies[topics.LICENCES.name] == "compact"
    assert {name for name, policy in policies.items() if policy == "compact"} == {
        topics.LICENCES.name,
        topics.SIGNING_KEYS.name,
        topics.APPROVALS.name,
    }


def test_auto_topic_creation_is_disabled(stack: StackSettings) -> None:
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "message.timeout.ms": 3000})
    errors: list[Any] = []
    producer.produce(
        f"residuals.no-such-topic.{uuid.uuid4().hex}",
        b"x",
        on_delivery=lambda e, _m: errors.append(e),
    )
    producer.flush(10)
    assert errors and errors[0] is not None


def test_foundation_migration_is_applied(stack: StackSettings) -> None:
    foundation = migrations.discover()[0]
    with psycopg.connect(stack.dsn) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert rows[0] == (1, "foundation", foundation.checksum)
        keys = conn.execute(
            """
            SELECT tc.table_name, array_agg(kcu.column_name::text ORDER BY kcu.ordinal_position)
            FROM information_schema.table_constraints tc
            JOIN information_schema.key_column_usage kcu USING (constraint_name, table_name)
            WHERE tc.constraint_type = 'PRIMARY KEY'
              AND tc.table_name IN ('usage_events', 'consumer_offsets')
            GROUP BY tc.table_name
            """
        ).fetchall()
    assert dict(keys) == {
        "usage_events": ["vendor_id", "event_id"],
        "consumer_offsets": ["group_id", "topic", "partition"],
    }


def test_usage_events_primary_key_deduplicates(stack: StackSettings) -> None:
    vendor, event = "VEN-TEST", f"evt-{uuid.uuid4().hex}"
    insert = (
        "INSERT INTO usage_events (vendor_id, event_id, licence_id, kind, occurred_at, payload)"
        " VALUES (%s, %s, 'LIC-T', 'render', now(), %s) ON CONFLICT DO NOTHING"
    )
    with psycopg.connect(stack.dsn) as conn:
        first = conn.execute(insert, (vendor, event, b"\x01")).rowcount
        second = conn.execute(insert, (vendor, event, b"\x02")).rowcount
        conn.execute(
            "DELETE FROM usage_events WHERE vendor_id = %s AND event_id = %s", (vendor, event)
        )
    assert (first, second) == (1, 0)


@pytest.fixture
def scratch_topic(admin: AdminClient) -> Iterator[str]:
    """A throwaway topic, so the round trip never leaves records in a real topic."""
    name = f"test.stack-roundtrip.{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result(30)
    yield name
    admin.delete_topics([name], operation_timeout=30)[name].result(30)


def test_produced_message_is_consumed_back(stack: StackSettings, scratch_topic: str) -> None:
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True})
    delivered: list[Any] = []
    producer.produce(
        scratch_topic,
        key=b"LIC-1",
        value=b"payload-\x00\xff",
        headers=[("traceparent", b"00-abc-01")],
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    assert producer.flush(30) == 0
    assert delivered and delivered[0][0] is None

    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"test-roundtrip-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([scratch_topic])
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            polled = consumer.poll(1.0)
            if polled is not None and polled.error() is None:
                message = polled
        assert message is not None, "no message consumed within 60s"
        assert message.key() == b"LIC-1"
        assert message.value() == b"payload-\x00\xff"
        assert message.headers() == [("traceparent", b"00-abc-01")]
        consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


def _residuals(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "residuals", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_twice_is_harmless(stack: StackSettings, stack_env: dict[str, str]) -> None:
    kafka_pid = kafka.running_pid(stack)
    pg_pid = postgres.running_pid(stack)
    for _ in range(2):
        result = _residuals(stack_env, "stack", "up")
        assert result.returncode == 0, result.stderr
        assert f"export KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap_servers}" in result.stdout
        assert f"export DATABASE_URL={stack.dsn}" in result.stdout
        assert "already running" in result.stderr
    assert kafka.running_pid(stack) == kafka_pid
    assert postgres.running_pid(stack) == pg_pid
    status = _residuals(stack_env, "stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "missing" not in status.stdout
    newest = max(m.version for m in migrations.discover())
    assert f"migration {newest:04d}" in status.stdout


@pytest.fixture
def scratch_database(stack: StackSettings) -> Iterator[str]:
    """An empty database on the stack's server, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin_dsn = postgres.admin_dsn(stack)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield postgres.admin_dsn(stack, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)'.encode())


def _migration(version: int, name: str, sql: str) -> migrations.Migration:
    return migrations.Migration(version, name, sql, migrations.checksum(sql))


def test_failed_migration_rolls_back_alone(scratch_database: str) -> None:
    good = _migration(1, "good", "CREATE TABLE kept (id int);")
    bad = _migration(2, "bad", "CREATE TABLE dropped (id int); SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrations.migrate(scratch_database, [good, bad])
    with psycopg.connect(scratch_database) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
        tables = conn.execute(
            "SELECT to_regclass('kept') IS NOT NULL, to_regclass('dropped') IS NOT NULL"
        ).fetchone()
    assert versions == [(1,)]
    assert tables == (True, False)


def test_edited_migration_is_refused(scratch_database: str) -> None:
    migrations.migrate(scratch_database, [_migration(1, "one", "CREATE TABLE one (id int);")])
    edited = _migration(1, "one", "CREATE TABLE one (id bigint);")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.migrate(scratch_database, [edited])


def test_concurrent_runners_apply_each_migration_once(scratch_database: str) -> None:
    # pg_sleep widens the window in which an unlocked second runner would also apply it.
    slow = [_migration(1, "slow", "SELECT pg_sleep(0.5); CREATE TABLE once (id int);")]
    results: list[object] = []

    def run() -> None:
        try:
            results.append(len(migrations.migrate(scratch_database, slow)))
        except Exception as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results, key=str) == [0, 1]
    assert migrations.current_version(scratch_database) == 1
