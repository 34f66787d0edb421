"""What other services read of the ledger's tables, and the two marks they may set.

The ledger writer owns the stored uses, re-sends, dead letters, totals and closed periods
(its migrations, ``ledger/migrations``). The period close, the operator's dead-letter
re-drive and the demo read them, and mark a period closed or a dead letter re-driven,
only through these functions, never by naming the tables
(``tests/unit/test_table_owners.py``). Whole periods of events are read with
:func:`residuals.ledger.history.load_period_events` and :mod:`residuals.ledger.records`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg import Connection

from residuals.domain.period import Period

Conn = Connection[Any]


class PeriodCounts(NamedTuple):
    """How a period's records were stored (rows of the period itself, not late ones)."""

    ledgered: int
    held: int
    dead: int
    duplicates: int


class DeadLetterRow(NamedTuple):
    partition: int
    offset: int
    reason: str
    period: str
    detail: str


def stored_records(conn: Conn) -> int:
    """Every record the ledger writer stored: uses, re-sends and dead letters."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM usage_events) + (SELECT count(*) FROM usage_repeats)"
        " + (SELECT count(*) FROM dead_letters)"
    ).fetchone()
    return int(row[0]) if row else 0


def licence_totals(conn: Conn, period: Period | str) -> Iterator[tuple[str, str, Decimal, Decimal]]:
    """``(licence_id, currency, accrued, held)`` of ``period`` so far, per licence."""
    for licence, currency, accrued, held in conn.execute(
        "SELECT licence_id, currency, sum(estimated_amount), sum(held_amount)"
        " FROM ledger_totals WHERE period = %s GROUP BY licence_id, currency",
        (str(period),),
    ):
        yield str(licence), str(currency), Decimal(accrued), Decimal(held)


def period_counts(conn: Conn, period: Period | str) -> PeriodCounts:
    """The period's stored records by where they ended (the close's accounting)."""
    row = conn.execute(
        "SELECT"
        " (SELECT count(*) FROM usage_events WHERE period = %(p)s"
        "   AND adjustment_period IS NULL AND outcome IS DISTINCT FROM 'HELD'),"
        " (SELECT count(*) FROM usage_events WHERE period = %(p)s"
        "   AND adjustment_period IS NULL AND outcome = 'HELD'),"
        " (SELECT count(*) FROM dead_letters WHERE period = %(p)s),"
        " (SELECT count(*) FROM usage_repeats WHERE period = %(p)s"
        "   AND adjustment_period IS NULL)",
        {"p": str(period)},
    ).fetchone()
    assert row is not None
    return PeriodCounts(*(int(x) for x in row))


def late_periods(conn: Conn, period: Period | str) -> list[str]:
    """The earlier periods whose late uses were booked as adjustments to ``period``."""
    rows = conn.execute(
        "SELECT period FROM usage_events WHERE adjustment_period = %(p)s"
        " UNION SELECT period FROM usage_repeats WHERE adjustment_period = %(p)s",
        {"p": str(period)},
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def mark_closed(conn: Conn, period: Period | str) -> None:
    """Record ``period`` as closed, in the caller's transaction. The EXCLUSIVE lock
    waits for ledger batches in flight and holds new ones until the caller commits, so
    every use is stored either before the close (in the period) or after it (late, as
    an adjustment of the next open period)."""
    conn.execute("LOCK TABLE closed_periods IN EXCLUSIVE MODE")
    conn.execute(
        "INSERT INTO closed_periods (period) VALUES (%s) ON CONFLICT DO NOTHING", (str(period),)
    )


def dead_letters_at(
    conn: Conn, topic: str, positions: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], DeadLetterRow]:
    """The stored dead letters of records read from ``topic`` at ``(partition, offset)``."""
    rows = conn.execute(
        "SELECT source_partition, source_offset, reason, period, detail FROM dead_letters"
        " WHERE source_topic = %s AND (source_partition, source_offset) IN"
        " (SELECT * FROM unnest(%s::int[], %s::bigint[]))",
        (topic, [p for p, _ in positions], [o for _, o in positions]),
    )
    return {
        (int(p), int(o)): DeadLetterRow(int(p), int(o), str(reason), str(period), str(detail))
        for p, o, reason, period, detail in rows
    }


def lock_dead_letter(
    conn: Conn, topic: str, partition: int, offset: int
) -> tuple[datetime | None, str | None] | None:
    """``(redriven_at, redriven_by)`` of a stored dead letter, locked until the caller's
    transaction ends (two operators cannot re-drive it at once); None if not stored."""
    row = conn.execute(
        "SELECT redriven_at, redriven_by FROM dead_letters WHERE source_topic = %s"
        " AND source_partition = %s AND source_offset = %s FOR UPDATE",
        (topic, partition, offset),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def mark_redriven(conn: Conn, who: str, topic: str, partition: int, offset: int) -> None:
    """Record that ``who`` re-drove the dead letter of ``topic[partition]@offset``."""
    conn.execute(
        "UPDATE dead_letters SET redriven_at = now(), redriven_by = %s WHERE source_topic = %s"
        " AND source_partition = %s AND source_offset = %s",
        (who, topic, partition, offset),
    )


# --- running totals for the pre-flight check ------------------------------------------------
# Scalar subqueries, so a caller answering one request reads its whole state in a single
# round trip (licensing's CheckUse joins them with the licence and the approval). Both are
# estimates: the meter's verdicts as stored so far, uses in flight not counted yet.

#: Units of ``%(kind)s`` priced for ``%(licence_id)s`` in ``%(period)s``: the quota used.
#: Units past a blocking limit are held, so once a quota is used up this equals its limit
#: and the remaining quota is 0, as the rule says.
QUOTA_USED_SQL = (
    "(SELECT units_priced FROM ledger_totals WHERE licence_id = %(licence_id)s"
    " AND period = %(period)s AND kind = %(kind)s)"
)
#: Render units that used approval ``%(approval_id)s``: renders the meter found approved
#: (billed, or held only for a quota), in any period.
APPROVED_RENDERS_SQL = (
    "(SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE approval_id = %(approval_id)s"
    " AND kind = 'RENDER'"
    " AND (outcome = 'ACCEPTED' OR (outcome = 'HELD' AND violation = 'QUOTA_EXCEEDED')))"
)
