"""``residuals audit``: the audit log of backdated and admin licence and key changes.

Reads the ``audit_log`` table straight from PostgreSQL (``DATABASE_URL``), like
``residuals licences bootstrap-admin``: it is an operator's tool, and the log is for
reading after the fact, not through the services. Every text column is escaped for the
terminal (a reason is typed by a person, a key id by a vendor).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_INVALID = 2
EXIT_FAILED = 1
COLUMNS = ("id", "recorded_at", "actor", "action", "subject", "effective_at", "backdated", "reason")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="list backdated and admin changes of licences and signing keys (audit log)",
        description="Lists the audit log (table audit_log) of the database in DATABASE_URL,"
        " oldest first: suspensions, reinstatements and revocations of licences and"
        " revocations of signing keys made by admin or taking effect in the past.",
    )
    parser.add_argument("--actor", default="", help="only changes by this principal id")
    parser.add_argument("--licence", default="", help="only changes of this licence id")
    parser.add_argument("--key", default="", help="only changes of this signing key id")
    parser.add_argument("--since", help="recorded at or after (ISO 8601, UTC if no offset)")
    parser.add_argument("--limit", type=int, default=1000, help="at most N entries (1000)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.set_defaults(handler=_run)


def _row(entry: Any) -> list[str]:
    from residuals.domain.bounds import printable
    from residuals.licensing.backdating import describe_span

    subject = f"licence {entry.licence_id}" if entry.licence_id else f"key {entry.key_id}"
    late = entry.recorded_at - entry.effective_at
    return [
        str(entry.id),
        entry.recorded_at.isoformat(timespec="seconds"),
        printable(f"{entry.actor} ({entry.actor_role})", 64),
        entry.action,
        printable(subject, 80),
        entry.effective_at.isoformat(timespec="seconds"),
        describe_span(late) if late.total_seconds() > 0 else "-",
        printable(entry.reason, 80),
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _run(args: argparse.Namespace) -> int:
    import psycopg

    from residuals.domain.events import parse_timestamp
    from residuals.licensing import audit
    from residuals.platform.config import ConfigError, PostgresSettings, load

    since = None
    if args.since:
        try:
            since = parse_timestamp(args.since)
        except ValueError:
            print(f"--since: {args.since!r} is not an ISO 8601 timestamp", file=sys.stderr)
            return EXIT_INVALID
    if args.limit < 1:
        print("--limit: must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    try:
        settings = load(PostgresSettings)
        with psycopg.connect(settings.dsn, connect_timeout=10) as conn:
            entries = audit.entries(
                conn,
                actor=args.actor,
                licence_id=args.licence,
                key_id=args.key,
                since=since,
                limit=args.limit,
            )
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILED
    except psycopg.Error as error:
        print(f"database: {str(error).strip()}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        for entry in entries:
            print(json.dumps(entry.as_json()))
    elif entries:
        print(_table([_row(e) for e in entries]))
    else:
        print("no audit entries match", file=sys.stderr)
    return 0
