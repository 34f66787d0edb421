"""`residuals stack up | status | down | migrate`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from residuals.platform import migrations
from residuals.platform.config import ConfigError, load
from residuals.stack import lifecycle
from residuals.stack.processes import StackError
from residuals.stack.settings import StackSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stack",
        help="run the local Kafka + PostgreSQL stack",
        description="Local Kafka broker and PostgreSQL server for development and tests.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start the stack, create topics, apply migrations")
    up.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write the components this call started to FILE, one per line",
    )
    up.set_defaults(handler=_guard(_up))

    status = actions.add_parser("status", help="health of broker and database (exit 1 if not)")
    status.set_defaults(handler=_guard(_status))

    down = actions.add_parser("down", help="stop the processes `up` started")
    down.add_argument(
        "--only",
        nargs="+",
        choices=lifecycle.COMPONENTS,
        help="stop only these components",
    )
    down.set_defaults(handler=_guard(_down))

    migrate = actions.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_guard(_migrate))


Action = Callable[[argparse.Namespace, StackSettings], int]


def _guard(action: Action) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures into one readable message and exit status 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args, load(StackSettings))
        except (StackError, ConfigError, migrations.MigrationError, psycopg.Error) as exc:
            print(f"residuals stack: {exc}", file=sys.stderr)
            return 1

    return run


def _exports(settings: StackSettings) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in settings.exports().items())


def _up(args: argparse.Namespace, settings: StackSettings) -> int:
    result = lifecycle.up(settings)
    if args.record is not None:
        args.record.write_text("".join(f"{name}\n" for name in result.started))
    if not result.started:
        lifecycle.stderr_log("stack: already running")
    print(_exports(settings), flush=True)
    return 0


def _status(_args: argparse.Namespace, settings: StackSettings) -> int:
    state = lifecycle.health(settings)
    k, pg = state.kafka, state.postgres
    pid = f"pid {k.pid}" if k.pid else "not started by this stack dir"
    if k.reachable:
        topics = f"{len(k.topics)} topics"
        if k.missing:
            topics += f", missing {', '.join(k.missing)}"
        ok = "ok" if k.healthy else "FAIL"
        print(f"kafka     {ok:4}  {settings.bootstrap_servers}  {topics}  ({pid})")
    else:
        print(f"kafka     FAIL  {settings.bootstrap_servers}  unreachable  ({pid})")
    pid = f"pid {pg.pid}" if pg.pid else "not started by this stack dir"
    if pg.reachable:
        version = pg.migration_version or 0
        note = (
            "up to date"
            if version == state.latest_migration
            else (f"latest is {state.latest_migration:04d}: run `residuals stack migrate`")
        )
        ok = "ok" if version == state.latest_migration else "FAIL"
        print(f"postgres  {ok:4}  {settings.dsn}  migration {version:04d} ({note})  ({pid})")
    else:
        print(f"postgres  FAIL  {settings.dsn}  unreachable: {pg.error}  ({pid})")
    print(f"stack dir {settings.stack_dir}")
    return 0 if state.healthy else 1


def _down(args: argparse.Namespace, settings: StackSettings) -> int:
    lifecycle.down(settings, only=args.only)
    return 0


def _migrate(_args: argparse.Namespace, settings: StackSettings) -> int:
    applied = migrations.migrate(settings.dsn)
    for migration in applied:
        print(f"applied {migration.label}")
    if not applied:
        print("database is up to date")
    return 0
