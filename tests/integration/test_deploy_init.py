"""The deployment's one-shot jobs and container probes against the real local stack.

`residuals deploy init` (docker-compose, clusters without Strimzi) creates the catalogue's
topics with their settings and applies migrations; `residuals migrate` needs only
DATABASE_URL; `residuals probe grpc` is the compose health check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from residuals.deploy.kafka_admin import ensure_topics
from residuals.platform import topics
from residuals.platform.config import KafkaSettings
from residuals.platform.grpc_server import GrpcMetrics, GrpcSettings, make_grpc_server
from residuals.platform.kafka import make_admin
from residuals.stack.settings import StackSettings

RESIDUALS = [sys.executable, "-m", "residuals"]


@pytest.fixture()
def prefix(stack: StackSettings) -> Iterator[str]:
    """A topic prefix of our own; its topics are deleted afterwards."""
    value = f"deploytest-{uuid.uuid4().hex[:8]}."
    yield value
    admin = make_admin(KafkaSettings(bootstrap_servers=stack.bootstrap_servers))
    names = [t.qualified(value) for t in topics.ALL]
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result()


def topic_configs(admin: Any, names: list[str]) -> dict[str, dict[str, str]]:
    from confluent_kafka.admin import ConfigResource, ResourceType

    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    return {
        r.name: {k: str(v.value) for k, v in f.result().items()}
        for r, f in admin.describe_configs(resources).items()
    }


def wait_for_retention(admin: Any, name: str, value: str) -> None:
    """Config changes reach describe_configs a moment after they are acknowledged."""
    deadline = time.monotonic() + 15
    while topic_configs(admin, [name])[name]["retention.ms"] != value:
        assert time.monotonic() < deadline, f"{name} never showed retention.ms={value}"
        time.sleep(0.1)


def test_ensure_topics_creates_the_catalogue_then_keeps_it_aligned(
    stack: StackSettings, prefix: str
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers, topic_prefix=prefix, topic_partitions=3
    )
    log: list[str] = []
    plan = ensure_topics(kafka, replication_factor=1, min_insync_replicas=1, log=log.append)
    names = sorted(t.qualified(prefix) for t in topics.ALL)
    assert sorted(plan.create) == names
    admin = make_admin(kafka)
    metadata = admin.list_topics(timeout=10)
    assert all(len(metadata.topics[n].partitions) == 3 for n in names)
    configs = topic_configs(admin, names)
    assert configs[topics.LICENCES.qualified(prefix)]["cleanup.policy"] == "compact"
    usage = configs[topics.USAGE.qualified(prefix)]
    assert usage["retention.ms"] == str(topics.USAGE.retention_ms)
    assert usage["min.insync.replicas"] == "1"

    again = ensure_topics(kafka, replication_factor=1, min_insync_replicas=1, log=log.append)
    assert (again.create, again.alter, again.warnings) == ([], {}, [])

    # Someone changed a retention by hand: the next run puts the catalogue's value back.
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    name = topics.ALERTS.qualified(prefix)
    entry = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()
    wait_for_retention(admin, name, "1000")
    fixed = ensure_topics(kafka, replication_factor=1, min_insync_replicas=1, log=log.append)
    assert fixed.alter == {name: {"retention.ms": str(topics.ALERTS.retention_ms)}}
    wait_for_retention(admin, name, str(topics.ALERTS.retention_ms))

    # More partitions asked for than exist: reported, never grown (keys would move).
    wider = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers, topic_prefix=prefix, topic_partitions=6
    )
    grown = ensure_topics(wider, replication_factor=1, log=log.append)
    assert len(grown.warnings) == len(topics.ALL)
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 3


def test_init_and_migrate_commands_are_idempotent_jobs(
    stack_env: dict[str, str], prefix: str
) -> None:
    env = {
        **stack_env,
        "RESIDUALS_TOPIC_PREFIX": prefix,
        "RESIDUALS_TOPIC_PARTITIONS": "2",
        "RESIDUALS_INIT_WAIT_SECONDS": "10",
    }
    first = subprocess.run(
        [*RESIDUALS, "deploy", "init"], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert f"created topic {topics.USAGE.qualified(prefix)} (2 partitions)" in first.stdout
    second = subprocess.run(
        [*RESIDUALS, "deploy", "init"], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert "all 7 topics present" in second.stdout.replace(str(len(topics.ALL)), "7")
    assert "database schema is up to date" in second.stdout

    only_db = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": stack_env["DATABASE_URL"]}
    migrate = subprocess.run(
        [*RESIDUALS, "migrate"], env=only_db, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "database schema is up to date" in migrate.stdout


def test_migrate_sets_the_service_roles_passwords_from_a_mounted_secret(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """What the chart's migration Job does with postgres.roles.passwordSecret."""
    import psycopg

    (tmp_path / "payouts").write_text("s3cret-from-a-secret\n")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": stack_env["DATABASE_URL"],
        "DATABASE_ROLE_PASSWORDS_DIR": str(tmp_path),
    }
    try:
        result = subprocess.run(
            [*RESIDUALS, "migrate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"set the passwords of residuals_payouts from {tmp_path}" in result.stdout
        with psycopg.connect(stack_env["DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'residuals_payouts'"
            ).fetchone()
        assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
    finally:  # roles are cluster-wide: leave the local stack's trust setup as it was
        with psycopg.connect(stack_env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("ALTER ROLE residuals_payouts PASSWORD NULL")


def test_migrate_fails_readably_when_the_database_never_answers() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "RESIDUALS_INIT_WAIT_SECONDS": "1",
    }
    result = subprocess.run(
        [*RESIDUALS, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.startswith("residuals migrate: ")
    assert "Traceback" not in result.stderr


def test_probe_grpc_reports_serving_and_not_serving() -> None:
    server = make_grpc_server(
        GrpcSettings(host="127.0.0.1", port=0), metrics=GrpcMetrics(CollectorRegistry())
    ).start()
    try:
        address = f"127.0.0.1:{server.port}"
        ok = subprocess.run(
            [*RESIDUALS, "probe", "grpc", address], capture_output=True, text=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
        assert "SERVING" in ok.stdout
        server.set_serving(False)
        down = subprocess.run(
            [*RESIDUALS, "probe", "grpc", address], capture_output=True, text=True, timeout=30
        )
        assert down.returncode == 1
        assert "NOT_SERVING" in down.stdout
    finally:
        server.stop(0)
    gone = subprocess.run(
        [*RESIDUALS, "probe", "grpc", address, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gone.returncode == 1
