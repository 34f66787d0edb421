"""Kafka records -> events to notify about: one pure mapping per source topic.

Every byte is hostile: a record is decoded with :func:`decode` (which raises
:class:`Unusable` for a tombstone, undecodable bytes or a record without the ids an
event needs) and mapped by a pure function per topic. Identities are derived from what
the record describes (the alert id, the suspension id, ``approval_id:revision``...), so
re-reading a topic, or a compacted licence snapshot re-published with the same
suspensions, gives the same webhook-ids and stores nothing new. Text copied from a
record into a body is escaped and bounded (:func:`text`); a dead letter's original
bytes never leave the operator, only their size and SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError, Message

from residuals.codecs.timestamps import bounded_datetime
from residuals.domain import notifications as n
from residuals.domain.bounds import MAX_ID_CHARS, printable, timestamp_problem
from residuals.domain.notifications import Audience
from residuals.domain.vocabulary import SEVERITY, Violation
from residuals.notify.events import NewEvent
from residuals.v1 import alerts_pb2, approvals_pb2, common_pb2, licence_pb2, payouts_pb2, usage_pb2

#: Source kinds (the catalogue topic each is read from).
ALERT, LICENCE, APPROVAL, PAYOUT, DEAD_LETTER = "alert", "licence", "approval", "payout", "dlq"

#: An alert lists the events behind it; a body carries at most this many of them.
MAX_EVENT_IDS = 20
MAX_DETAIL_CHARS = 1000
MAX_BRIEF_CHARS = 1000


class Unusable(ValueError):
    """The record cannot become an event (tombstone, undecodable, ids missing)."""


def text(value: str, limit: int = MAX_ID_CHARS) -> str:
    """Record text as it may go into a body or a row: escaped, at most ``limit`` chars."""
    return printable(value, limit)


def _id(value: str, what: str) -> str:
    """A required id: present, printable, bounded (an id that is not is refused whole,
    never truncated: two different ids must not become one)."""
    if not value:
        raise Unusable(f"no {what}")
    if len(value) > MAX_ID_CHARS or not value.isprintable() or "," in value:
        raise Unusable(f"{what} is not an acceptable id: {printable(value, 64)!r}")
    return value


def _optional_id(value: str, what: str) -> str:
    return _id(value, what) if value else ""


def _when(message: Message, field: str) -> datetime | None:
    return bounded_datetime(message, field)


def _stamp(message: Message, field: str) -> str | None:
    moment = _when(message, field)
    return None if moment is None else n.timestamp_text(moment)


def _enum_name(enum: Any, number: int, prefix: str) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


def record_time(record: Any) -> datetime:
    """The record's Kafka timestamp, the fallback time of an event (deterministic for
    a re-read record, unlike the clock)."""
    try:
        _kind, millis = record.timestamp()
        seconds, rest = divmod(int(millis), 1000)
        if timestamp_problem(seconds, rest * 1_000_000) is None:
            return datetime.fromtimestamp(millis / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError, AttributeError):
        pass
    return datetime(2000, 1, 1, tzinfo=UTC)


def decode(kind: str, value: bytes | None) -> Message:
    """The record's protobuf message; :class:`Unusable` when there is none."""
    if value is None:
        raise Unusable("tombstone (null value)")
    types: Mapping[str, type[Message]] = {
        ALERT: alerts_pb2.Alert,
        LICENCE: licence_pb2.Licence,
        APPROVAL: approvals_pb2.Approval,
        PAYOUT: payouts_pb2.PayoutEvent,
        DEAD_LETTER: usage_pb2.DeadLetter,
    }
    try:
        return types[kind].FromString(value)
    except (DecodeError, RecursionError) as error:
        raise Unusable(f"undecodable {kind}: {error}") from None


# --- alerts ------------------------------------------------------------------------------


def alert_severity(alert: alerts_pb2.Alert) -> int:
    """The alert's severity; unspecified = the default of its kind (as the alerts
    service fills it in), so min_severity filters what the meter left blank."""
    if alert.severity and alert.severity in common_pb2.Severity.values():
        return int(alert.severity)
    name = _enum_name(common_pb2.ViolationKind, alert.kind, "VIOLATION_KIND_")
    try:
        return int(common_pb2.Severity.Value("SEVERITY_" + SEVERITY[Violation(name)].value))
    except (KeyError, ValueError):
        return int(common_pb2.SEVERITY_UNSPECIFIED)


def alert_events(
    alert: alerts_pb2.Alert, *, fallback: datetime, origin_at: datetime | None = None
) -> list[NewEvent]:
    """``quota.near``, ``quota.exceeded`` or ``alert.raised`` (with its severity)."""
    alert_id = _id(alert.alert_id, "alert_id")
    talent_id = _optional_id(alert.talent_id, "talent_id")
    vendor_id = _optional_id(alert.vendor_id, "vendor_id")
    if alert.kind == common_pb2.VIOLATION_KIND_QUOTA_NEAR:
        event_type = n.QUOTA_NEAR
    elif alert.kind == common_pb2.VIOLATION_KIND_QUOTA_EXCEEDED:
        event_type = n.QUOTA_EXCEEDED
    else:
        event_type = n.ALERT_RAISED
    severity = alert_severity(alert)
    raised_at = _when(alert, "raised_at") or _when(alert, "occurred_at") or fallback
    data = {
        "alert_id": alert_id,
        "kind": _enum_name(common_pb2.ViolationKind, alert.kind, "VIOLATION_KIND_"),
        "severity": _enum_name(common_pb2.Severity, severity, "SEVERITY_"),
        "licence_id": text(alert.licence_id),
        "talent_id": talent_id,
        "vendor_id": vendor_id,
        "avatar_id": text(alert.avatar_id),
        "event_ids": [text(e) for e in alert.event_ids[:MAX_EVENT_IDS]],
        "event_count": len(alert.event_ids),
        "period": text(alert.period, 16),
        "held_units": int(alert.held_units),
        "held_amount": text(alert.held_amount, 64),
        "currency_code": text(alert.currency_code, 8),
        "detail": text(alert.detail, MAX_DETAIL_CHARS),
        "occurred_at": _stamp(alert, "occurred_at"),
        "raised_at": n.timestamp_text(raised_at),
        "suspended_licence": bool(alert.suspended_licence),
    }
    return [
        NewEvent(
            event_type,
            alert_id,
            raised_at,
            data,
            Audience(vendor_id, (talent_id,) if talent_id else ()),
            severity=severity if event_type == n.ALERT_RAISED else 0,
            origin_at=origin_at,
        )
    ]


# --- licences ----------------------------------------------------------------------------


def licence_events(licence: licence_pb2.Licence, *, fallback: datetime) -> list[NewEvent]:
    """Every suspension window -> ``licence.suspended``; a window a person ended ->
    ``licence.reinstated``; a revoked latest version -> ``licence.revoked``. The topic
    holds full snapshots, so the same windows come again: their ids make them one event."""
    licence_id = _id(licence.licence_id, "licence_id")
    talent_id = _optional_id(licence.talent_id, "talent_id")
    vendor_id = _optional_id(licence.vendor_id, "vendor_id")
    audience = Audience(vendor_id, (talent_id,) if talent_id else ())
    common = {
        "licence_id": licence_id,
        "talent_id": talent_id,
        "vendor_id": vendor_id,
        "avatar_id": text(licence.avatar_id),
    }
    events: list[NewEvent] = []
    for window in licence.suspensions:
        suspension_id = _id(window.suspension_id, "suspension_id")
        starts_at = _when(window, "starts_at") or fallback
        ends_at = _when(window, "ends_at")
        data: dict[str, Any] = {
            **common,
            "suspension_id": suspension_id,
            "starts_at": n.timestamp_text(starts_at),
            "ends_at": None if ends_at is None else n.timestamp_text(ends_at),
            "reason": text(window.reason, MAX_DETAIL_CHARS),
            "automatic": bool(window.automatic),
            "alert_id": text(window.alert_id),
            "suspended_by": text(window.suspended_by),
        }
        events.append(NewEvent(n.LICENCE_SUSPENDED, suspension_id, starts_at, data, audience))
        if window.reinstated_by and ends_at is not None:
            reinstated = {**data, "reinstated_by": text(window.reinstated_by)}
            events.append(
                NewEvent(n.LICENCE_REINSTATED, suspension_id, ends_at, reinstated, audience)
            )
    if licence.versions:
        latest = max(licence.versions, key=lambda v: v.version)
        revoked_at = _when(latest, "revoked_at")
        if latest.HasField("revoked_at"):
            moment = revoked_at or fallback
            revoked: dict[str, Any] = {
                **common,
                "version": int(latest.version),
                "revoked_at": n.timestamp_text(moment),
                "wind_down_days": int(latest.wind_down_days),
            }
            events.append(NewEvent(n.LICENCE_REVOKED, licence_id, moment, revoked, audience))
    return events


# --- approvals ---------------------------------------------------------------------------


def approval_events(approval: approvals_pb2.Approval, *, fallback: datetime) -> list[NewEvent]:
    """PENDING -> ``approval.requested``; APPROVED/DENIED -> ``approval.decided`` (one per
    revision: a decision changed later is a new event)."""
    approval_id = _id(approval.approval_id, "approval_id")
    talent_id = _optional_id(approval.talent_id, "talent_id")
    vendor_id = _optional_id(approval.vendor_id, "vendor_id")
    status = approval.status
    data: dict[str, Any] = {
        "approval_id": approval_id,
        "licence_id": text(approval.licence_id),
        "talent_id": talent_id,
        "vendor_id": vendor_id,
        "category": text(approval.category),
        "status": _enum_name(approvals_pb2.ApprovalStatus, status, "APPROVAL_STATUS_"),
        "brief": text(approval.use.brief, MAX_BRIEF_CHARS),
        "renders_requested": int(approval.renders_requested),
        "requested_from": _stamp(approval, "requested_from"),
        "requested_until": _stamp(approval, "requested_until"),
        "requested_at": _stamp(approval, "requested_at"),
        "request_id": text(approval.request_id),
        "revision": int(approval.revision),
    }
    audience = Audience(vendor_id, (talent_id,) if talent_id else ())
    if status == approvals_pb2.APPROVAL_STATUS_PENDING:
        moment = _when(approval, "requested_at") or fallback
        return [NewEvent(n.APPROVAL_REQUESTED, approval_id, moment, data, audience)]
    if status in (approvals_pb2.APPROVAL_STATUS_APPROVED, approvals_pb2.APPROVAL_STATUS_DENIED):
        moment = _when(approval, "decided_at") or fallback
        data |= {
            "decided_at": n.timestamp_text(moment),
            "decided_by": text(approval.decided_by),
            "valid_from": _stamp(approval, "valid_from"),
            "valid_until": _stamp(approval, "valid_until"),
            "max_renders": int(approval.max_renders),
            "reason": text(approval.reason, MAX_DETAIL_CHARS),
        }
        identity = f"{approval_id}:{approval.revision}"
        return [NewEvent(n.APPROVAL_DECIDED, identity, moment, data, audience)]
    return []


# --- payouts -----------------------------------------------------------------------------


def payout_payee(event: payouts_pb2.PayoutEvent) -> str | None:
    """The payee whose talents must be looked up, or None when the event is not notified."""
    state = event.payout.state
    if state not in (payouts_pb2.PAYOUT_STATE_PAID, payouts_pb2.PAYOUT_STATE_FAILED):
        return None
    return _id(event.payout.payee_id, "payee_id")


def money_text(money: common_pb2.Money) -> str:
    """``12.340000000`` as a decimal string (units and nanos, same sign)."""
    units, nanos = int(money.units), int(money.nanos)
    negative = units < 0 or nanos < 0
    whole = f"{abs(units)}.{abs(nanos):09d}".rstrip("0").rstrip(".")
    return f"-{whole}" if negative and whole != "0" else whole


def payout_events(event: payouts_pb2.PayoutEvent, *, fallback: datetime) -> list[NewEvent]:
    """PAID -> ``payout.paid``, FAILED -> ``payout.failed``, for the payee only, as
    PayoutService shows payouts (payouts/access.py): a talent paid directly has the payee
    id as talent id, and so does an agent's or estate's principal. An agent's clients do
    not hear of its payouts: one payout sums several clients' money."""
    payee_id = payout_payee(event)
    if payee_id is None:
        return []
    payout = event.payout
    payout_id = _id(payout.payout_id, "payout_id")
    sequence = int(event.sequence or payout.sequence)
    paid = payout.state == payouts_pb2.PAYOUT_STATE_PAID
    moment = _when(payout, "updated_at") or _when(event, "emitted_at") or fallback
    data = {
        "payout_id": payout_id,
        "payee_id": payee_id,
        "state": "PAID" if paid else "FAILED",
        "amount": money_text(payout.amount),
        "currency_code": text(payout.amount.currency_code, 8),
        "period": text(payout.period, 16),
        "statement_id": text(payout.statement_id),
        "attempts": int(payout.attempts),
        "failure_reason": text(payout.failure_reason, MAX_DETAIL_CHARS),
        "rail": text(payout.rail, 32),
        "rail_reference": text(payout.rail_reference),
        "sequence": sequence,
        "updated_at": n.timestamp_text(moment),
    }
    return [
        NewEvent(
            n.PAYOUT_PAID if paid else n.PAYOUT_FAILED,
            f"{payout_id}:{sequence}",
            moment,
            data,
            Audience("", (payee_id,)),
        )
    ]


# --- dead letters ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """What a vendor is told of one dead-lettered event (WatchRejections, usage.rejected)."""

    vendor_id: str
    event_id: str
    reason: int
    detail: str
    licence_id: str
    received_at: datetime | None
    source_topic: str
    source_partition: int
    source_offset: int
    original_bytes: int
    original_sha256: str
    message_id: str


@dataclass(frozen=True)
class RejectionRow(Rejected):
    """A ``notify_rejections`` row to store: the rejection and the dead-letter record it
    came from (which makes re-reading it store nothing); its sequence comes when stored."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int


def rejection(
    letter: usage_pb2.DeadLetter,
    *,
    dlq_topic: str,
    dlq_partition: int,
    dlq_offset: int,
    fallback: datetime,
) -> tuple[RejectionRow, NewEvent]:
    """The rejection row and its ``usage.rejected`` event (the vendor's only: talents
    never hear of vendors' malformed traffic)."""
    vendor_id = _optional_id(letter.vendor_id, "vendor_id")
    reason = int(letter.reason) if letter.reason in common_pb2.RejectReason.values() else 0
    original = bytes(letter.original)
    received_at = _when(letter, "received_at")
    digest = hashlib.sha256(original).hexdigest()
    row_text = {
        "event_id": text(letter.event_id),
        "detail": text(letter.detail, MAX_DETAIL_CHARS),
        "licence_id": text(letter.licence_id),
        "source_topic": text(letter.source_topic, 256),
    }
    data = {
        "reason": _enum_name(common_pb2.RejectReason, reason, "REJECT_REASON_"),
        "detail": row_text["detail"],
        "event_id": row_text["event_id"],
        "licence_id": row_text["licence_id"],
        "vendor_id": vendor_id,
        "received_at": None if received_at is None else n.timestamp_text(received_at),
        "source_topic": row_text["source_topic"],
        "source_partition": int(letter.source_partition),
        "source_offset": int(letter.source_offset),
        "original_bytes": len(original),
        "original_sha256": digest,
    }
    event = NewEvent(
        n.USAGE_REJECTED,
        f"{dlq_topic}:{dlq_partition}:{dlq_offset}",
        received_at or fallback,
        data,
        Audience(vendor_id, ()),
    )
    row = RejectionRow(
        vendor_id=vendor_id,
        event_id=row_text["event_id"],
        reason=reason,
        detail=row_text["detail"],
        licence_id=row_text["licence_id"],
        received_at=received_at,
        source_topic=row_text["source_topic"],
        source_partition=int(letter.source_partition),
        source_offset=int(letter.source_offset),
        original_bytes=len(original),
        original_sha256=digest,
        message_id=event.message_id,
        dlq_topic=dlq_topic,
        dlq_partition=dlq_partition,
        dlq_offset=dlq_offset,
    )
    return row, event


def reason_name(reason: int) -> str:
    """``MALFORMED``, ``BAD_SIGNATURE``... (the rejections metric's label)."""
    return _enum_name(common_pb2.RejectReason, reason, "REJECT_REASON_")


def reason_names() -> Iterable[str]:
    return (
        name.removeprefix("REJECT_REASON_")
        for name in (v.name for v in common_pb2.RejectReason.DESCRIPTOR.values)
    )
