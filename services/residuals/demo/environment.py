"""What the demo prepares before any service starts: the stack, a fresh database, topics.

* The local stack (``residuals stack up``'s own code) on the ports of the usual
  environment variables; what this call started is stopped again at the end.
* One demo at a time per stack: a session advisory lock on the stack's database.
* A fresh database ``residuals_demo`` (dropped and migrated at each start, kept afterwards
  so ``residuals finance …`` can look at it), so closing a period and the ledger start
  from nothing and the same seed gives the same statement.
* Topics under a per-run prefix ``demo-<run>.``: new topics, consumer groups and faust
  changelogs, so nothing from an earlier run is re-read; deleted when the demo ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from residuals.platform import migrations
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_admin
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings

Log = Callable[[str], None]

DATABASE = "residuals_demo"
TOPIC_PREFIX = "demo-"
PARTITIONS = 3
_LOCK = "residuals-demo"


class DemoBusy(RuntimeError):
    """Another demo holds this stack."""


def database_url(dsn: str, name: str = DATABASE) -> str:
    """``dsn`` (a postgresql:// URL) pointing at database ``name``."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class Stack:
    settings: StackSettings
    started: tuple[str, ...]

    def stop_started(self, log: Log) -> None:
        if self.started:
            log(f"stopping the local stack this demo started ({', '.join(self.started)})")
            lifecycle.down(self.settings, only=self.started, log=log)
            self.started = ()


def bring_up_stack(settings: StackSettings, log: Log) -> Stack:
    """Start what is not running (idempotent); remember what this call started."""
    if lifecycle.health(settings).healthy:
        log(f"local stack already running: Kafka {settings.bootstrap_servers}, PostgreSQL"
            f" 127.0.0.1:{settings.postgres_port}")  # fmt: skip
        return Stack(settings, ())
    log("starting the local stack (Kafka + PostgreSQL; the first run downloads Kafka's jars)")
    result = lifecycle.up(settings, log=lambda m: log(f"  {m}"))
    return Stack(settings, result.started)


class Claim:
    """The stack-wide demo lock, held on one connection for the whole run."""

    def __init__(self, dsn: str) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(
            dsn, autocommit=True, connect_timeout=10, application_name="residuals-demo"
        )
        row = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_LOCK,)).fetchone()
        if not row or not row[0]:
            self.conn.close()
            raise DemoBusy(
                "another `residuals demo` is running on this stack (it holds the demo lock);"
                " wait for it or stop it with Ctrl-C"
            )

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def fresh_database(stack_dsn: str, log: Log) -> str:
    """Drop and re-create the demo database, apply every migration; returns its URL."""
    with psycopg.connect(stack_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = database_url(stack_dsn)
    applied = migrations.migrate(url)
    log(f"database {DATABASE}: fresh, {len(applied)} migrations applied")
    return url


def _admin(kafka: KafkaSettings) -> Any:
    """An admin client whose librdkafka logs go to logging, not over the live view."""
    return make_admin(kafka, logger=logging.getLogger("residuals.demo.kafka"))


def demo_kafka(settings: StackSettings, run_id: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=f"{TOPIC_PREFIX}{run_id}.",
        topic_partitions=PARTITIONS,
    )


def create_topics(kafka: KafkaSettings, log: Log) -> None:
    """The topic catalogue under the run's prefix (the deployment code's own function)."""
    from residuals.deploy.kafka_admin import ensure_topics

    ensure_topics(kafka, replication_factor=1, log=lambda _message: None, admin=_admin(kafka))
    log(f"topics: the catalogue under prefix {kafka.topic_prefix!r} ({PARTITIONS} partitions)")


def delete_topics(kafka: KafkaSettings) -> int:
    """Delete every topic under the prefix (faust's changelogs included); returns how many."""
    admin = _admin(kafka)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(kafka.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)
    return len(names)


def delete_stale_topics(settings: StackSettings) -> int:
    """Topics of earlier demo runs that did not end cleanly (only called under the lock)."""
    return delete_topics(
        KafkaSettings(bootstrap_servers=settings.bootstrap_servers, topic_prefix=TOPIC_PREFIX)
    )
