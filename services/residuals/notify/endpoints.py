"""SQL of webhook endpoints and their deliveries as NotificationService manages them.

Every read and write takes a :class:`Scope`: the caller's tenant as SQL, so an endpoint
(or a delivery of one) the caller may not see is simply not found, the same answer as
an id that does not exist (NOT_FOUND, never PERMISSION_DENIED: ids do not leak).
Secrets arrive here sealed (:mod:`residuals.notify.secrets`) and are never returned by
a read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection

from residuals.domain.notifications import ADMIN, FINANCE, TALENT, VENDOR, Owner

Conn = Connection[Any]


@dataclass(frozen=True)
class Scope:
    """Which endpoints a caller sees: its own tenant's, or all (finance, admin)."""

    owner: Owner

    @property
    def everything(self) -> bool:
        return self.owner.role in (FINANCE, ADMIN)

    def sql(self, alias: str = "e") -> tuple[str, tuple[Any, ...]]:
        if self.everything:
            return "TRUE", ()
        if self.owner.role == VENDOR:
            return f"({alias}.owner_role = 'vendor' AND {alias}.vendor_id = %s)", (
                self.owner.vendor_id,
            )
        if self.owner.role == TALENT:
            return f"({alias}.owner_role = 'talent' AND {alias}.talent_id = %s)", (
                self.owner.talent_id,
            )
        return "FALSE", ()


@dataclass(frozen=True)
class EndpointRow:
    endpoint_id: str
    url: str
    description: str
    event_types: list[str]
    min_severity: int
    owner_role: str
    vendor_id: str
    talent_id: str
    state: str
    disabled_reason: str
    disabled_at: datetime | None
    created_at: datetime
    created_by: str
    secret_rotated_at: datetime | None
    failing_since: datetime | None
    pending: int


_ENDPOINT = """
SELECT e.endpoint_id, e.url, e.description, e.event_types, e.min_severity, e.owner_role,
       e.vendor_id, e.talent_id, e.state, e.disabled_reason, e.disabled_at, e.created_at,
       e.created_by, e.secret_rotated_at, e.failing_since,
       (SELECT count(*) FROM notify_deliveries d
        WHERE d.endpoint_id = e.endpoint_id AND d.state = 'pending') AS pending
FROM notify_endpoints e
"""


def count_owned(conn: Conn, owner: Owner) -> int:
    """How many endpoints ``owner`` has, counted under a per-owner transaction lock so two
    concurrent creations cannot both pass the cap."""
    tenant = f"{owner.role}:{owner.vendor_id or owner.talent_id}"
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"notify:{tenant}",))
    row = conn.execute(
        "SELECT count(*) FROM notify_endpoints WHERE owner_role = %s AND vendor_id = %s"
        " AND talent_id = %s",
        (owner.role, owner.vendor_id, owner.talent_id),
    ).fetchone()
    return int(row[0]) if row else 0


def create(
    conn: Conn,
    *,
    endpoint_id: str,
    url: str,
    description: str,
    event_types: Sequence[str],
    min_severity: int,
    owner: Owner,
    sealed_secret: str,
    created_by: str,
) -> EndpointRow:
    conn.execute(
        "INSERT INTO notify_endpoints (endpoint_id, url, description, event_types,"
        " min_severity, owner_role, vendor_id, talent_id, secret, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            endpoint_id,
            url,
            description,
            list(event_types),
            min_severity,
            owner.role,
            owner.vendor_id,
            owner.talent_id,
            sealed_secret,
            created_by,
        ),
    )
    found = get(conn, Scope(Owner(FINANCE)), endpoint_id)
    assert found is not None
    return found


def get(conn: Conn, scope: Scope, endpoint_id: str, *, lock: bool = False) -> EndpointRow | None:
    where, params = scope.sql()
    row = conn.execute(
        _ENDPOINT + f" WHERE e.endpoint_id = %s AND {where}" + (" FOR UPDATE OF e" if lock else ""),
        (endpoint_id, *params),
    ).fetchone()
    return None if row is None else EndpointRow(*row)


def listing(conn: Conn, scope: Scope, *, after: str, limit: int) -> list[EndpointRow]:
    """In endpoint id order, after ``after`` (keyset pagination)."""
    where, params = scope.sql()
    rows = conn.execute(
        _ENDPOINT + f" WHERE e.endpoint_id > %s AND {where} ORDER BY e.endpoint_id LIMIT %s",
        (after, *params, limit),
    ).fetchall()
    return [EndpointRow(*row) for row in rows]


def update(conn: Conn, endpoint_id: str, changes: dict[str, Any]) -> None:
    """Set the named columns (names come from the servicer, never from the caller)."""
    if not changes:
        return
    allowed = {
        "url",
        "description",
        "event_types",
        "min_severity",
        "state",
        "disabled_reason",
        "disabled_at",
        "failing_since",
    }
    assert set(changes) <= allowed, set(changes) - allowed
    assignments = ", ".join(f"{column} = %s" for column in changes)
    conn.execute(
        f"UPDATE notify_endpoints SET {assignments}, updated_at = now() WHERE endpoint_id = %s",
        (*changes.values(), endpoint_id),
    )


def disable_by_owner(conn: Conn, endpoint_id: str) -> None:
    conn.execute(
        "UPDATE notify_endpoints SET state = 'disabled', disabled_reason = 'by its owner',"
        " disabled_at = now(), updated_at = now()"
        " WHERE endpoint_id = %s AND state = 'enabled'",
        (endpoint_id,),
    )


def enable(conn: Conn, endpoint_id: str) -> None:
    conn.execute(
        "UPDATE notify_endpoints SET state = 'enabled', disabled_reason = '',"
        " disabled_at = NULL, failing_since = NULL, updated_at = now()"
        " WHERE endpoint_id = %s",
        (endpoint_id,),
    )


def delete(conn: Conn, scope: Scope, endpoint_id: str) -> bool:
    where, params = scope.sql()
    row = conn.execute(
        f"DELETE FROM notify_endpoints e WHERE e.endpoint_id = %s AND {where}"
        " RETURNING e.endpoint_id",
        (endpoint_id, *params),
    ).fetchone()
    return row is not None


def rotate(conn: Conn, endpoint_id: str, sealed_secret: str, previous_seconds: int) -> None:
    """The new secret; the old one keeps signing for ``previous_seconds``."""
    conn.execute(
        "UPDATE notify_endpoints SET previous_secret = secret, secret = %s,"
        " previous_until = now() + make_interval(secs => %s), secret_rotated_at = now(),"
        " updated_at = now() WHERE endpoint_id = %s",
        (sealed_secret, previous_seconds, endpoint_id),
    )


# --- deliveries --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: int
    endpoint_id: str
    message_id: str
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    body: bytes
    redelivery_of: int | None


_DELIVERY = """
SELECT d.delivery_id, d.endpoint_id, ev.event_id, ev.event_type, d.state, d.attempts,
       d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.created_at,
       d.delivered_at, ev.body, d.redelivery_of
FROM notify_deliveries d
JOIN notify_events ev ON ev.sequence = d.event_sequence
JOIN notify_endpoints e ON e.endpoint_id = d.endpoint_id
"""


def delivery(conn: Conn, scope: Scope, delivery_id: int) -> DeliveryRow | None:
    where, params = scope.sql()
    row = conn.execute(
        _DELIVERY + f" WHERE d.delivery_id = %s AND {where}", (delivery_id, *params)
    ).fetchone()
    return None if row is None else _delivery(row)


def deliveries(
    conn: Conn,
    endpoint_id: str,
    *,
    states: Sequence[str],
    before: int | None,
    limit: int,
) -> list[DeliveryRow]:
    """Newest first (delivery id descending), before ``before`` (keyset pagination)."""
    rows = conn.execute(
        _DELIVERY + " WHERE d.endpoint_id = %s"
        " AND (%s::bigint IS NULL OR d.delivery_id < %s::bigint)"
        " AND (cardinality(%s::text[]) = 0 OR d.state = ANY(%s::text[]))"
        " ORDER BY d.delivery_id DESC LIMIT %s",
        (endpoint_id, before, before, list(states), list(states), limit),
    ).fetchall()
    return [_delivery(row) for row in rows]


def redeliver(conn: Conn, original: int) -> int:
    """A new delivery of the same event to the same endpoint, at the end of its queue."""
    row = conn.execute(
        "INSERT INTO notify_deliveries (endpoint_id, event_sequence, redelivery_of)"
        " SELECT endpoint_id, event_sequence, delivery_id FROM notify_deliveries"
        " WHERE delivery_id = %s RETURNING delivery_id",
        (original,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _delivery(row: Sequence[Any]) -> DeliveryRow:
    values = list(row)
    values[12] = bytes(values[12])
    return DeliveryRow(*values)
