"""What the meter decides for one usage record: the streaming checks, then the royalty
engine's incremental API, then the records to publish and the state to write.

No Kafka here: :class:`Meter` is given a consumed record and a view of the partition's
state and returns a :class:`Decision`, so every branch is unit-tested without a broker.
Every rule is the domain's (``parse_event``, ``check_window``, ``check_licence``,
``classify_repeat``, ``resolve_retraction``, ``rate_event``); this module only orders the
calls and translates the results.

Exactly-once effect under at-least-once delivery. The app publishes a batch's records,
waits until Kafka has them, and only then writes the batch's state to the changelog, in
record order; for one record, its identity entry first and its period counters last (the
counters are written for every new use, so they are the record's "done" marker). The
changelog of a partition therefore always holds a prefix of those writes. When a record is
delivered again after a crash (its offset was not committed yet):

* its identity entry names another record → a genuine re-send: DUPLICATE or CONFLICT;
* its identity entry names this very record and its counters are at or past its offset →
  it was fully applied and its records were published before that: skip it;
* its identity entry names this record but the counters are behind → its outputs were
  published, its counters not written: rate it again on exactly the counters it saw the
  first time (the prefix holds everything before it) and write them; the records it
  publishes again are identical, and every consumer is idempotent on them;
* no identity entry → never applied: process it normally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Protocol

from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from residuals.codecs.signed import signature_problem
from residuals.codecs.signing import VerifyingKey
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import to_raw
from residuals.domain.events import Rejection, UsageEvent, parse_event
from residuals.domain.identity import Repeat, Retraction, classify_repeat, resolve_retraction
from residuals.domain.licences import Licence
from residuals.domain.metering import rate_event
from residuals.domain.money import MONEY_CONTEXT, ZERO
from residuals.domain.period import Period
from residuals.domain.validation import check_licence, check_window
from residuals.domain.vocabulary import Kind, RejectReason, Violation
from residuals.meter import messages
from residuals.meter.state import (
    IdentityEntry,
    PeriodCounters,
    Suspension,
    counters_key,
    identity_key,
    suspension_key,
)
from residuals.platform.telemetry import extract_trace_context_message
from residuals.v1 import alerts_pb2, common_pb2, usage_pb2

VENDOR_HEADER = "residuals-vendor"
#: W3C Trace Context headers (lower case: the app lowers header names).
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
RECEIVED_AT_HEADER = "residuals-received-at"
DEFAULT_MAX_EVENT_BYTES = 64 * 1024

Outcome = usage_pb2.RatedUsage.Outcome


class StateView(Protocol):
    """The partition's state as the batch sees it (earlier writes of the batch included)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Write ``key``; to ``partition``'s changelog when given, else the record's."""


class KeyRegistry(Protocol):
    def verifying_key(self, key_id: str) -> VerifyingKey | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed ``residuals.usage.v1`` record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: datetime  # broker/producer timestamp: publish time
    headers: Mapping[str, bytes] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.decode("utf-8", errors="replace") if value is not None else None

    def received_at(self) -> datetime:
        """The gateway's receive time when it set one, else the record's timestamp."""
        text = self.header(RECEIVED_AT_HEADER)
        if text:
            try:
                stamp = datetime.fromisoformat(text.strip())
            except ValueError:
                return self.timestamp
            return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
        return self.timestamp


@dataclass(slots=True)
class Decision:
    """The records to publish for one usage record, and metric labels."""

    kind: str = "UNKNOWN"
    outcome: str = "dead"
    rated: usage_pb2.RatedUsage | None = None
    dead: usage_pb2.DeadLetter | None = None
    alerts: list[alerts_pb2.Alert] = field(default_factory=list)
    #: True when the record was already fully applied before a restart (nothing to do).
    skipped: bool = False
    currency: str = ""
    avatar_id: str = ""
    earned: Decimal = ZERO
    held: Decimal = ZERO


_OUTCOME_LABEL = {
    Outcome.OUTCOME_ACCEPTED: "accepted",
    Outcome.OUTCOME_HELD: "held",
    Outcome.OUTCOME_EXCLUDED: "excluded",
    Outcome.OUTCOME_DUPLICATE: "duplicate",
    Outcome.OUTCOME_CONFLICT: "conflict",
    Outcome.OUTCOME_RETRACTED: "retracted",
}


class Meter:
    """Decides one record at a time; holds no state of its own."""

    def __init__(
        self,
        licences: Mapping[str, Licence],
        keys: KeyRegistry,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: type[datetime] = datetime,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.licences = licences
        #: None when spans would not be exported: the context is then passed on unchanged.
        self.tracer = tracer
        self.keys = keys
        self.max_event_bytes = max_event_bytes
        self._clock = clock

    def now(self) -> datetime:
        return self._clock.now(UTC)

    # --- entry point -------------------------------------------------------------------

    def process(self, record: Record, state: StateView) -> Decision:
        """Decide ``record`` and stamp the trace context on every record it publishes.

        The parent is the record's ``traceparent`` header, else the envelope's ``trace``.
        Without a tracer (nothing exports spans) no span is made: the incoming context is
        passed on as it is, so downstream spans still join the caller's trace for the cost
        of copying two strings. With one, a CONSUMER span ``meter.rate`` is the parent of
        everything downstream.
        """
        received_at = record.received_at()
        envelope: usage_pb2.SignedUsageEvent | None = None
        early: Decision | None = None
        if len(record.value) > self.max_event_bytes:
            early = self._dead(
                record,
                received_at,
                RejectReason.OVERSIZED,
                f"{len(record.value)} bytes; the limit is {self.max_event_bytes}",
            )
        else:
            try:
                envelope = usage_pb2.SignedUsageEvent.FromString(record.value)
            except DecodeError:
                early = self._dead(
                    record, received_at, RejectReason.MALFORMED, "not a SignedUsageEvent"
                )
        incoming = _incoming_trace(record, envelope)
        tracer = self.tracer
        if tracer is None:
            decision = early or self._decide(record, envelope, received_at, state)
            if incoming is not None:
                _stamp(decision, incoming)
            return decision
        span = tracer.start_span(
            "meter.rate",
            context=extract_trace_context_message(incoming, context=Context()),
            kind=SpanKind.CONSUMER,
        )
        try:
            # No use_span(): nothing here logs per record, and attaching a context costs.
            decision = early or self._decide(record, envelope, received_at, state)
            span.set_attributes(
                {
                    "residuals.licence_id": _licence_id(decision, record),
                    "residuals.kind": decision.kind,
                    "residuals.outcome": decision.outcome,
                    "messaging.kafka.partition": record.partition,
                    "messaging.kafka.offset": record.offset,
                }
            )
            _stamp(decision, _span_trace(span))
            return decision
        finally:
            span.end()

    def _decide(
        self,
        record: Record,
        envelope: usage_pb2.SignedUsageEvent | None,
        received_at: datetime,
        state: StateView,
    ) -> Decision:
        assert envelope is not None  # process() decided oversized/undecodable records
        key = self.keys.verifying_key(envelope.key_id)
        problem = _signature_problem(key, envelope, record.header(VENDOR_HEADER), received_at)
        if problem is not None or key is None:
            return self._dead(record, received_at, RejectReason.BAD_SIGNATURE, problem or "")
        try:
            message = usage_pb2.UsageEvent.FromString(envelope.payload)
        except DecodeError:
            return self._dead(
                record,
                received_at,
                RejectReason.MALFORMED,
                "payload is not a UsageEvent",
                vendor_id=key.vendor_id,
            )
        parsed = parse_event(to_raw(message))
        if isinstance(parsed, Rejection):
            return self._dead(
                record,
                received_at,
                parsed.reason,
                parsed.detail,
                vendor_id=key.vendor_id,
                message=message,
            )
        window = check_window(parsed.occurred_at, received_at)
        if window is not None:
            detail = (
                f"occurred {parsed.occurred_at.isoformat()}, received {received_at.isoformat()}"
            )
            return self._dead(
                record, received_at, window, detail, vendor_id=key.vendor_id, message=message
            )
        rejection = check_licence(parsed, self.licences)
        if rejection is None and parsed.vendor_id != key.vendor_id:
            rejection = Rejection(
                RejectReason.VENDOR_MISMATCH,
                f"signed by vendor {key.vendor_id!r}, payload names {parsed.vendor_id!r}",
            )
        if rejection is None and parsed.kind is not Kind.RETRACTION:
            routing = (record.key or b"").decode("utf-8", errors="replace")
            if routing != parsed.licence_id:
                rejection = Rejection(
                    RejectReason.MALFORMED,
                    f"record key {routing!r} is not the event's licence {parsed.licence_id!r}",
                )
        if rejection is not None:
            return self._dead(
                record,
                received_at,
                rejection.reason,
                rejection.detail,
                vendor_id=key.vendor_id,
                message=message,
            )
        context = _Context(record, envelope, message, parsed, key.vendor_id, received_at)
        if parsed.kind is Kind.RETRACTION:
            return self._retraction(context, state)
        return self._usage(context, state)

    # --- usage events ------------------------------------------------------------------

    def _usage(self, c: _Context, state: StateView) -> Decision:
        event = c.event
        licence = self.licences[event.licence_id or ""]
        ikey = identity_key(event.vendor_id, event.event_id)
        raw_entry = state.get(ikey)
        entry = IdentityEntry.decode(raw_entry) if raw_entry is not None else None
        mine = entry is not None and entry.is_record(c.record.partition, c.record.offset)
        if entry is not None and not mine:
            return self._repeat(c, entry, licence)

        period = str(Period.containing(event.occurred_at))
        ckey = counters_key(licence.licence_id, period)
        skey = suspension_key(licence.licence_id)
        stored = PeriodCounters.decode(state.get(ckey))
        if mine and stored.through >= c.record.offset:
            return Decision(kind=event.kind.value, outcome="skipped", skipped=True)
        suspension = Suspension.decode(state.get(skey))
        # A suspension this very record set before a crash was not there when it was rated.
        before = None if suspension.through == c.record.offset else suspension.since
        counters = stored.to_domain(period, before)
        with localcontext(MONEY_CONTEXT):
            rating = rate_event(event, licence, counters)

        if not mine:
            entry = IdentityEntry(
                c.record.partition, c.record.offset, event, payload=c.envelope.payload
            )
            state.put(ikey, entry.encode())
        if counters.auto_suspended_since != before:
            state.put(skey, Suspension(c.record.offset, counters.auto_suspended_since).encode())
        updated = PeriodCounters.from_domain(counters, c.record.offset, c.record.partition)
        state.put(ckey, updated.encode())

        rated = messages.rated_from_rating(rating)
        self._fill(rated, c, licence.currency)
        raised_at = self.now()
        alerts = [
            messages.make_alert(
                v, event, licence, version=rating.version, rating=rating, raised_at=raised_at
            )
            for v in rating.violations
        ]
        return Decision(
            kind=event.kind.value,
            outcome=_OUTCOME_LABEL[rated.outcome],
            rated=rated,
            alerts=alerts,
            currency=licence.currency,
            avatar_id=licence.avatar_id,
            earned=rating.earned_estimate,
            held=rating.held_estimate,
        )

    def _repeat(self, c: _Context, first: IdentityEntry, licence: Licence | None) -> Decision:
        """A re-send of an accepted identity: dropped, and a conflict raises an alert."""
        repeat = classify_repeat(first.event, c.event)
        rated = usage_pb2.RatedUsage()
        alerts: list[alerts_pb2.Alert] = []
        currency = licence.currency if licence is not None else ""
        if repeat is Repeat.DUPLICATE:
            rated.outcome = Outcome.OUTCOME_DUPLICATE
        else:
            rated.outcome = Outcome.OUTCOME_CONFLICT
            rated.violation = messages.violation_kind(Violation.DUPLICATE_CONFLICT)
            owner = licence or self.licences.get(first.event.licence_id or "")
            if owner is not None:
                version = owner.version_at(c.event.occurred_at).version
                alert = messages.make_alert(
                    Violation.DUPLICATE_CONFLICT,
                    c.event,
                    owner,
                    version=version,
                    rating=None,
                    raised_at=self.now(),
                )
                alerts.append(alert)
        self._fill(rated, c, currency)
        return Decision(
            kind=c.event.kind.value,
            outcome=_OUTCOME_LABEL[rated.outcome],
            rated=rated,
            alerts=alerts,
            currency=currency,
        )

    # --- retractions -------------------------------------------------------------------

    def _retraction(self, c: _Context, state: StateView) -> Decision:
        event = c.event
        ikey = identity_key(event.vendor_id, event.event_id)
        raw_entry = state.get(ikey)
        entry = IdentityEntry.decode(raw_entry) if raw_entry is not None else None
        if entry is not None:
            if entry.is_record(c.record.partition, c.record.offset):
                return Decision(kind=event.kind.value, outcome="skipped", skipped=True)
            original_licence = self.licences.get(entry.event.licence_id or "")
            return self._repeat(c, entry, original_licence)

        okey = identity_key(event.vendor_id, event.original_event_id or "")
        raw_original = state.get(okey)
        original = IdentityEntry.decode(raw_original) if raw_original is not None else None
        licence: Licence | None = None
        if original is not None:
            retracted_by_other = original.retracted_by not in (None, event.event_id)
            verdict = resolve_retraction(event, original.event, retracted_by_other)
            if verdict is Retraction.UNKNOWN_ORIGINAL:
                return self._dead(
                    c.record,
                    c.received_at,
                    RejectReason.UNKNOWN_ORIGINAL,
                    f"{event.original_event_id!r} is not a usage event of {event.vendor_id!r}",
                    vendor_id=c.vendor_id,
                    message=c.message,
                )
            licence = self.licences.get(original.event.licence_id or "")
            if verdict is Retraction.ALREADY_RETRACTED:
                rated = usage_pb2.RatedUsage(outcome=Outcome.OUTCOME_DUPLICATE)
                self._fill(rated, c, licence.currency if licence else "")
                return Decision(kind=event.kind.value, outcome="duplicate", rated=rated)
            if original.retracted_by is None:
                retracted = IdentityEntry(
                    original.partition, original.offset, original.event, event.event_id
                )
                # Into the original's changelog partition: a key lives in one partition,
                # even when the retraction was routed elsewhere (keyed by vendor).
                state.put(okey, retracted.encode(), original.partition)
        # Known and retracted here, or unknown here (another partition, or never sent): the
        # ledger resolves every retraction against the stored events either way.
        entry = IdentityEntry(
            c.record.partition, c.record.offset, event, payload=c.envelope.payload
        )
        state.put(ikey, entry.encode())
        rated = usage_pb2.RatedUsage(
            outcome=Outcome.OUTCOME_RETRACTED, retracted_event_id=event.original_event_id or ""
        )
        if licence is not None and original is not None:
            rated.licence_version = licence.version_at(original.event.occurred_at).version
        self._fill(rated, c, licence.currency if licence else "")
        return Decision(kind=event.kind.value, outcome="retracted", rated=rated)

    # --- records -----------------------------------------------------------------------

    def _fill(self, rated: usage_pb2.RatedUsage, c: _Context, currency: str) -> None:
        rated.event.CopyFrom(c.message)
        rated.signed.CopyFrom(c.envelope)
        rated.authenticated_vendor_id = c.vendor_id
        rated.currency_code = currency
        set_timestamp(rated.received_at, c.received_at)
        set_timestamp(rated.rated_at, self.now())
        rated.source_partition = c.record.partition
        rated.source_offset = c.record.offset

    def _dead(
        self,
        record: Record,
        received_at: datetime,
        reason: RejectReason,
        detail: str,
        *,
        vendor_id: str = "",
        message: usage_pb2.UsageEvent | None = None,
    ) -> Decision:
        dead = usage_pb2.DeadLetter(
            reason=messages.reject_reason(reason),
            detail=detail,
            vendor_id=vendor_id,
            original=record.value,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        )
        kind = "UNKNOWN"
        if message is not None:
            dead.event_id = message.event_id
            dead.licence_id = message.licence_id
            kind = _kind_label(message.kind)
        set_timestamp(dead.received_at, received_at)
        return Decision(kind=kind, outcome="dead", dead=dead)


@dataclass(frozen=True, slots=True)
class _Context:
    record: Record
    envelope: usage_pb2.SignedUsageEvent
    message: usage_pb2.UsageEvent
    event: UsageEvent
    vendor_id: str  # authenticated: the signing key's vendor
    received_at: datetime


def _incoming_trace(
    record: Record, envelope: usage_pb2.SignedUsageEvent | None
) -> common_pb2.TraceContext | None:
    """The caller's trace: the record's W3C headers, else the envelope's ``trace``."""
    traceparent = record.headers.get(TRACEPARENT_HEADER)
    if traceparent:
        tracestate = record.headers.get(TRACESTATE_HEADER)
        return common_pb2.TraceContext(
            traceparent=traceparent.decode("ascii", "replace"),
            tracestate=tracestate.decode("ascii", "replace") if tracestate else "",
        )
    if envelope is not None and envelope.trace.traceparent:
        return envelope.trace
    return None


def _span_trace(span: trace.Span) -> common_pb2.TraceContext:
    """``span`` as W3C fields, formatted directly (what the propagator's inject writes,
    without its context lookups)."""
    ctx = span.get_span_context()
    return common_pb2.TraceContext(
        traceparent=f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}",
        tracestate=ctx.trace_state.to_header() if ctx.trace_state else "",
    )


def _stamp(decision: Decision, context: common_pb2.TraceContext) -> None:
    """Carry ``context`` on every record of ``decision`` (in the message, not in headers:
    a Kafka header costs more per record than a proto field; the app copies an alert's
    into its ``traceparent`` header, which the alerts service reads)."""
    if decision.rated is not None:
        decision.rated.trace.CopyFrom(context)
    if decision.dead is not None:
        decision.dead.trace.CopyFrom(context)
    for alert in decision.alerts:
        alert.trace.CopyFrom(context)


def _licence_id(decision: Decision, record: Record) -> str:
    if decision.rated is not None and decision.rated.event.licence_id:
        return decision.rated.event.licence_id
    if decision.dead is not None and decision.dead.licence_id:
        return decision.dead.licence_id
    return (record.key or b"").decode("utf-8", errors="replace")


def _kind_label(kind: int) -> str:
    try:
        return common_pb2.UsageKind.Name(common_pb2.UsageKind.ValueType(kind)).removeprefix(
            "USAGE_KIND_"
        )
    except ValueError:
        return "UNKNOWN"


def _signature_problem(
    key: VerifyingKey | None,
    envelope: usage_pb2.SignedUsageEvent,
    claimed_vendor: str | None,
    received_at: datetime,
) -> str | None:
    """Why the envelope does not authenticate its vendor, or None when it does.

    The gateway's check (:func:`~residuals.codecs.signed.signature_problem`, per-event or
    batch signatures): the key's vendor is the tenant, so only a ``residuals-vendor``
    header claim, when present, is checked against it; revocation is judged at receipt.
    """
    return signature_problem(envelope, key, vendor_id=claimed_vendor or None, at=received_at)
