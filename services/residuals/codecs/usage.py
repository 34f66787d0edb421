"""Usage events: protobuf ``UsageEvent`` ↔ the raw mapping the domain validates.

Decoding never judges an event: it hands :func:`residuals.domain.events.parse_event` what
the vendor sent (unset fields as absent), so every path (replay, gateway, meter) rejects
the same events for the same reasons.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from residuals.codecs.timestamps import EPOCH, set_timestamp, to_datetime
from residuals.domain.bounds import (
    EARLIEST_SECONDS,
    LATEST_SECONDS,
    NANOS_PER_SECOND,
    timestamp_problem,
)
from residuals.domain.events import Rejection, UsageEvent, parse_event, plain_event
from residuals.domain.money import fmt
from residuals.domain.vocabulary import Kind, Violation
from residuals.v1 import common_pb2, usage_pb2

_KIND_PREFIX = "USAGE_KIND_"
#: The usage event's text fields (the tests build events from the same list).
TEXT_FIELDS = (
    "event_id",
    "vendor_id",
    "licence_id",
    "avatar_id",
    "render_id",
    "category",
    "territory",
    "channel",
    "ad_revenue_currency",
    "original_event_id",
    "approval_id",
)


class PayloadError(ValueError):
    """A payload field that cannot even be handed to the rules (an out-of-range time)."""


def _kind_name(value: int) -> str:
    try:
        name = common_pb2.UsageKind.Name(common_pb2.UsageKind.ValueType(value))
    except ValueError:
        return ""
    return "" if name.endswith("UNSPECIFIED") else name.removeprefix(_KIND_PREFIX)


#: Every number the wire knows, named once (decoding runs for every stored event).
_KIND_NAMES: dict[int, str] = {v: _kind_name(v) for v in common_pb2.UsageKind.values()}


def kind_name(value: int) -> str:
    """``USAGE_KIND_VIEW`` → ``VIEW``; unknown numbers and UNSPECIFIED → ``""`` (MALFORMED).

    With :func:`kind_value`, the one mapping between the wire's usage kinds and the
    domain's names (``Kind`` values), used by every service."""
    return _KIND_NAMES.get(value, "")


def kind_value(name: str) -> common_pb2.UsageKind.ValueType:
    """``VIEW`` → ``USAGE_KIND_VIEW``; ValueError for a name the wire does not know."""
    return common_pb2.UsageKind.Value(_KIND_PREFIX + name)


def violation_value(violation: Violation) -> common_pb2.ViolationKind.ValueType:
    """``Violation.UNAPPROVED_USE`` → ``VIOLATION_KIND_UNAPPROVED_USE`` (the meter's records
    and alerts, the pre-flight answer)."""
    value = _VIOLATION_VALUES.get(violation)
    if value is None:  # not on the wire: ValueError, as ever
        value = common_pb2.ViolationKind.Value("VIOLATION_KIND_" + violation.value)
    return value


#: Every violation the wire knows, looked up once (the meter's held records name one each).
_VIOLATION_VALUES: dict[Violation, common_pb2.ViolationKind.ValueType] = {
    v: common_pb2.ViolationKind.Value("VIOLATION_KIND_" + v.value)
    for v in Violation
    if "VIOLATION_KIND_" + v.value in set(common_pb2.ViolationKind.keys())
}


def to_raw(message: usage_pb2.UsageEvent) -> dict[str, Any]:
    """The event as a plain mapping for ``parse_event`` (absent = unset).

    Raises :class:`PayloadError` for an ``occurred_at`` outside the event model's era or
    with nanos out of range (before converting it, which would overflow).
    """
    kind = kind_name(message.kind)
    raw: dict[str, Any] = {"kind": kind or (f"USAGE_KIND({message.kind})" if message.kind else "")}
    for name in TEXT_FIELDS:
        value = getattr(message, name)
        if value:
            raw[name] = value
    if message.HasField("occurred_at"):
        stamp = message.occurred_at
        seconds, nanos = stamp.seconds, stamp.nanos
        if not (EARLIEST_SECONDS <= seconds <= LATEST_SECONDS and 0 <= nanos < NANOS_PER_SECOND):
            raise PayloadError(f"occurred_at {timestamp_problem(seconds, nanos)}")
        raw["occurred_at"] = to_datetime(stamp)
    if message.HasField("quantity"):
        raw["quantity"] = message.quantity
    if message.HasField("viewable"):
        raw["viewable"] = message.viewable
    if message.HasField("ivt"):
        raw["ivt"] = message.ivt
    if message.HasField("ad_revenue"):
        raw["ad_revenue"] = message.ad_revenue
    return raw


#: Usage kinds by wire number (retractions always take the general path).
_USE_KINDS: dict[int, Kind] = {
    kind_value(k.value): k for k in (Kind.RENDER, Kind.VIEW, Kind.AD_IMPRESSION)
}


def parse_message(message: usage_pb2.UsageEvent) -> UsageEvent | Rejection:
    """``parse_event(to_raw(message))``: the same event or rejection, and the same
    :class:`PayloadError`. A use whose values are all plain (nearly every one) is built
    from the fields directly (:func:`~residuals.domain.events.plain_event`), without the
    mapping in between; anything else takes the general path.
    """
    kind = _USE_KINDS.get(message.kind)
    if kind is not None and message.HasField("occurred_at"):
        stamp = message.occurred_at
        seconds, nanos = stamp.seconds, stamp.nanos
        if EARLIEST_SECONDS <= seconds <= LATEST_SECONDS and 0 <= nanos < NANOS_PER_SECOND:
            event = plain_event(
                kind,
                EPOCH + timedelta(0, seconds, nanos // 1000),  # to_datetime(), in range
                (
                    message.event_id,
                    message.vendor_id,
                    message.licence_id,
                    message.avatar_id,
                    message.render_id,
                    message.category,
                    message.territory,
                    message.channel,
                    message.ad_revenue_currency,
                    message.approval_id,
                ),
                message.quantity if message.HasField("quantity") else None,
                message.viewable if message.HasField("viewable") else True,
                message.ivt,  # False when absent, its default
                message.ad_revenue if message.HasField("ad_revenue") else None,
            )
            if event is not None:
                return event
    return parse_event(to_raw(message))


def from_domain(event: UsageEvent) -> usage_pb2.UsageEvent:
    """A protobuf event from a normalised domain event (what the SDK sends)."""
    message = usage_pb2.UsageEvent(
        event_id=event.event_id,
        vendor_id=event.vendor_id,
        kind=kind_value(event.kind.value),
        licence_id=event.licence_id or "",
        avatar_id=event.avatar_id or "",
        render_id=event.render_id or "",
        category=event.category or "",
        territory=event.territory or "",
        channel=event.channel or "",
        ad_revenue_currency=event.ad_currency or "",
        original_event_id=event.original_event_id or "",
        approval_id=event.approval_id or "",
    )
    set_timestamp(message.occurred_at, event.occurred_at)
    if event.quantity != 1:
        message.quantity = event.quantity
    if not event.viewable:
        message.viewable = False
    if event.ivt:
        message.ivt = True
    if event.ad_revenue is not None:
        message.ad_revenue = fmt(event.ad_revenue)
    return message


def payload_bytes(message: usage_pb2.UsageEvent) -> bytes:
    """The bytes a signature covers: one deterministic serialization, never redone."""
    return message.SerializeToString(deterministic=True)
