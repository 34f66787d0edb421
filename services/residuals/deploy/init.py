"""The one-shot deployment job: wait for the engines, create topics, apply migrations.

``residuals migrate`` (the Kubernetes pre-install/pre-upgrade Job when Strimzi owns the
topics) needs only ``DATABASE_URL``; ``residuals deploy init`` (docker-compose, and
clusters without Strimzi) also creates the catalogue's topics. Both are idempotent and
safe to run concurrently: topic creation tolerates "already exists" and the migration
runner holds a PostgreSQL advisory lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg

from residuals.platform import migrations, roles
from residuals.platform.config import KafkaSettings, PostgresSettings, env, group

T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True)
class MigrateSettings:
    """``residuals migrate``: only the database."""

    postgres: PostgresSettings = group(PostgresSettings)
    wait_seconds: float = env(
        "RESIDUALS_INIT_WAIT_SECONDS",
        120.0,
        help="how long the job waits for Kafka/PostgreSQL to answer before failing",
        minimum=0,
    )
    role_passwords_dir: Path | None = env(
        "DATABASE_ROLE_PASSWORDS_DIR",
        None,
        help="directory with one file per service (licensing, ingest, ...) holding its "
        "PostgreSQL role's password, set after migrating (a mounted Secret); unset = leave them",
    )


@dataclass(frozen=True)
class InitSettings:
    """``residuals deploy init``: topics and migrations."""

    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    replication_factor: int = env(
        "RESIDUALS_TOPIC_REPLICATION_FACTOR",
        1,
        help="replicas of each topic created (3 on a production cluster)",
        minimum=1,
    )
    min_insync_replicas: int | None = env(
        "RESIDUALS_TOPIC_MIN_INSYNC_REPLICAS",
        None,
        help="min.insync.replicas of each topic (unset = broker default; 2 with 3 replicas)",
    )
    wait_seconds: float = env(
        "RESIDUALS_INIT_WAIT_SECONDS",
        120.0,
        help="how long the job waits for Kafka/PostgreSQL to answer before failing",
        minimum=0,
    )
    role_passwords_dir: Path | None = env(
        "DATABASE_ROLE_PASSWORDS_DIR",
        None,
        help="directory with one file per service (licensing, ingest, ...) holding its "
        "PostgreSQL role's password, set after migrating (a mounted Secret); unset = leave them",
    )


def retry(what: str, attempt: Callable[[], T], wait_seconds: float, log: Log) -> T:
    """``attempt()`` until it succeeds or ``wait_seconds`` pass (engines start slowly)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            return attempt()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise
            log(f"waiting for {what}: {exc}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def run_migrations(
    postgres: PostgresSettings,
    wait_seconds: float,
    log: Log = print,
    role_passwords: Path | None = None,
) -> int:
    """Apply pending migrations once PostgreSQL answers, then set the service roles'
    passwords from ``role_passwords`` (see :func:`residuals.platform.roles.set_passwords`);
    returns how many migrations were applied."""

    def reachable() -> None:
        with psycopg.connect(postgres.dsn, connect_timeout=5):
            pass

    retry("PostgreSQL", reachable, wait_seconds, log)
    applied = migrations.migrate(postgres.dsn)
    for migration in applied:
        log(f"applied migration {migration.label}")
    if not applied:
        log("database schema is up to date")
    if role_passwords is not None:
        with psycopg.connect(postgres.dsn, autocommit=True, connect_timeout=10) as conn:
            done = roles.set_passwords(conn, role_passwords)
        log(f"set the passwords of {', '.join(done) or 'no role'} from {role_passwords}")
    return len(applied)


def run_topics(settings: InitSettings, log: Log = print) -> None:
    """Create the catalogue's topics once Kafka answers."""
    from residuals.deploy.kafka_admin import ensure_topics
    from residuals.platform.kafka import make_admin

    admin = make_admin(settings.kafka)

    def reachable() -> None:
        admin.list_topics(timeout=5)

    retry("Kafka", reachable, settings.wait_seconds, log)
    ensure_topics(
        settings.kafka,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
        log=log,
        admin=admin,
    )
