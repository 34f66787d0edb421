"""``residuals dlq quarantine list|show|redrive``: the quarantine table, as an operator.

``list`` shows rows (filters: consumer, source topic, open or re-driven); ``show ID`` prints
one row with its position, error, key, headers and value decoded as far as the source
topic's message type goes; ``redrive ID...|--all`` produces each record back to its source
topic and partition with its key, value and headers, waits for Kafka's acknowledgement,
then marks the row (``redriven_at``, ``redriven_by``) in the same transaction that locked
it, so two operators cannot re-drive one row twice; a row already re-driven is refused
unless ``--force``. Everything printed is escaped for the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from residuals.codecs.inspect import describe_message, describe_original
from residuals.domain.bounds import printable
from residuals.platform import topics
from residuals.platform.config import KafkaSettings, PostgresSettings, load
from residuals.platform.quarantine import STATES, Quarantined, Row, mark_redriven, select
from residuals.platform.redrive import RedriveError, Redriver, operator, safe, table
from residuals.v1 import alerts_pb2, approvals_pb2, licence_pb2, quarantine_pb2, usage_pb2

#: How a source topic's records decode, by catalogue name (``show``).
_MESSAGES = {
    topics.USAGE_RATED.name: usage_pb2.RatedUsage,
    topics.USAGE_DLQ.name: usage_pb2.DeadLetter,
    topics.ALERTS.name: alerts_pb2.Alert,
    topics.LICENCES.name: licence_pb2.Licence,
    topics.SIGNING_KEYS.name: licence_pb2.VendorSigningKey,
    topics.APPROVALS.name: approvals_pb2.Approval,
    topics.QUARANTINE.name: quarantine_pb2.QuarantinedRecord,
}


def decoded(record: Quarantined, prefix: str) -> dict[str, Any]:
    """The value decoded by its source topic's message type, as far as it goes."""
    name = record.topic.removeprefix(prefix)
    if name == topics.USAGE.name:
        if record.value is None:
            return {"bytes": None, "decoded": "tombstone (null value)"}
        return describe_original(record.value)
    message = _MESSAGES.get(name)
    if message is None:
        shown: dict[str, Any] = {"decoded": f"no known message type for topic {record.topic}"}
        if record.value is not None:
            shown.update(bytes=len(record.value), hex=record.value[:512].hex())
        return shown
    return describe_message(message, record.value)


def show(row: Row, prefix: str) -> dict[str, Any]:
    r = row.record
    return {
        **row.summary(),
        "partition": r.partition,
        "offset": r.offset,
        "key": r.key,
        "headers": [{"key": k, "value": v} for k, v in r.headers],
        "value": decoded(r, prefix),
    }


def redrive(
    conn: psycopg.Connection[Any],
    row_ids: Sequence[int] | None,
    redriver: Redriver,
    *,
    consumer: str | None = None,
    topic: str | None = None,
    force: bool = False,
    by: str | None = None,
) -> list[tuple[int, str, bool]]:
    """Re-drive rows (``row_ids``, or every open row matching the filters when None);
    returns ``(id, what happened, ok)`` per row. Each row is locked, produced, awaited and
    marked in a transaction of its own."""
    who = by or operator()
    if row_ids is None:
        row_ids = [r.id for r in select(conn, consumer=consumer, topic=topic, state="open")]
    outcomes: list[tuple[int, str, bool]] = []
    for row_id in row_ids:
        try:
            with conn.transaction():
                found = select(conn, ids=[row_id], state="all", lock=True)
                if not found:
                    outcomes.append((row_id, "refused: no such quarantined record", False))
                    continue
                row, r = found[0], found[0].record
                if row.redriven_at is not None and not force:
                    outcomes.append((row_id, f"refused: already {row.state} (--force)", False))
                    continue
                landed = redriver.send(r.topic, r.partition, r.key, r.value, r.headers)
                mark_redriven(conn, row_id, who)
                outcomes.append((row_id, f"re-driven to {landed}", True))
        except RedriveError as error:
            outcomes.append((row_id, f"failed: {error}", False))
    return outcomes


# --- command line ------------------------------------------------------------------------


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(load(PostgresSettings).dsn)


def _list(args: argparse.Namespace) -> int:
    with _connect() as conn:
        rows = select(
            conn, consumer=args.consumer, topic=args.topic, state=args.state, limit=args.limit
        )
    summaries = [r.summary() for r in rows]
    if args.json:
        for item in summaries:
            print(json.dumps(safe(item)))
    elif summaries:
        columns = ("id", "quarantined_at", "consumer", "topic", "position", "state", "error")
        print(table(summaries, columns, wide="error"))
    else:
        print("no quarantined records match", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    with _connect() as conn:
        rows = select(conn, ids=[args.id], state="all")
    if not rows:
        print(f"no quarantined record {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(safe(show(rows[0], load(KafkaSettings).topic_prefix)), indent=2))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        print("residuals dlq quarantine redrive: give ID... or --all", file=sys.stderr)
        return 2
    redriver = Redriver(load(KafkaSettings))
    with _connect() as conn:
        outcomes = redrive(
            conn,
            args.ids or None,
            redriver,
            consumer=args.consumer,
            topic=args.topic,
            force=args.force,
        )
    for row_id, outcome, ok in outcomes:
        print(f"{row_id}: {printable(outcome)}", file=sys.stdout if ok else sys.stderr)
    if not outcomes:
        print("no open quarantined records match", file=sys.stderr)
    return 0 if all(ok for _, _, ok in outcomes) else 1


def register(subparsers: Any) -> None:
    """``quarantine list|show|redrive`` under ``residuals dlq``."""
    parser = subparsers.add_parser(
        "quarantine",
        help="records consumers set aside (quarantine table): list, show, re-drive",
        description="Reads the quarantine table (DATABASE_URL); redrive produces to the Kafka "
        "cluster in KAFKA_BOOTSTRAP_SERVERS.",
    )
    sub = parser.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="one line per quarantined record, oldest first")
    listing.add_argument("--consumer", help="only this consumer's, e.g. ledger, alerts")
    listing.add_argument("--topic", help="only records read from this (full) topic name")
    listing.add_argument("--state", choices=STATES, default="open", help="default: open")
    listing.add_argument("--limit", type=int, default=0, help="at most N rows")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(handler=_list)
    shown = sub.add_parser("show", help="one record: error, position, key, headers, value")
    shown.add_argument("id", type=int, metavar="ID")
    shown.set_defaults(handler=_show)
    again = sub.add_parser(
        "redrive",
        help="produce records back to their source topic after the fix",
        description="Each record goes back to the topic and partition it was read from, "
        "with its key, value and headers; the row is marked re-driven once Kafka "
        "acknowledged it. A row already re-driven is refused unless --force.",
    )
    again.add_argument("ids", nargs="*", type=int, metavar="ID")
    again.add_argument("--all", action="store_true", help="every open row (with the filters)")
    again.add_argument("--consumer", help="with --all: only this consumer's")
    again.add_argument("--topic", help="with --all: only this source topic's")
    again.add_argument("--force", action="store_true", help="re-drive rows already re-driven")
    again.set_defaults(handler=_redrive)
