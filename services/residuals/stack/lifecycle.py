"""Bringing the whole local stack up and down; shared by the CLI and the test fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from residuals.platform import migrations
from residuals.stack import kafka, postgres
from residuals.stack.settings import StackSettings

Log = Callable[[str], None]
COMPONENTS = ("kafka", "postgres")


def stderr_log(message: str) -> None:
    """Progress goes to stderr so `eval "$(residuals stack up)"` only sees the exports."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class UpResult:
    started: tuple[str, ...]
    """Components this call started (empty when everything was already running)."""
    applied: tuple[str, ...]
    """Migrations this call applied."""
    created_topics: tuple[str, ...]


def up(settings: StackSettings, log: Log = stderr_log) -> UpResult:
    """Start what is not running, then create topics and apply migrations (idempotent).

    If Kafka fails to come up after PostgreSQL was started here, PostgreSQL is stopped
    again so a failed `up` leaves nothing behind that it created.
    """
    # Missing tools are reported before anything starts, not after PostgreSQL is up.
    postgres.find_bindir()
    kafka.check_tools(settings)
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    started: list[str] = []
    try:
        if postgres.start(settings, log):
            started.append("postgres")
        if kafka.start(settings, log):
            started.append("kafka")
        created = kafka.ensure_topics(settings, log)
        applied = migrations.migrate(settings.dsn)
    except BaseException:
        down(settings, only=started, log=log)
        raise
    for migration in applied:
        log(f"postgres: applied migration {migration.label}")
    return UpResult(tuple(started), tuple(m.label for m in applied), tuple(created))


def down(
    settings: StackSettings, only: Iterable[str] | None = None, log: Log = stderr_log
) -> list[str]:
    """Stop the components this stack dir started (``only`` narrows it); returns stopped."""
    wanted = set(COMPONENTS if only is None else only)
    unknown = wanted - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown stack components: {', '.join(sorted(unknown))}")
    stopped: list[str] = []
    # Kafka first: services that use both see the broker go before their database.
    if "kafka" in wanted and kafka.stop(settings, log):
        stopped.append("kafka")
    if "postgres" in wanted and postgres.stop(settings, log):
        stopped.append("postgres")
    return stopped


@dataclass(frozen=True)
class Health:
    kafka: kafka.KafkaHealth
    postgres: postgres.PostgresHealth
    latest_migration: int

    @property
    def healthy(self) -> bool:
        return (
            self.kafka.healthy
            and self.postgres.healthy
            and self.postgres.migration_version == self.latest_migration
        )


def health(settings: StackSettings) -> Health:
    latest = max((m.version for m in migrations.discover()), default=0)
    return Health(kafka.health(settings), postgres.health(settings), latest)
