"""SQL of notify's events and their fan-out to endpoints (``notify_events``,
``notify_deliveries``); endpoint management, listings and rejections build on it.

:func:`record_events` is the one way an event enters: it stores the event once (its
webhook-id is unique) and, in the same statement, queues a delivery for every enabled
endpoint whose owner, role and filters want it. Run it in the transaction that consumed
the event's source (the sink's offsets) and the event is queued exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from residuals.domain.notifications import EVENT_TYPES
from residuals.notify.events import NewEvent

Conn = Connection[Any]

#: pg_notify channel: deliveries were queued (payload: nothing; dispatchers look).
NOTIFY_CHANNEL = "residuals_notify_queued"

_ROLE_TYPES = [(role, t.name) for t in EVENT_TYPES for role in sorted(t.roles)]

_RECORD = """
WITH incoming AS (
    SELECT * FROM unnest(
        %(ids)s::text[], %(types)s::text[], %(vendors)s::text[], %(talents)s::text[],
        %(severities)s::smallint[], %(occurred)s::timestamptz[], %(origins)s::timestamptz[],
        %(bodies)s::bytea[]
    ) AS i (event_id, event_type, vendor_id, talents, severity, occurred_at, origin_at, body)
),
stored AS (
    INSERT INTO notify_events (event_id, event_type, vendor_id, talent_ids, severity,
                               occurred_at, origin_at, body)
    SELECT event_id, event_type, vendor_id,
           CASE WHEN talents = '' THEN '{}'::text[] ELSE string_to_array(talents, ',') END,
           severity, occurred_at, origin_at, body
    FROM incoming
    ON CONFLICT (event_id) DO NOTHING
    RETURNING sequence, event_type, vendor_id, talent_ids, severity
),
allowed AS (
    SELECT * FROM unnest(%(allowed_roles)s::text[], %(allowed_types)s::text[])
        AS a (owner_role, event_type)
),
queued AS (
    INSERT INTO notify_deliveries (endpoint_id, event_sequence)
    SELECT e.endpoint_id, s.sequence
    FROM stored s
    JOIN allowed a ON a.event_type = s.event_type
    JOIN notify_endpoints e ON e.owner_role = a.owner_role
    WHERE e.state = 'enabled'
      AND (cardinality(e.event_types) = 0 OR s.event_type = ANY (e.event_types))
      AND (s.event_type <> 'alert.raised' OR s.severity >= e.min_severity)
      AND (e.owner_role IN ('finance', 'admin')
           OR (e.owner_role = 'vendor' AND e.vendor_id = s.vendor_id)
           OR (e.owner_role = 'talent' AND e.talent_id = ANY (s.talent_ids)))
    ORDER BY s.sequence, e.endpoint_id
    ON CONFLICT DO NOTHING
    RETURNING endpoint_id, event_sequence
)
SELECT s.sequence, s.event_type, q.endpoint_id
FROM stored s LEFT JOIN queued q ON q.event_sequence = s.sequence
"""


@dataclass
class Recorded:
    """What :func:`record_events` stored: new events by type, deliveries queued, and the
    endpoints that were given work (the dispatcher is woken for them)."""

    new_by_type: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    endpoints: set[str] = field(default_factory=set)


def record_events(conn: Conn, events: Sequence[NewEvent]) -> Recorded:
    """Store new events and queue their deliveries; already stored ones are skipped."""
    result = Recorded()
    if not events:
        return result
    for talent in (t for e in events for t in e.audience.talent_ids):
        if "," in talent:
            raise ValueError(f"talent id {talent!r} contains ','")
    params = {
        "ids": [e.message_id for e in events],
        "types": [e.event_type for e in events],
        "vendors": [e.audience.vendor_id for e in events],
        "talents": [",".join(e.audience.talent_ids) for e in events],
        "severities": [e.severity for e in events],
        "occurred": [e.occurred_at for e in events],
        "origins": [e.origin_at for e in events],
        "bodies": [e.body() for e in events],
        "allowed_roles": [r for r, _ in _ROLE_TYPES],
        "allowed_types": [t for _, t in _ROLE_TYPES],
    }
    new: dict[int, str] = {}
    for sequence, event_type, endpoint_id in conn.execute(_RECORD, params).fetchall():
        new[sequence] = event_type
        if endpoint_id is not None:
            result.endpoints.add(endpoint_id)
            result.queued += 1
    for event_type in new.values():
        result.new_by_type[event_type] = result.new_by_type.get(event_type, 0) + 1
    if result.endpoints:
        conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return result


def queue_for_endpoint(conn: Conn, event: NewEvent, endpoint_id: str) -> int:
    """Store ``event`` (if new) and queue it for one endpoint whatever its filters (the
    test event); returns the delivery id."""
    conn.execute(
        "INSERT INTO notify_events (event_id, event_type, vendor_id, talent_ids, severity,"
        " occurred_at, origin_at, body) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
        " ON CONFLICT (event_id) DO NOTHING",
        (
            event.message_id,
            event.event_type,
            event.audience.vendor_id,
            list(event.audience.talent_ids),
            event.severity,
            event.occurred_at,
            event.origin_at,
            event.body(),
        ),
    )
    row = conn.execute(
        "INSERT INTO notify_deliveries (endpoint_id, event_sequence)"
        " SELECT %s, sequence FROM notify_events WHERE event_id = %s"
        " RETURNING delivery_id",
        (endpoint_id, event.message_id),
    ).fetchone()
    assert row is not None
    conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return int(row[0])
