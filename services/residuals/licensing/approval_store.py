"""SQL of approvals (table ``approvals``, migration 0013).

Functions take an open connection inside the caller's transaction; none commits. Every
write takes its ``sequence`` from ``approval_change_seq`` only after the outbox advisory
lock (:data:`residuals.licensing.store.OUTBOX_LOCK`), which is held until commit: so
sequences follow commit order, and a reader that sees sequence ``s`` committed has seen
every smaller one that will ever commit. The watch streams rely on this to read
``sequence > cursor`` without gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from residuals.codecs.approvals import STATUS_VALUES
from residuals.codecs.timestamps import set_timestamp
from residuals.licensing.store import OUTBOX_LOCK, Conn
from residuals.v1 import approvals_pb2

Row = dict[str, Any]

_USE_KEYS = ("brief", "script_sha256", "media_sha256", "territories", "channels")


@dataclass(frozen=True)
class Scope:
    """What a reader may see and asked for: '' / empty = any."""

    vendor_id: str = ""
    talent_id: str = ""
    licence_id: str = ""
    statuses: tuple[str, ...] = ()

    def params(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor_id,
            "talent": self.talent_id,
            "licence": self.licence_id,
            "statuses": list(self.statuses),
            "any_status": not self.statuses,
        }


_SCOPED = """
    (%(vendor)s = '' OR vendor_id = %(vendor)s)
    AND (%(talent)s = '' OR talent_id = %(talent)s)
    AND (%(licence)s = '' OR licence_id = %(licence)s)
    AND (%(any_status)s OR status = ANY(%(statuses)s))
"""


def use_json(use: approvals_pb2.UseDescription) -> dict[str, Any]:
    """The UseDescription as the ``use_description`` column holds it."""
    return {
        "brief": use.brief,
        "script_sha256": use.script_sha256,
        "media_sha256": use.media_sha256,
        "territories": list(use.territories),
        "channels": list(use.channels),
    }


def to_message(row: Row) -> approvals_pb2.Approval:
    """A row as the full ``residuals.v1.Approval`` record (what the topic carries)."""
    use = row["use_description"] or {}
    message = approvals_pb2.Approval(
        approval_id=row["approval_id"],
        licence_id=row["licence_id"],
        talent_id=row["talent_id"],
        vendor_id=row["vendor_id"],
        category=row["category"],
        use=approvals_pb2.UseDescription(**{k: use[k] for k in _USE_KEYS if k in use}),
        renders_requested=row["renders_requested"],
        status=STATUS_VALUES[row["status"]],
        max_renders=row["max_renders"] or 0,
        reason=row["reason"],
        requested_by=row["requested_by"],
        decided_by=row["decided_by"] or "",
        revision=row["revision"],
        sequence=row["sequence"],
        request_id=row["request_id"],
    )
    for name in (
        "requested_from",
        "requested_until",
        "valid_from",
        "valid_until",
        "requested_at",
        "decided_at",
    ):
        if row[name] is not None:
            set_timestamp(getattr(message, name), row[name])
    return message


def _take_sequence(conn: Conn) -> None:
    """The outbox lock, before ``nextval``: sequences then follow commit order."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_LOCK,))


def insert(conn: Conn, values: Row) -> Row:
    """A new pending request (revision 1); the row as stored."""
    _take_sequence(conn)
    columns = [k for k in values]
    params = {**values, "use_description": Jsonb(values["use_description"])}
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            f"INSERT INTO approvals ({', '.join(columns)}, revision, sequence)"
            f" VALUES ({', '.join(f'%({c})s' for c in columns)}, 1,"
            " nextval('approval_change_seq')) RETURNING *",
            params,
        )
        .fetchone()
    )
    assert row is not None
    return row


def decide(conn: Conn, approval_id: str, values: Row) -> Row:
    """Record the decision of a pending request: revision + 1 and a new sequence."""
    _take_sequence(conn)
    assignments = ", ".join(f"{c} = %({c})s" for c in values)
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            f"UPDATE approvals SET {assignments}, revision = revision + 1,"
            " sequence = nextval('approval_change_seq')"
            " WHERE approval_id = %(approval_id)s AND status = 'pending' RETURNING *",
            {**values, "approval_id": approval_id},
        )
        .fetchone()
    )
    assert row is not None, f"approval {approval_id} is not pending"
    return row


def load(conn: Conn, approval_id: str, *, lock: bool = False) -> Row | None:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT * FROM approvals WHERE approval_id = %s" + (" FOR UPDATE" if lock else ""),
            (approval_id,),
        )
        .fetchone()
    )


def by_request(conn: Conn, vendor_id: str, request_id: str) -> Row | None:
    """The request a vendor made with this idempotency key, if any."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT * FROM approvals WHERE vendor_id = %s AND request_id = %s",
            (vendor_id, request_id),
        )
        .fetchone()
    )


def page(conn: Conn, scope: Scope, *, after: int, limit: int) -> list[Row]:
    """Approvals in scope with ``sequence > after``, in sequence order, at most ``limit``."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            f"SELECT * FROM approvals WHERE sequence > %(after)s AND {_SCOPED}"
            " ORDER BY sequence LIMIT %(limit)s",
            {**scope.params(), "after": after, "limit": limit},
        )
        .fetchall()
    )


def changes_after(conn: Conn, scope: Scope, after: int, limit: int) -> tuple[list[Row], int]:
    """Up to ``limit`` approvals in scope changed after ``after``, and how far that read
    reached: the last row's sequence when the batch is full, else the highest sequence
    committed (rows outside the scope included), read in the same statement and so the
    same snapshot. Resuming after that position skips nothing in scope."""
    rows: Sequence[Row] = (
        conn.cursor(row_factory=dict_row)
        .execute(
            f"""
            SELECT h.head AS _head, a.* FROM
              (SELECT coalesce(max(sequence), 0) AS head FROM approvals) h
              LEFT JOIN LATERAL (
                SELECT * FROM approvals
                WHERE sequence > %(after)s AND sequence <= h.head AND {_SCOPED}
                ORDER BY sequence LIMIT %(limit)s
              ) a ON true
            """,
            {**scope.params(), "after": after, "limit": limit},
        )
        .fetchall()
    )
    head = int(rows[0]["_head"]) if rows else after
    found = [{k: v for k, v in r.items() if k != "_head"} for r in rows if r["approval_id"]]
    if len(found) >= limit:
        return found, int(found[-1]["sequence"])
    return found, max(after, head)


def head(conn: Conn) -> int:
    """The highest sequence committed (0 before any approval)."""
    row = conn.execute("SELECT coalesce(max(sequence), 0) FROM approvals").fetchone()
    return int(row[0]) if row else 0
