"""The audit log of backdated and admin changes (table ``audit_log``, migration 0009), and
of every request for approval and its decision (migration 0013).

:func:`record` runs inside the registry's transaction, so an audited change and its row
commit together or not at all; :func:`entries` reads them back for ``residuals audit``.
Which changes are audited is :mod:`residuals.licensing.backdating`'s rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from residuals.domain.bounds import printable, text_problem
from residuals.licensing.errors import InvalidArgument
from residuals.licensing.store import Conn
from residuals.platform.auth import Principal

#: Longest reason kept (the request's reason is bounded before this; a safety net).
MAX_REASON_CHARS = 1000


def reason_text(field: str, text: str) -> str:
    """A reason or note: stripped, printable, bounded (it is stored, audited and shown to
    people as text); INVALID_ARGUMENT naming ``field`` otherwise."""
    text = text.strip()
    problem = text_problem(text, MAX_REASON_CHARS)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return text


class Action(StrEnum):
    SUSPEND_LICENCE = "suspend_licence"
    REINSTATE_LICENCE = "reinstate_licence"
    REVOKE_LICENCE = "revoke_licence"
    REVOKE_SIGNING_KEY = "revoke_signing_key"
    REQUEST_APPROVAL = "request_approval"
    APPROVE_USE = "approve_use"
    DENY_USE = "deny_use"


@dataclass(frozen=True)
class Entry:
    """One audited change, as stored."""

    id: int
    recorded_at: datetime
    actor: str
    actor_role: str
    action: str
    licence_id: str | None
    key_id: str | None
    vendor_id: str | None
    effective_at: datetime
    reason: str
    detail: Mapping[str, Any]

    @property
    def backdated_seconds(self) -> int:
        """Whole seconds the change takes effect before it was made (0 if not before)."""
        return max(0, int((self.recorded_at - self.effective_at).total_seconds()))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recorded_at": self.recorded_at.isoformat(),
            "actor": self.actor,
            "actor_role": self.actor_role,
            "action": self.action,
            "licence_id": self.licence_id,
            "key_id": self.key_id,
            "vendor_id": self.vendor_id,
            "effective_at": self.effective_at.isoformat(),
            "backdated_seconds": self.backdated_seconds,
            "reason": self.reason,
            "detail": dict(self.detail),
        }


def record(
    conn: Conn,
    principal: Principal,
    action: Action,
    *,
    effective_at: datetime,
    now: datetime,
    reason: str,
    licence_id: str | None = None,
    key_id: str | None = None,
    vendor_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one row in the caller's transaction (exactly one of licence_id, key_id)."""
    conn.execute(
        "INSERT INTO audit_log (recorded_at, actor, actor_role, action, licence_id, key_id,"
        " vendor_id, effective_at, reason, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            now,
            principal.principal_id,
            str(principal.role),
            str(action),
            licence_id,
            key_id,
            vendor_id,
            effective_at,
            printable(reason.strip(), MAX_REASON_CHARS),
            Jsonb(dict(detail or {})),
        ),
    )


def entries(
    conn: Conn,
    *,
    actor: str = "",
    licence_id: str = "",
    key_id: str = "",
    since: datetime | None = None,
    limit: int = 1000,
) -> list[Entry]:
    """Rows matching every given filter (empty = any), oldest first, at most ``limit``."""
    rows = conn.execute(
        "SELECT id, recorded_at, actor, actor_role, action, licence_id, key_id, vendor_id,"
        " effective_at, reason, detail FROM audit_log"
        " WHERE (%(actor)s = '' OR actor = %(actor)s)"
        " AND (%(licence)s = '' OR licence_id = %(licence)s)"
        " AND (%(key)s = '' OR key_id = %(key)s)"
        " AND (%(since)s::timestamptz IS NULL OR recorded_at >= %(since)s::timestamptz)"
        " ORDER BY id LIMIT %(limit)s",
        {"actor": actor, "licence": licence_id, "key": key_id, "since": since, "limit": limit},
    ).fetchall()
    return [Entry(*row) for row in rows]
