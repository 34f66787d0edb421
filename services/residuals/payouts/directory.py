"""What other services read of the payouts service's tables: the one way in.

The payouts service owns statements and their parts (``payouts/migrations``). The notify
service announces closed statements (``statement.ready``) to the talents and vendors of
their licences; it reads them here and never names the tables
(``tests/unit/test_table_owners.py``). Only the columns granted to other roles are read
(``statements``: id, period, hash, closing time; migration 0018).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from psycopg import Connection

Conn = Connection[Any]


class ClosedStatement(NamedTuple):
    statement_id: str
    period: str
    content_hash: str
    closed_at: datetime


class StatementParty(NamedTuple):
    """One licence of a statement and whose it is."""

    licence_id: str
    talent_id: str
    vendor_id: str


def closed_statements(
    conn: Conn, *, excluding: Sequence[str] = (), limit: int = 100
) -> list[ClosedStatement]:
    """Closed statements, oldest first, but those in ``excluding`` (one per period: few)."""
    rows = conn.execute(
        "SELECT statement_id, period, content_hash, closed_at FROM statements"
        " WHERE NOT (statement_id = ANY(%s)) ORDER BY closed_at, statement_id LIMIT %s",
        (list(excluding), limit),
    ).fetchall()
    return [ClosedStatement(*row) for row in rows]


def statement_parties(conn: Conn, statement_id: str) -> list[StatementParty]:
    """The licences of a statement with their talent and vendor, by licence id."""
    rows = conn.execute(
        "SELECT licence_id, talent_id, vendor_id FROM statement_licences"
        " WHERE statement_id = %s ORDER BY licence_id",
        (statement_id,),
    ).fetchall()
    return [StatementParty(*row) for row in rows]
