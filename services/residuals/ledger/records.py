"""Kafka records the ledger writer consumes, decoded into the rows it stores (pure).

``residuals.usage.rated.v1`` carries RatedUsage (the meter's decision with the signed
envelope), ``residuals.usage.dlq.v1`` carries DeadLetter. Parsed fields come from the
domain's own ``parse_event`` over the signed payload, so the ledger stores exactly what the
rules saw (defaults applied: quantity 1, viewable true, ivt false).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf.message import DecodeError

from residuals.codecs.timestamps import optional_datetime
from residuals.codecs.usage import to_raw
from residuals.domain.events import UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.v1 import common_pb2, usage_pb2

PUBLISHED_AT_HEADER = "residuals-published-at"

Outcome = usage_pb2.RatedUsage.Outcome
OUTCOME_NAMES = {
    Outcome.OUTCOME_ACCEPTED: "ACCEPTED",
    Outcome.OUTCOME_HELD: "HELD",
    Outcome.OUTCOME_EXCLUDED: "EXCLUDED",
    Outcome.OUTCOME_DUPLICATE: "DUPLICATE",
    Outcome.OUTCOME_CONFLICT: "CONFLICT",
    Outcome.OUTCOME_RETRACTED: "RETRACTED",
}
EXCLUSION_NAMES = {
    usage_pb2.RatedUsage.EXCLUSION_IVT: "ivt",
    usage_pb2.RatedUsage.EXCLUSION_NON_VIEWABLE: "non_viewable",
}


class UndecodableRecord(ValueError):
    """A record on the rated topic that is not a valid RatedUsage of a valid event."""


@dataclass(slots=True)
class Rated:
    """One RatedUsage as the ledger stores it."""

    event: UsageEvent
    outcome: str  # ACCEPTED | HELD | EXCLUDED | DUPLICATE | CONFLICT | RETRACTED
    exclusion: str | None
    violation: str | None
    notices: list[str]
    units_priced: int
    units_held: int
    estimated_amount: Decimal
    held_amount: Decimal
    currency: str
    licence_version: int
    tier: int | None
    payload: bytes
    signature: bytes
    key_id: str
    #: The serialized ``BatchProof`` when the vendor signed a batch of events (the
    #: signature is then over the batch's Merkle root), None for a per-event signature.
    signature_proof: bytes | None
    authenticated_vendor_id: str
    received_at: datetime
    rated_at: datetime | None
    published_at: datetime | None
    source_topic: str
    source_partition: int
    source_offset: int
    #: The meter's trace context (its ``meter.rate`` span), when it carried one.
    trace: common_pb2.TraceContext | None = None

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.source_topic, self.source_partition, self.source_offset)

    @property
    def period(self) -> str:
        return str(Period.containing(self.event.occurred_at))


@dataclass(slots=True)
class Dead:
    """One DeadLetter as the ledger stores it."""

    reason: str
    detail: str
    decided_by: str
    vendor_id: str
    event_id: str
    licence_id: str
    period: str
    original: bytes
    received_at: datetime
    published_at: datetime | None
    source_topic: str
    source_partition: int
    source_offset: int
    trace: common_pb2.TraceContext | None = None

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.source_topic, self.source_partition, self.source_offset)


def _violation_name(value: int) -> str | None:
    if not value:
        return None
    return common_pb2.ViolationKind.Name(common_pb2.ViolationKind.ValueType(value)).removeprefix(
        "VIOLATION_KIND_"
    )


def published_at(headers: Any, timestamp: Any = None) -> datetime | None:
    """When the usage behind a record was published: the meter gives rated records and
    dead letters the usage record's timestamp (confluent-kafka's ``(type, ms)``), and puts
    it in a header elsewhere."""
    for key, value in headers or ():
        if key == PUBLISHED_AT_HEADER and value:
            try:
                return datetime.fromtimestamp(int(value) / 1000, UTC)
            except ValueError:
                return None
    if timestamp is not None and timestamp[0] != 0 and timestamp[1] > 0:
        return datetime.fromtimestamp(timestamp[1] / 1000, UTC)
    return None


def decode_rated(
    value: bytes, usage_topic: str, headers: Any = None, timestamp: Any = None
) -> Rated:
    try:
        message = usage_pb2.RatedUsage.FromString(value)
    except DecodeError as exc:
        raise UndecodableRecord("not a RatedUsage") from exc
    event = parse_event(to_raw(message.event))
    if not isinstance(event, UsageEvent):
        raise UndecodableRecord(f"rated event does not parse: {event.detail}")
    received = optional_datetime(message, "received_at")
    if received is None:
        raise UndecodableRecord("rated usage without received_at")
    outcome = OUTCOME_NAMES.get(message.outcome)
    if outcome is None:
        raise UndecodableRecord(f"unknown outcome {message.outcome}")
    return Rated(
        event=event,
        outcome=outcome,
        exclusion=EXCLUSION_NAMES.get(message.exclusion),
        violation=_violation_name(message.violation),
        notices=[n for n in (_violation_name(v) for v in message.notices) if n],
        units_priced=message.units_priced,
        units_held=message.units_held,
        estimated_amount=Decimal(message.estimated_amount or "0"),
        held_amount=Decimal(message.held_amount or "0"),
        currency=message.currency_code,
        licence_version=message.licence_version,
        tier=message.tier or None,
        payload=bytes(message.signed.payload),
        signature=bytes(message.signed.signature),
        key_id=message.signed.key_id,
        signature_proof=(
            message.signed.batch.SerializeToString() if message.signed.HasField("batch") else None
        ),
        authenticated_vendor_id=message.authenticated_vendor_id,
        received_at=received,
        rated_at=optional_datetime(message, "rated_at"),
        published_at=published_at(headers, timestamp),
        source_topic=usage_topic,
        source_partition=message.source_partition,
        source_offset=message.source_offset,
        trace=message.trace if message.trace.traceparent else None,
    )


def _event_period(original: bytes, received_at: datetime) -> str:
    """The period of the rejected event when it can be read, else of its receipt."""
    try:
        envelope = usage_pb2.SignedUsageEvent.FromString(original)
        message = usage_pb2.UsageEvent.FromString(envelope.payload)
    except DecodeError:
        return str(Period.containing(received_at))
    occurred = optional_datetime(message, "occurred_at")
    return str(Period.containing(occurred or received_at))


def decode_dead(
    value: bytes,
    topic: str,
    partition: int,
    offset: int,
    headers: Any = None,
    timestamp: Any = None,
) -> Dead:
    try:
        message = usage_pb2.DeadLetter.FromString(value)
    except DecodeError as exc:
        raise UndecodableRecord("not a DeadLetter") from exc
    received = optional_datetime(message, "received_at") or datetime.now(UTC)
    reason = common_pb2.RejectReason.Name(message.reason).removeprefix("REJECT_REASON_")
    original = bytes(message.original)
    if message.source_topic:
        position = (message.source_topic, message.source_partition, message.source_offset)
        decided_by = "meter"
    else:  # rejected by the gateway before reaching Kafka: the dead letter is the record
        position = (topic, partition, offset)
        decided_by = "gateway"
    return Dead(
        reason=reason,
        detail=message.detail,
        decided_by=decided_by,
        vendor_id=message.vendor_id,
        event_id=message.event_id,
        licence_id=message.licence_id,
        period=_event_period(original, received),
        original=original,
        received_at=received,
        published_at=published_at(headers, timestamp),
        source_topic=position[0],
        source_partition=position[1],
        source_offset=position[2],
        trace=message.trace if message.trace.traceparent else None,
    )
