"""The dispatcher's SQL: leases on endpoints, pending deliveries, recorded outcomes.

Everything an attempt decides is written here (batched across endpoints, one
transaction per flush), so a dispatcher that dies re-sends at most what it had not yet
recorded. An endpoint's queue is sent by the replica holding its lease
(``notify_endpoints.lease_owner``/``lease_until``), one replica at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import Connection

from residuals.domain.notifications import (
    ENDPOINT_DISABLED,
    Audience,
    timestamp_text,
)
from residuals.notify import store
from residuals.notify.events import NewEvent

Conn = Connection[Any]

#: Most pending deliveries of one endpoint read at a time.
FETCH_LIMIT = 100

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    url: str
    #: Sealed secrets that sign: the current one, and the previous one during a rotation.
    secrets: tuple[str, ...]
    enabled: bool
    lease_owner: str | None
    owner_role: str
    vendor_id: str
    talent_id: str
    failing_since: datetime | None


@dataclass(frozen=True)
class Pending:
    delivery_id: int
    attempts: int
    next_attempt_at: datetime
    message_id: str
    body: bytes
    #: The lag metric's origin: the usage's publication if known, else the event's storage.
    origin_at: datetime


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, to be written."""

    delivery_id: int
    endpoint_id: str
    state: str
    attempted_at: datetime
    status: int
    error: str
    next_attempt_at: datetime | None = None
    #: Set when this attempt disables the endpoint (410, schedule exhausted).
    disable_reason: str | None = None


@dataclass
class Written:
    """What a flush changed beyond the deliveries: endpoints disabled, and endpoints
    given an endpoint.disabled notice (the dispatcher wakes them)."""

    disabled: list[str] = field(default_factory=list)
    queued_for: set[str] = field(default_factory=set)


_CLAIM = """
WITH due AS (
    SELECT e.endpoint_id FROM notify_endpoints e
    WHERE e.state = 'enabled'
      AND (e.lease_owner IS NULL OR e.lease_until < now())
      AND EXISTS (SELECT 1 FROM notify_deliveries d
                  WHERE d.endpoint_id = e.endpoint_id AND d.state = 'pending'
                    AND d.next_attempt_at <= now())
    ORDER BY e.endpoint_id
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE notify_endpoints e
SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(seconds)s)
FROM due WHERE e.endpoint_id = due.endpoint_id
RETURNING e.endpoint_id
"""


def claim(conn: Conn, owner: str, seconds: float, limit: int) -> list[str]:
    """Lease enabled endpoints that have due deliveries and no live lease."""
    rows = conn.execute(_CLAIM, {"owner": owner, "seconds": seconds, "limit": limit})
    return [r[0] for r in rows.fetchall()]


def renew(conn: Conn, owner: str, seconds: float, endpoint_ids: Sequence[str]) -> set[str]:
    """Extend this replica's leases; the ids returned are still held (the others were
    taken over after expiring, or the endpoint was deleted)."""
    if not endpoint_ids:
        return set()
    rows = conn.execute(
        "UPDATE notify_endpoints SET lease_until = now() + make_interval(secs => %s)"
        " WHERE endpoint_id = ANY(%s) AND lease_owner = %s RETURNING endpoint_id",
        (seconds, list(endpoint_ids), owner),
    )
    return {r[0] for r in rows.fetchall()}


def release(conn: Conn, owner: str, endpoint_ids: Sequence[str]) -> None:
    if endpoint_ids:
        conn.execute(
            "UPDATE notify_endpoints SET lease_owner = NULL, lease_until = NULL"
            " WHERE endpoint_id = ANY(%s) AND lease_owner = %s",
            (list(endpoint_ids), owner),
        )


_ENDPOINTS = """
SELECT endpoint_id, url, secret,
       CASE WHEN previous_secret IS NOT NULL AND previous_until > now()
            THEN previous_secret END,
       state = 'enabled', lease_owner, owner_role, vendor_id, talent_id, failing_since
FROM notify_endpoints WHERE endpoint_id = ANY(%s)
"""

_PENDING = """
SELECT x.endpoint_id, p.delivery_id, p.attempts, p.next_attempt_at, p.event_id, p.body,
       p.origin_at
FROM unnest(%s::text[]) AS x (endpoint_id)
CROSS JOIN LATERAL (
    SELECT d.delivery_id, d.attempts, d.next_attempt_at, ev.event_id, ev.body,
           coalesce(ev.origin_at, ev.created_at) AS origin_at
    FROM notify_deliveries d JOIN notify_events ev ON ev.sequence = d.event_sequence
    WHERE d.endpoint_id = x.endpoint_id AND d.state = 'pending'
    ORDER BY d.delivery_id
    LIMIT %s
) p
ORDER BY x.endpoint_id, p.delivery_id
"""


def fetch(
    conn: Conn, endpoint_ids: Sequence[str], limit: int = FETCH_LIMIT
) -> dict[str, tuple[Endpoint | None, list[Pending]]]:
    """Each endpoint (None: deleted) and its first ``limit`` pending deliveries in order."""
    found: dict[str, tuple[Endpoint | None, list[Pending]]] = {e: (None, []) for e in endpoint_ids}
    for row in conn.execute(_ENDPOINTS, (list(endpoint_ids),)).fetchall():
        secrets = (row[2],) if row[3] is None else (row[2], row[3])
        endpoint = Endpoint(row[0], row[1], secrets, *row[4:])
        found[row[0]] = (endpoint, [])
    for row in conn.execute(_PENDING, (list(endpoint_ids), limit)).fetchall():
        found[row[0]][1].append(Pending(row[1], row[2], row[3], row[4], bytes(row[5]), row[6]))
    return found


_RECORD = """
UPDATE notify_deliveries d
SET state = u.state,
    attempts = d.attempts + 1,
    next_attempt_at = coalesce(u.next_at, d.next_attempt_at),
    first_attempt_at = coalesce(d.first_attempt_at, u.at),
    last_attempt_at = u.at,
    last_status = u.status,
    last_error = u.error,
    delivered_at = CASE WHEN u.state = 'delivered' THEN u.at ELSE d.delivered_at END
FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int[],
            %s::text[]) AS u (delivery_id, state, next_at, at, status, error)
WHERE d.delivery_id = u.delivery_id AND d.state = 'pending'
"""

_DISABLE = """
UPDATE notify_endpoints
SET state = 'disabled', disabled_reason = %s, disabled_at = %s, updated_at = now(),
    lease_owner = NULL, lease_until = NULL
WHERE endpoint_id = %s AND state = 'enabled'
RETURNING owner_role, vendor_id, talent_id, url
"""


def record(conn: Conn, results: Sequence[Result]) -> Written:
    """Write attempts' outcomes (in one transaction: the caller's); disable endpoints
    that asked for it and queue each one's endpoint.disabled notice."""
    written = Written()
    if not results:
        return written
    # Endpoints before their deliveries, in one order: deleting an endpoint locks its row
    # and then cascades to its deliveries, so taking them the other way round deadlocks.
    conn.execute(
        "SELECT 1 FROM notify_endpoints WHERE endpoint_id = ANY(%s)"
        " ORDER BY endpoint_id FOR NO KEY UPDATE",
        (sorted({r.endpoint_id for r in results}),),
    )
    conn.execute(
        _RECORD,
        (
            [r.delivery_id for r in results],
            [r.state for r in results],
            [r.next_attempt_at for r in results],
            [r.attempted_at for r in results],
            [r.status for r in results],
            [r.error for r in results],
        ),
    )
    # In attempt order per endpoint: a success clears failing_since, a later failure sets it.
    delivered = sorted({r.endpoint_id for r in results if r.state == DELIVERED})
    if delivered:
        conn.execute(
            "UPDATE notify_endpoints SET failing_since = NULL"
            " WHERE endpoint_id = ANY(%s) AND failing_since IS NOT NULL",
            (delivered,),
        )
    failing: dict[str, datetime] = {}
    for r in results:
        if r.state != DELIVERED:
            failing.setdefault(r.endpoint_id, r.attempted_at)
    if failing:
        conn.execute(
            "UPDATE notify_endpoints e SET failing_since = coalesce(e.failing_since, f.at)"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS f (endpoint_id, at)"
            " WHERE e.endpoint_id = f.endpoint_id",
            (list(failing), list(failing.values())),
        )
    notices: list[NewEvent] = []
    for r in results:
        if r.disable_reason is None:
            continue
        row = conn.execute(_DISABLE, (r.disable_reason, r.attempted_at, r.endpoint_id)).fetchone()
        if row is None:
            continue  # already disabled (by its owner, or another replica)
        written.disabled.append(r.endpoint_id)
        notices.append(disabled_notice(r.endpoint_id, r.disable_reason, r.attempted_at, row))
    if notices:
        written.queued_for = store.record_events(conn, notices).endpoints
    return written


def disabled_notice(
    endpoint_id: str, reason: str, disabled_at: datetime, owner: Sequence[Any]
) -> NewEvent:
    """The endpoint.disabled event for the owner's other endpoints (and finance/admin):
    endpoint id, URL and reason (docs/NOTIFICATIONS.md). ``owner``: role, vendor_id,
    talent_id, url of the disabled endpoint."""
    vendor_id, talent_id, url = owner[1], owner[2], owner[3]
    audience = Audience(vendor_id=vendor_id, talent_ids=(talent_id,) if talent_id else ())
    return NewEvent(
        event_type=ENDPOINT_DISABLED,
        identity=f"{endpoint_id}:{disabled_at.isoformat()}",
        occurred_at=disabled_at,
        data={
            "endpoint_id": endpoint_id,
            "url": url,
            "reason": reason,
            "disabled_at": timestamp_text(disabled_at),
        },
        audience=audience,
    )


_GAUGES = """
SELECT (SELECT count(*) FROM notify_deliveries WHERE state = 'pending'),
       (SELECT coalesce(extract(epoch FROM now() - min(d.created_at)), 0)
        FROM notify_deliveries d JOIN notify_endpoints e USING (endpoint_id)
        WHERE d.state = 'pending' AND e.state = 'enabled'),
       (SELECT count(*) FILTER (WHERE state = 'enabled') FROM notify_endpoints),
       (SELECT count(*) FILTER (WHERE state = 'disabled') FROM notify_endpoints)
"""


def gauges(conn: Conn) -> tuple[int, float, int, int]:
    """Pending deliveries, the oldest pending one's age (enabled endpoints), endpoints
    enabled and disabled."""
    row = conn.execute(_GAUGES).fetchone()
    assert row is not None
    return int(row[0]), float(row[1]), int(row[2]), int(row[3])
