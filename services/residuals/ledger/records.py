"""Kafka records the ledger writer consumes, decoded into the rows it stores (pure).

``residuals.usage.rated.v1`` carries RatedUsage (the meter's decision with the signed
envelope), ``residuals.usage.dlq.v1`` carries DeadLetter, ``residuals.quarantine.v1``
carries QuarantinedRecord (records other consumers set aside). Parsed fields come from the
domain's own ``parse_event`` over the signed payload, so the ledger stores exactly what the
rules saw (defaults applied: quantity 1, viewable true, ivt false).

Every decoder here raises :class:`UndecodableRecord` and nothing else, whatever the bytes
(a tombstone, garbage, a timestamp with nanos -1 or seconds 2^62, an unknown enum value, an
id with a NUL byte or 60,000 characters): the writer quarantines such a record and moves
on. Ids of stored uses must be within the event model's bounds (they are identities);
descriptive text of dead letters, which exist to record bad input, is escaped and bounded
with :func:`~residuals.domain.bounds.printable` so PostgreSQL never refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Concatenate, ParamSpec, TypeVar

from google.protobuf.message import DecodeError

from residuals.codecs.deadletters import reason_from_proto
from residuals.codecs.timestamps import bounded_datetime
from residuals.codecs.usage import kind_name, to_raw
from residuals.domain.bounds import (
    EARLIEST_SECONDS,
    LATEST_SECONDS,
    MAX_ID_CHARS,
    NANOS_PER_SECOND,
    amount_from_text,
    decimal_problem,
    printable,
    text_problem,
)
from residuals.domain.events import MAX_QUANTITY, UsageEvent, parse_event
from residuals.domain.period import Period
from residuals.domain.validation import check_window
from residuals.domain.vocabulary import Kind, RejectReason
from residuals.platform.quarantine import MAX_ERROR_CHARS, Quarantined, describe
from residuals.v1 import common_pb2, quarantine_pb2, usage_pb2

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
    """A record the ledger cannot store as what its topic carries (it is quarantined)."""


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

    #: The period of the use, computed once (the store asks for it several times a row).
    period: str = ""

    def __post_init__(self) -> None:
        if not self.period:
            self.period = period_of(self.event.occurred_at)


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


T = TypeVar("T")
P = ParamSpec("P")

#: Longest dead-letter detail kept (the meter's and gateway's details are one line).
MAX_DETAIL_CHARS = MAX_ERROR_CHARS


def undecodable_on_error(
    decode: Callable[Concatenate[bytes, P], T],
) -> Callable[Concatenate[bytes | None, P], T]:
    """Make ``decode`` take a tombstone and raise only :class:`UndecodableRecord`: whatever
    else a hostile record makes it raise (``ValueError``, ``OverflowError``...) is the
    record's fault, not a reason to stop the writer."""

    @functools.wraps(decode)
    def guarded(value: bytes | None, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if value is None:
            raise UndecodableRecord("tombstone (null value)")
        try:
            return decode(value, *args, **kwargs)
        except UndecodableRecord:
            raise
        except Exception as error:
            raise UndecodableRecord(describe(error)) from error

    return guarded


def _violation_name(value: int) -> str | None:
    if not value:
        return None
    if value not in common_pb2.ViolationKind.values():
        raise UndecodableRecord(f"unknown violation kind {value}")
    return common_pb2.ViolationKind.Name(common_pb2.ViolationKind.ValueType(value)).removeprefix(
        "VIOLATION_KIND_"
    )


def _millis(value: int) -> datetime | None:
    """Epoch milliseconds as a datetime, None when outside the event model's era."""
    if not EARLIEST_SECONDS * 1000 <= value <= LATEST_SECONDS * 1000:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


def published_at(headers: Any, timestamp: Any = None) -> datetime | None:
    """When the usage behind a record was published: the meter gives rated records and
    dead letters the usage record's timestamp (confluent-kafka's ``(type, ms)``), and puts
    it in a header elsewhere. None when absent or absurd (never raises)."""
    for key, value in headers or ():
        if key == PUBLISHED_AT_HEADER and value:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            try:
                return _millis(int(text[:24]))
            except ValueError:
                return None
    if timestamp is not None and timestamp[0] != 0 and timestamp[1] > 0:
        return _millis(int(timestamp[1]))
    return None


def _amount(text: str, name: str) -> Decimal:
    """A meter-computed amount (:func:`~residuals.domain.bounds.amount_from_text`: its
    fraction is not bounded, unrounded accruals may carry many digits)."""
    try:
        return amount_from_text(text or "0")
    except ValueError as problem:
        raise UndecodableRecord(f"{name} {problem}") from None


def _check_ids(owner: object, names: Iterable[str], label: str = "") -> None:
    """Ids the meter adds to a use (key, vendor, currency) are bounded like the event's
    (inline and lazy: this runs for every record the ledger stores)."""
    for name in names:
        text = getattr(owner, name)
        if text and (len(text) > MAX_ID_CHARS or not text.isprintable()):
            raise UndecodableRecord(f"{label}{name} {text_problem(text)}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The wire's usage kinds the domain knows, by number (anything else: parse_event decides).
_KINDS: dict[int, Kind] = {
    number: Kind(kind_name(number))
    for number in common_pb2.UsageKind.values()
    if kind_name(number) in Kind.__members__
}
_PERIODS: dict[tuple[int, int], str] = {}


def period_of(moment: datetime) -> str:
    """``str(Period.containing(moment))``, cached for UTC datetimes (every stored use
    asks; events are in UTC once parsed)."""
    if moment.tzinfo is not UTC:
        return str(Period.containing(moment))
    key = (moment.year, moment.month)
    found = _PERIODS.get(key)
    if found is None:
        if len(_PERIODS) > 1024:
            _PERIODS.clear()
        found = _PERIODS[key] = str(Period.containing(moment))
    return found


def _plain(texts: tuple[str, ...]) -> bool:
    """Whether ``texts`` are non-empty ids that ``parse_event`` would keep as they are:
    within :data:`MAX_ID_CHARS`, printable, nothing to strip (the only printable white
    space is U+0020)."""
    joined = "".join(texts)
    if not joined.isprintable() or max(map(len, texts)) > MAX_ID_CHARS:
        return False
    if " " in joined:
        return all(t and t[0] != " " and t[-1] != " " for t in texts)
    return all(texts)


def normalised_event(ev: usage_pb2.UsageEvent) -> UsageEvent | None:
    """The embedded event as ``parse_event(to_raw(ev))`` returns it, read straight from the
    message when it is already in normal form (what the meter forwards: it validated it);
    None for anything else, which ``parse_event`` then decides with its own detail.

    Every check ``parse_event`` makes is made here (kind, required and bounded printable
    ids, time within the era, quantity, ad revenue); only the work of normalising what
    needs none (the raw mapping, stripping, a datetime parsed again) is skipped. A test
    holds the two equal over hostile inputs."""
    kind = _KINDS.get(ev.kind)
    if kind is None or not ev.HasField("occurred_at"):
        return None
    stamp = ev.occurred_at
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (EARLIEST_SECONDS <= seconds <= LATEST_SECONDS and 0 <= nanos < NANOS_PER_SECOND):
        return None
    # Within those bounds the instant is within EARLIEST..LATEST (time_problem is None).
    occurred = _EPOCH + timedelta(0, seconds, nanos // 1000)
    quantity = ev.quantity if ev.HasField("quantity") else 1
    if not 1 <= quantity <= MAX_QUANTITY:
        return None
    event_id, vendor_id = ev.event_id, ev.vendor_id
    if kind is Kind.RETRACTION:
        original = ev.original_event_id
        if not _plain((event_id, vendor_id, original)):
            return None
        return UsageEvent(
            event_id, vendor_id, kind, occurred, quantity=quantity, original_event_id=original
        )
    licence_id, avatar_id, render_id = ev.licence_id, ev.avatar_id, ev.render_id
    category, territory, channel = ev.category, ev.territory, ev.channel
    ids: tuple[str, ...] = (
        event_id,
        vendor_id,
        licence_id,
        avatar_id,
        render_id,
        category,
        territory,
    )
    if channel:
        ids += (channel,)
    elif kind is not Kind.RENDER:
        return None
    approval_id = ev.approval_id
    if approval_id:
        ids += (approval_id,)
    revenue: Decimal | None = None
    currency: str | None = None
    if kind is Kind.AD_IMPRESSION:
        if not ev.HasField("ad_revenue"):
            return None
        text = ev.ad_revenue
        # No white space at all: parse_event splits "12.40 EUR" and strips.
        if not text or " " in text or not text.isprintable():
            return None
        try:
            revenue = Decimal(text)
        except InvalidOperation:
            return None
        if not revenue.is_finite() or revenue < 0 or decimal_problem(revenue) is not None:
            return None
        currency = ev.ad_revenue_currency or None
        if currency is not None:
            ids += (currency,)
    if not _plain(ids):
        return None
    viewable = ev.viewable if ev.HasField("viewable") else True
    ivt = ev.ivt if ev.HasField("ivt") else False
    return UsageEvent(
        event_id,
        vendor_id,
        kind,
        occurred,
        licence_id,
        avatar_id,
        render_id,
        category,
        territory,
        channel or None,
        quantity,
        viewable,
        ivt,
        revenue,
        currency,
        None,
        approval_id or None,
    )


def _timestamp(message: Any, name: str) -> datetime | None:
    """:func:`~residuals.codecs.timestamps.bounded_datetime`, inline (two a record)."""
    if not message.HasField(name):
        return None
    stamp = getattr(message, name)
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (EARLIEST_SECONDS <= seconds <= LATEST_SECONDS and 0 <= nanos < NANOS_PER_SECOND):
        return None
    return _EPOCH + timedelta(0, seconds, nanos // 1000)


@undecodable_on_error
def decode_rated(
    value: bytes, usage_topic: str, headers: Any = None, timestamp: Any = None
) -> Rated:
    """A RatedUsage record as the ledger stores it, or :class:`UndecodableRecord`."""
    try:
        message = usage_pb2.RatedUsage.FromString(value)
    except DecodeError as exc:
        raise UndecodableRecord("not a RatedUsage") from exc
    # parse_event bounds the event's ids, decimals and times (to_raw refuses a timestamp
    # that cannot convert); the meter's own fields are checked here. An event already in
    # normal form is read without parsing it again (normalised_event: the same checks).
    ev = message.event
    event = normalised_event(ev)
    if event is None:
        parsed = parse_event(to_raw(ev))
        if not isinstance(parsed, UsageEvent):
            raise UndecodableRecord(f"rated event does not parse: {printable(parsed.detail)}")
        event = parsed
    signed = message.signed
    currency, vendor, key_id = message.currency_code, message.authenticated_vendor_id, signed.key_id
    if (
        max(len(currency), len(vendor), len(key_id)) > MAX_ID_CHARS
        or not (currency + vendor + key_id).isprintable()
    ):
        _check_ids(message, ("currency_code", "authenticated_vendor_id"))
        _check_ids(signed, ("key_id",))
    received = _timestamp(message, "received_at")
    if received is None:
        raise UndecodableRecord("rated usage without a valid received_at")
    outcome = OUTCOME_NAMES.get(message.outcome)
    if outcome is None:
        raise UndecodableRecord(f"unknown outcome {message.outcome}")
    exclusion = message.exclusion
    if exclusion and exclusion not in EXCLUSION_NAMES:
        raise UndecodableRecord(f"unknown exclusion {exclusion}")
    notices = message.notices
    return Rated(
        event=event,
        outcome=outcome,
        exclusion=EXCLUSION_NAMES.get(exclusion),
        violation=_violation_name(message.violation),
        notices=[n for n in (_violation_name(v) for v in notices) if n] if notices else [],
        units_priced=message.units_priced,
        units_held=message.units_held,
        estimated_amount=_amount(message.estimated_amount, "estimated_amount"),
        held_amount=_amount(message.held_amount, "held_amount"),
        currency=currency,
        licence_version=message.licence_version,
        tier=message.tier or None,
        payload=signed.payload,
        signature=signed.signature,
        key_id=key_id,
        signature_proof=signed.batch.SerializeToString() if signed.HasField("batch") else None,
        authenticated_vendor_id=vendor,
        received_at=received,
        rated_at=_timestamp(message, "rated_at"),
        published_at=published_at(headers, timestamp),
        source_topic=usage_topic,
        source_partition=message.source_partition,
        source_offset=message.source_offset,
        trace=message.trace if message.trace.traceparent else None,
        period=period_of(event.occurred_at),
    )


def event_period(original: bytes, received_at: datetime) -> str:
    """The period a dead letter counts in: its event's, when the original reads as an
    event whose ``occurred_at`` is within the event model's bounds and the replay window
    of its receipt (``check_window``); else the period of its receipt. A rejected event's
    own claim of time must not put a row into a period nobody will close (year 2100) or
    one closed long ago. Never raises."""
    fallback = str(Period.containing(received_at))
    try:
        envelope = usage_pb2.SignedUsageEvent.FromString(original)
        message = usage_pb2.UsageEvent.FromString(envelope.payload)
    except DecodeError:
        return fallback
    occurred = bounded_datetime(message, "occurred_at")
    if occurred is None or check_window(occurred, received_at) is not None:
        return fallback
    return str(Period.containing(occurred))


_REASONS = frozenset(r.value for r in RejectReason)


def _reason(value: int) -> str:
    """The reject reason the period close can read back, or :class:`UndecodableRecord`."""
    name = reason_from_proto(value)
    if name not in _REASONS:
        raise UndecodableRecord(f"unknown reject reason {value}")
    return name


@undecodable_on_error
def decode_dead(
    value: bytes,
    topic: str,
    partition: int,
    offset: int,
    headers: Any = None,
    timestamp: Any = None,
) -> Dead:
    """A DeadLetter record as the ledger stores it, or :class:`UndecodableRecord`."""
    try:
        message = usage_pb2.DeadLetter.FromString(value)
    except DecodeError as exc:
        raise UndecodableRecord("not a DeadLetter") from exc
    reason = _reason(message.reason)
    received = (
        bounded_datetime(message, "received_at")
        or published_at(None, timestamp)
        or datetime.now(UTC)
    )
    original = bytes(message.original)
    if message.source_topic:
        position = (
            printable(message.source_topic, 256),
            message.source_partition,
            message.source_offset,
        )
        decided_by = "meter"
    else:  # rejected by the gateway before reaching Kafka: the dead letter is the record
        position = (topic, partition, offset)
        decided_by = "gateway"
    return Dead(
        reason=reason,
        detail=printable(message.detail, MAX_DETAIL_CHARS),
        decided_by=decided_by,
        vendor_id=printable(message.vendor_id, MAX_ID_CHARS),
        event_id=printable(message.event_id, MAX_ID_CHARS),
        licence_id=printable(message.licence_id, MAX_ID_CHARS),
        period=event_period(original, received),
        original=original,
        received_at=received,
        published_at=published_at(headers, timestamp),
        source_topic=position[0],
        source_partition=position[1],
        source_offset=position[2],
        trace=message.trace if message.trace.traceparent else None,
    )


@undecodable_on_error
def decode_quarantined(value: bytes) -> Quarantined:
    """A record another consumer set aside (``residuals.quarantine.v1``), to store."""
    try:
        record = quarantine_pb2.QuarantinedRecord.FromString(value)
    except DecodeError as exc:
        raise UndecodableRecord("not a QuarantinedRecord") from exc
    if not record.consumer or not record.source_topic:
        raise UndecodableRecord("quarantined record without consumer or source topic")
    return Quarantined.from_proto(record)
