"""PostgreSQL persistence of alerts and their change stream (migration 0006).

Every write that creates a change (an alert raised, acknowledged, resolved, a licence
suspended) first locks ``alert_stream_head`` and allocates the next sequences from it,
then holds that lock until commit. Writers are therefore serialised on one row, commits
happen in sequence order, and a reader that sees sequence N has seen everything below
it: the property that makes WatchAlerts resumable without gaps. The lock is held only for
the few inserts of one batch or one RPC.

Alerts are stored once: a re-delivered alert (same deterministic ``alert_id``) is found
under the lock and ignored. Each change keeps a full ``residuals.v1.Alert`` snapshot, so
the stream and ListAlerts never re-assemble an alert from columns.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg import Connection

from residuals.alerts.query import STATE_NAMES, AlertQuery, ChangeKey, kind_name
from residuals.codecs.timestamps import bounded_datetime, optional_datetime, set_timestamp
from residuals.domain.bounds import MAX_ID_CHARS, amount_text_problem, printable, text_problem
from residuals.domain.period import Period
from residuals.domain.vocabulary import SEVERITY, Violation
from residuals.v1 import alerts_pb2, common_pb2

NOTIFY_CHANNEL = "residuals_alert_changes"

CHANGE_NAMES: dict[int, str] = {
    alerts_pb2.ALERT_CHANGE_RAISED: "raised",
    alerts_pb2.ALERT_CHANGE_ACKNOWLEDGED: "acknowledged",
    alerts_pb2.ALERT_CHANGE_RESOLVED: "resolved",
    alerts_pb2.ALERT_CHANGE_LICENCE_SUSPENDED: "licence_suspended",
}

RESOLUTION_NAMES: dict[int, str] = {
    alerts_pb2.RESOLUTION_SETTLE: "settle",
    alerts_pb2.RESOLUTION_WAIVE: "waive",
    alerts_pb2.RESOLUTION_DISPUTE: "dispute",
}


class InvalidAlert(ValueError):
    """A record on the alerts topic that is not a usable alert (quarantined and counted)."""


class AlertNotFound(LookupError):
    pass


class InvalidTransition(ValueError):
    """The change is not allowed in the alert's current state (FAILED_PRECONDITION)."""


class Change(NamedTuple):
    """One row of ``alert_changes``."""

    sequence: int
    alert_id: str
    change: str
    key: ChangeKey
    snapshot: bytes
    published_at: datetime | None

    def alert(self) -> alerts_pb2.Alert:
        return alerts_pb2.Alert.FromString(self.snapshot)


@dataclass(frozen=True)
class Incoming:
    """An alert read from Kafka, with what the consumer learnt from its record."""

    alert: alerts_pb2.Alert
    published_at: datetime | None = None
    trace: common_pb2.TraceContext | None = None
    #: The Kafka record it was read from (quarantined when the alert is invalid).
    record: Any = None


@dataclass(frozen=True)
class Raised:
    """A newly stored alert (its RAISED change)."""

    change: Change
    alert: alerts_pb2.Alert
    suspend: bool


#: Ids stored in columns, matched by filters and access rules.
_ID_FIELDS = ("alert_id", "licence_id", "talent_id", "vendor_id", "avatar_id", "currency_code")
MAX_BIGINT = 2**63 - 1


def period_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def normalise(incoming: Incoming, now: datetime) -> alerts_pb2.Alert:
    """The alert as stored: validated, severity and period filled in, state OPEN.

    Ids stored in columns (and matched by the access rules) must be within the event
    model's bounds; the event ids it lists are escaped and bounded
    (:func:`~residuals.domain.bounds.printable`), so PostgreSQL never refuses the row.
    Raises :class:`InvalidAlert` naming the problem.
    """
    alert = alerts_pb2.Alert()
    alert.CopyFrom(incoming.alert)
    for name in ("alert_id", "licence_id", "talent_id", "vendor_id"):
        if not getattr(alert, name):
            raise InvalidAlert(f"alert without {name}")
    for name in _ID_FIELDS:
        if problem := text_problem(getattr(alert, name)):
            raise InvalidAlert(f"alert {name} {problem}")
    if alert.kind == common_pb2.VIOLATION_KIND_UNSPECIFIED:
        raise InvalidAlert(f"alert {alert.alert_id} without kind")
    if alert.kind not in common_pb2.ViolationKind.values():
        raise InvalidAlert(f"alert {alert.alert_id} has unknown kind {alert.kind}")
    if alert.severity not in common_pb2.Severity.values():
        raise InvalidAlert(f"alert {alert.alert_id} has unknown severity {alert.severity}")
    violation = Violation(kind_name(alert.kind))
    if alert.severity == common_pb2.SEVERITY_UNSPECIFIED:
        alert.severity = common_pb2.Severity.Value("SEVERITY_" + SEVERITY[violation].value)
    if problem := amount_text_problem(alert.held_amount or "0"):
        raise InvalidAlert(f"alert {alert.alert_id} held_amount {problem}")
    if alert.held_units > MAX_BIGINT:
        raise InvalidAlert(f"alert {alert.alert_id} held_units {alert.held_units} out of range")
    if alert.HasField("raised_at") and bounded_datetime(alert, "raised_at") is None:
        raise InvalidAlert(f"alert {alert.alert_id} raised_at is out of bounds")
    if alert.HasField("occurred_at") and bounded_datetime(alert, "occurred_at") is None:
        raise InvalidAlert(f"alert {alert.alert_id} occurred_at is out of bounds")
    if alert.period:
        try:
            Period.parse(alert.period)
        except ValueError:
            raise InvalidAlert(f"alert {alert.alert_id} period is not YYYY-MM") from None
    event_ids = [printable(event_id, MAX_ID_CHARS) for event_id in alert.event_ids]
    del alert.event_ids[:]
    alert.event_ids.extend(event_ids)
    if not alert.HasField("raised_at"):
        set_timestamp(alert.raised_at, now)
    if not alert.period:
        occurred = optional_datetime(alert, "occurred_at")
        alert.period = period_of(occurred or now)
    if incoming.trace is not None and incoming.trace.traceparent:
        alert.trace.CopyFrom(incoming.trace)
    alert.state = alerts_pb2.ALERT_STATE_OPEN
    alert.change = alerts_pb2.ALERT_CHANGE_RAISED
    alert.ClearField("resolution")
    alert.ClearField("licence_suspended_at")
    alert.suspension_id = ""
    return alert


def key_of(alert: alerts_pb2.Alert) -> ChangeKey:
    return ChangeKey(
        kind=kind_name(alert.kind),
        severity=int(alert.severity),
        state=STATE_NAMES.get(alert.state, "open"),
        licence_id=alert.licence_id,
        talent_id=alert.talent_id,
        vendor_id=alert.vendor_id,
        avatar_id=alert.avatar_id,
        period=alert.period,
    )


def should_suspend(alert: alerts_pb2.Alert) -> bool:
    """Critical misuse that suspends the licence (§5): FORBIDDEN_CATEGORY, USE_AFTER_REVOCATION.

    Whether the licence opted out (``auto_suspend_on_critical: false``) is decided with
    the registry when the suspension is carried out, unless the meter already said that
    this alert suspended the licence (``suspended_licence``).
    """
    return Violation(kind_name(alert.kind)).suspends


# --- SQL ---------------------------------------------------------------------------------

_LOCK_HEAD = "SELECT sequence FROM alert_stream_head WHERE singleton FOR UPDATE"
_SET_HEAD = "UPDATE alert_stream_head SET sequence = %s WHERE singleton"
_READ_HEAD = "SELECT sequence FROM alert_stream_head WHERE singleton"

_COPY_ALERTS = """
COPY alerts (alert_id, kind, severity, licence_id, talent_id, vendor_id, avatar_id, period,
             event_ids, held_units, held_amount, currency_code, state, occurred_at, raised_at,
             raised_sequence, sequence) FROM STDIN
"""

_COPY_CHANGES = """
COPY alert_changes (sequence, alert_id, change, kind, severity, state, licence_id, talent_id,
                    vendor_id, avatar_id, period, published_at, snapshot) FROM STDIN
"""

_INSERT_CHANGE = """
INSERT INTO alert_changes (sequence, alert_id, change, kind, severity, state, licence_id,
                           talent_id, vendor_id, avatar_id, period, published_at, snapshot)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

_INSERT_SUSPENSION = """
INSERT INTO alert_suspensions (alert_id, licence_id, state) VALUES (%s, %s, 'pending')
ON CONFLICT (alert_id) DO NOTHING
"""

_CHANGE_COLUMNS = (
    "c.sequence, c.alert_id, c.change, c.kind, c.severity, c.state, c.licence_id, "
    "c.talent_id, c.vendor_id, c.avatar_id, c.period, c.snapshot, c.published_at"
)


def _change_from_row(row: Sequence[Any]) -> Change:
    (seq, alert_id, change, kind, severity, state, licence, talent, vendor, avatar, period) = row[
        :11
    ]
    return Change(
        sequence=int(seq),
        alert_id=alert_id,
        change=change,
        key=ChangeKey(kind, int(severity), state, licence, talent, vendor, avatar, period),
        snapshot=bytes(row[11]),
        published_at=row[12],
    )


def _change_params(change: Change) -> tuple[Any, ...]:
    k = change.key
    return (
        change.sequence,
        change.alert_id,
        change.change,
        k.kind,
        k.severity,
        k.state,
        k.licence_id,
        k.talent_id,
        k.vendor_id,
        k.avatar_id,
        k.period,
        change.published_at,
        change.snapshot,
    )


def _notify(conn: Connection[Any], head: int) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(head)))


# --- writes ------------------------------------------------------------------------------


def store_raised(
    conn: Connection[Any], batch: Iterable[Incoming], *, now: datetime | None = None
) -> tuple[list[Raised], int, list[tuple[Incoming, str]]]:
    """Store the alerts not stored before; returns (raised, duplicates, invalid).

    Runs inside the caller's transaction (the sink's, with the Kafka offsets).
    """
    now = now or datetime.now(UTC)
    valid: list[tuple[Incoming, alerts_pb2.Alert]] = []
    invalid: list[tuple[Incoming, str]] = []
    for incoming in batch:
        try:
            valid.append((incoming, normalise(incoming, now)))
        except InvalidAlert as error:
            invalid.append((incoming, str(error)))
    if not valid:
        return [], 0, invalid
    row = conn.execute(_LOCK_HEAD).fetchone()
    assert row is not None, "alert_stream_head is missing (migration 0006)"
    head = int(row[0])
    ids = sorted({alert.alert_id for _, alert in valid})
    known = {
        r[0] for r in conn.execute("SELECT alert_id FROM alerts WHERE alert_id = ANY(%s)", (ids,))
    }
    fresh: list[tuple[Incoming, alerts_pb2.Alert]] = []
    for incoming, alert in valid:
        if alert.alert_id in known:
            continue
        known.add(alert.alert_id)
        fresh.append((incoming, alert))
    duplicates = len(valid) - len(fresh)
    if not fresh:
        return [], duplicates, invalid
    raised: list[Raised] = []
    alert_rows: list[tuple[Any, ...]] = []
    suspension_rows: list[tuple[str, str]] = []
    for incoming, alert in fresh:
        head += 1
        alert.sequence = head
        change = Change(
            head,
            alert.alert_id,
            "raised",
            key_of(alert),
            alert.SerializeToString(),
            incoming.published_at,
        )
        suspend = should_suspend(alert)
        raised.append(Raised(change, alert, suspend))
        alert_rows.append(
            (
                alert.alert_id,
                change.key.kind,
                change.key.severity,
                alert.licence_id,
                alert.talent_id,
                alert.vendor_id,
                alert.avatar_id,
                alert.period,
                list(alert.event_ids),
                alert.held_units,
                Decimal(alert.held_amount or "0"),
                alert.currency_code,
                "open",
                optional_datetime(alert, "occurred_at"),
                optional_datetime(alert, "raised_at"),
                head,
                head,
            )
        )
        if suspend:
            suspension_rows.append((alert.alert_id, alert.licence_id))
    # COPY: one round trip per table however large the batch (the alert ids are new:
    # checked above under the head lock, so no conflict handling is needed).
    with conn.cursor() as cur:
        with cur.copy(_COPY_ALERTS) as copy:
            for alert_row in alert_rows:
                copy.write_row(alert_row)
        with cur.copy(_COPY_CHANGES) as copy:
            for item in raised:
                copy.write_row(_change_params(item.change))
        if suspension_rows:
            cur.executemany(_INSERT_SUSPENSION, suspension_rows)
    conn.execute(_SET_HEAD, (head,))
    _notify(conn, head)
    return raised, duplicates, invalid


Mutation = Callable[[alerts_pb2.Alert], str]
"""Changes a copy of the current snapshot in place; returns the change name."""


def append_change(conn: Connection[Any], alert_id: str, mutate: Mutation) -> Change | None:
    """Apply ``mutate`` to the alert's current snapshot and record it as the next change.

    ``mutate`` may raise :class:`InvalidTransition`, or return ``""`` for "nothing to do"
    (an idempotent repeat): then nothing is written and None is returned.
    """
    row = conn.execute(_LOCK_HEAD).fetchone()
    assert row is not None, "alert_stream_head is missing (migration 0006)"
    head = int(row[0])
    current = conn.execute(
        "SELECT c.snapshot FROM alerts a JOIN alert_changes c ON c.sequence = a.sequence "
        "WHERE a.alert_id = %s FOR UPDATE OF a",
        (alert_id,),
    ).fetchone()
    if current is None:
        raise AlertNotFound(alert_id)
    alert = alerts_pb2.Alert.FromString(bytes(current[0]))
    change_name = mutate(alert)
    if not change_name:
        return None
    head += 1
    alert.sequence = head
    alert.change = alerts_pb2.AlertChange.Value("ALERT_CHANGE_" + change_name.upper())
    change = Change(head, alert_id, change_name, key_of(alert), alert.SerializeToString(), None)
    conn.execute(
        "UPDATE alerts SET state = %s, resolution = %s, sequence = %s WHERE alert_id = %s",
        (
            change.key.state,
            RESOLUTION_NAMES.get(alert.resolution),
            head,
            alert_id,
        ),
    )
    conn.execute(_INSERT_CHANGE, _change_params(change))
    conn.execute(_SET_HEAD, (head,))
    _notify(conn, head)
    return change


def record_resolution(conn: Connection[Any], alert: alerts_pb2.Alert) -> None:
    """Upsert the alert's current resolution into ``alert_resolutions`` (statements read it)."""
    resolved_at = optional_datetime(alert, "resolved_at")
    conn.execute(
        """
        INSERT INTO alert_resolutions (alert_id, resolution, kind, licence_id, vendor_id,
            talent_id, period, event_ids, held_units, held_amount, currency_code, note,
            resolved_by, resolved_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (alert_id) DO UPDATE SET
            resolution = EXCLUDED.resolution, note = EXCLUDED.note,
            resolved_by = EXCLUDED.resolved_by, resolved_at = EXCLUDED.resolved_at,
            updated_at = now()
        """,
        (
            alert.alert_id,
            RESOLUTION_NAMES[alert.resolution],
            kind_name(alert.kind),
            alert.licence_id,
            alert.vendor_id,
            alert.talent_id,
            alert.period,
            list(alert.event_ids),
            alert.held_units,
            Decimal(alert.held_amount or "0"),
            alert.currency_code,
            alert.resolution_note,
            alert.resolved_by,
            resolved_at,
        ),
    )


# --- reads -------------------------------------------------------------------------------


def head(conn: Connection[Any]) -> int:
    """The highest committed sequence (every change up to it is visible)."""
    row = conn.execute(_READ_HEAD).fetchone()
    return int(row[0]) if row else 0


def changes_after(
    conn: Connection[Any], after: int, query: AlertQuery | None = None, *, limit: int = 500
) -> tuple[list[Change], int]:
    """Matching changes with sequence > ``after``, ascending; and how far that read covers.

    The head is read first: every change up to it is committed (commit order is sequence
    order), so the scan ``(after, head]`` is complete. When fewer than ``limit`` rows come
    back the caller may move its cursor to the returned position even if nothing matched.
    """
    upper = head(conn)
    if upper <= after:
        return [], after
    where, params = (query or AlertQuery()).where("c")
    rows = conn.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM alert_changes c "
        f"WHERE c.sequence > %s AND c.sequence <= %s AND {where} "
        "ORDER BY c.sequence LIMIT %s",
        [after, upper, *params, limit],
    ).fetchall()
    changes = [_change_from_row(r) for r in rows]
    if len(changes) == limit:
        return changes, changes[-1].sequence
    return changes, upper


def current(conn: Connection[Any], alert_id: str) -> Change | None:
    """The alert's latest change (its current snapshot)."""
    row = conn.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM alerts a JOIN alert_changes c ON c.sequence = a.sequence "
        "WHERE a.alert_id = %s",
        (alert_id,),
    ).fetchone()
    return _change_from_row(row) if row else None


def list_current(
    conn: Connection[Any], query: AlertQuery, *, before_raised: int | None, limit: int
) -> list[tuple[int, Change]]:
    """Alerts matching ``query`` on their current state, newest raised first.

    Returns ``(raised_sequence, latest change)`` pairs; page with ``before_raised``.
    """
    where, params = query.where("a")
    rows = conn.execute(
        f"SELECT a.raised_sequence, {_CHANGE_COLUMNS} "
        "FROM alerts a JOIN alert_changes c ON c.sequence = a.sequence "
        f"WHERE {where} AND (%s::bigint IS NULL OR a.raised_sequence < %s::bigint) "
        "ORDER BY a.raised_sequence DESC LIMIT %s",
        [*params, before_raised, before_raised, limit],
    ).fetchall()
    return [(int(r[0]), _change_from_row(r[1:])) for r in rows]


# --- page tokens -------------------------------------------------------------------------


#: Largest sequence (PostgreSQL bigint).
MAX_SEQUENCE = MAX_BIGINT


def page_token(raised_sequence: int) -> str:
    return base64.urlsafe_b64encode(f"alerts:{raised_sequence}".encode()).decode()


def parse_page_token(token: str) -> int | None:
    """The raised sequence a page token continues before; None for the first page."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    prefix, _, value = text.partition(":")
    # ASCII digits only (int() would take "+1", " 1", "1_0", non-ASCII digits) and within
    # bigint, so a forged token is refused here rather than by PostgreSQL.
    if prefix != "alerts" or not value.isascii() or not value.isdigit():
        raise ValueError("is not a token this service issued")
    sequence = int(value)
    if not 0 < sequence <= MAX_SEQUENCE:
        raise ValueError("is not a token this service issued")
    return sequence
