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

An event naming an approval (§5a) also reads and writes the approval's render count
(:class:`~residuals.meter.state.ApprovalUse`), which outlives periods. It is written before
the counters, with the count it replaced, so a re-delivered record whose counters are
behind is rated on the count it saw the first time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, getcontext, setcontext
from typing import NamedTuple, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from residuals.admission import MAX_EVENT_BYTES, Admitted, Refused, admit, trusted_trace
from residuals.codecs import receipt
from residuals.codecs.signing import VerifyingKey
from residuals.codecs.timestamps import set_timestamp
from residuals.codecs.usage import violation_value
from residuals.domain.approvals import Approval
from residuals.domain.bounds import printable
from residuals.domain.events import UsageEvent
from residuals.domain.identity import Repeat, Retraction, classify_repeat, resolve_retraction
from residuals.domain.licences import Licence
from residuals.domain.metering import rate_event
from residuals.domain.money import MONEY_CONTEXT, ZERO
from residuals.domain.period import Period
from residuals.domain.vocabulary import Kind, RejectReason, Violation
from residuals.meter import messages
from residuals.meter.state import (
    ApprovalUse,
    IdentityEntry,
    PeriodCounters,
    Suspension,
    approval_key,
    counters_key,
    identity_key,
    suspension_key,
)
from residuals.platform.kafka import TRACEPARENT_HEADER, TRACESTATE_HEADER
from residuals.platform.telemetry import extract_trace_context_message
from residuals.v1 import alerts_pb2, common_pb2, usage_pb2

VENDOR_HEADER = "residuals-vendor"
#: W3C Trace Context headers (lower case: the app lowers header names).
DEFAULT_MAX_EVENT_BYTES = MAX_EVENT_BYTES
#: Kafka's record timestamp types (the usage topic is broker-stamped: LogAppendTime).
CREATE_TIME = 0
LOG_APPEND_TIME = 1

Outcome = usage_pb2.RatedUsage.Outcome
_NO_APPROVALS: Mapping[str, Approval] = {}


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
    #: None: a tombstone (poison on this topic, dead-lettered like any malformed record).
    value: bytes | None
    timestamp: datetime  # the broker's append time on the usage topic (LogAppendTime)
    headers: Mapping[str, bytes] = field(default_factory=dict)
    timestamp_type: int = LOG_APPEND_TIME

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.decode("utf-8", errors="replace") if value is not None else None


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
        receipt_key: bytes | None = None,
        approvals: Mapping[str, Approval] = _NO_APPROVALS,
    ) -> None:
        self.licences = licences
        #: Approved approvals by id (§5a): without them every use in an approval-required
        #: category is held as UNAPPROVED_USE.
        self.approvals = approvals
        #: None when spans would not be exported: the context is then passed on unchanged.
        self.tracer = tracer
        self.keys = keys
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        #: The gateway's receipt-stamp key (:mod:`residuals.codecs.receipt`), if shared.
        self.receipt_key = receipt_key
        #: Records whose time came from the meter's clock (a usage topic on CreateTime).
        self.untrusted_timestamps = 0
        #: The latest trusted receipt time seen: the stream's clock for state expiry.
        self.latest_receipt: datetime | None = None
        #: What rate_event runs in (MONEY_CONTEXT, as localcontext would copy it).
        self._money_context = MONEY_CONTEXT.copy()

    def now(self) -> datetime:
        return self._clock.now(UTC)

    def received_at(self, record: Record) -> datetime:
        """When the platform received ``record``, from nothing a vendor can write: the
        gateway's authenticated receipt stamp, else the broker's append time, else (a
        topic misconfigured with producer timestamps) this meter's own clock."""
        if self.receipt_key is not None and record.value is not None:
            stamp = record.headers.get(receipt.RECEIPT_HEADER)
            if stamp:
                stamped = receipt.verify(self.receipt_key, stamp, record.value)
                if stamped is not None:
                    return stamped
        if record.timestamp_type == LOG_APPEND_TIME:
            return record.timestamp
        self.untrusted_timestamps += 1
        return self.now()

    # --- entry point -------------------------------------------------------------------

    def process(self, record: Record, state: StateView) -> Decision:
        """Decide ``record`` and stamp the trace context on every record it publishes.

        The parent is the record's ``traceparent`` header, else the envelope's ``trace``.
        Without a tracer (nothing exports spans) no span is made: the incoming context is
        passed on as it is, so downstream spans still join the caller's trace for the cost
        of copying two strings. With one, a CONSUMER span ``meter.rate`` is the parent of
        everything downstream.
        """
        received_at = self.received_at(record)
        if self.latest_receipt is None or received_at > self.latest_receipt:
            self.latest_receipt = received_at
        verdict = admit(
            record.value,
            keys=self.keys.verifying_key,
            licences=self.licences.get,
            received_at=received_at,
            vendor_id=record.header(VENDOR_HEADER) or None,
            routing_key=record.key or b"",
            max_event_bytes=self.max_event_bytes,
        )
        incoming = _incoming_trace(record, verdict.trace)
        tracer = self.tracer
        if tracer is None:
            decision = self._decide(record, verdict, received_at, state)
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
            decision = self._decide(record, verdict, received_at, state)
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
        verdict: Admitted | Refused,
        received_at: datetime,
        state: StateView,
    ) -> Decision:
        if isinstance(verdict, Refused):
            return self._dead(record, received_at, verdict)
        context = _Context(
            record,
            verdict.envelope,
            verdict.message,
            verdict.event,
            verdict.vendor_id,
            received_at,
            verdict.licence,
        )
        if verdict.event.kind is Kind.RETRACTION:
            return self._retraction(context, state)
        return self._usage(context, state)

    # --- usage events ------------------------------------------------------------------

    def _usage(self, c: _Context, state: StateView) -> Decision:
        event = c.event
        # The licence admission checked the event against (looked up once per record).
        licence = c.licence if c.licence is not None else self.licences[event.licence_id or ""]
        ikey = identity_key(event.vendor_id, event.event_id)
        raw_entry = state.get(ikey)
        entry = IdentityEntry.decode(raw_entry) if raw_entry is not None else None
        mine = entry is not None and entry.is_record(c.record.partition, c.record.offset)
        if entry is not None and not mine:
            return self._repeat(c, entry, licence)

        period = Period.label(event.occurred_at)
        ckey = counters_key(licence.licence_id, period)
        skey = suspension_key(licence.licence_id)
        raw_counters = state.get(ckey)
        if mine and PeriodCounters.decode(raw_counters).through >= c.record.offset:
            return Decision(kind=event.kind.value, outcome="skipped", skipped=True)
        suspension = Suspension.decode(state.get(skey))
        # A suspension this very record set before a crash was not there when it was rated.
        before = None if suspension.through == c.record.offset else suspension.since
        # The approval's count as this record first saw it (§5a; it outlives periods).
        approval_id = event.approval_id
        akey = approval_key(licence.licence_id, approval_id) if approval_id else None
        used = ApprovalUse.decode(state.get(akey)).seen_by(c.record.offset) if akey else 0
        counters = PeriodCounters.decode_domain(
            raw_counters, period, before, {approval_id: used} if approval_id else None
        )
        # localcontext(MONEY_CONTEXT), for a third of its cost: this context is the meter's
        # own copy, so nothing but flags (which nothing reads) outlives the call.
        caller_context = getcontext()
        setcontext(self._money_context)
        try:
            rating = rate_event(event, licence, counters, self.approvals)
        finally:
            setcontext(caller_context)

        if not mine:
            record = c.record
            encoded = IdentityEntry.encode_new(
                record.partition, record.offset, event, c.envelope.payload
            )
            state.put(ikey, encoded)
        if counters.auto_suspended_since != before:
            state.put(skey, Suspension(c.record.offset, counters.auto_suspended_since).encode())
        if akey is not None and approval_id:
            now_used = counters.approval_renders.get(approval_id, 0)
            if now_used != used:
                state.put(akey, ApprovalUse(c.record.offset, used, now_used).encode())
        state.put(ckey, PeriodCounters.encode_domain(counters, c.record.offset, c.record.partition))

        rated, earned, held = messages.rated_and_estimates(rating)
        self._fill(rated, c, licence.currency)
        alerts: list[alerts_pb2.Alert] = []
        if rating.violations:  # the clock is read only when an alert needs it
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
            earned=earned,
            held=held,
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
            rated.violation = violation_value(Violation.DUPLICATE_CONFLICT)
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
                    Refused(
                        RejectReason.UNKNOWN_ORIGINAL,
                        f"{event.original_event_id!r} is not a usage event of {event.vendor_id!r}",
                        c.vendor_id,
                        event.event_id,
                        c.message.licence_id,
                        event.kind.value,
                    ),
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

    def _dead(self, record: Record, received_at: datetime, refused: Refused) -> Decision:
        original = record.value or b""
        detail = refused.detail
        if len(original) > self.max_event_bytes:  # OVERSIZED: keep what identifies it
            original = original[: self.max_event_bytes]
            detail += f" (original truncated to its first {self.max_event_bytes:,} bytes)"
        dead = usage_pb2.DeadLetter(
            reason=messages.reject_reason(refused.reason),
            detail=detail,
            vendor_id=refused.vendor_id,
            event_id=refused.event_id,
            licence_id=refused.licence_id,
            original=original,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        )
        set_timestamp(dead.received_at, received_at)
        return Decision(kind=refused.kind, outcome="dead", dead=dead)

    def unprocessable(self, record: Record, error: BaseException) -> Decision:
        """A record the meter failed on (a defect, not a rule): dead-lettered with the
        error so the partition moves on, and re-drivable once the defect is fixed."""
        detail = printable(f"the meter failed on this record: {type(error).__name__}: {error}")
        return self._dead(
            record, self.received_at(record), Refused(RejectReason.UNPROCESSABLE, detail)
        )


class _Context(NamedTuple):
    record: Record
    envelope: usage_pb2.SignedUsageEvent
    message: usage_pb2.UsageEvent
    event: UsageEvent
    vendor_id: str  # authenticated: the signing key's vendor
    received_at: datetime
    licence: Licence | None  # the usage event's, as admission found it


def _incoming_trace(
    record: Record, envelope_trace: common_pb2.TraceContext | None
) -> common_pb2.TraceContext | None:
    """The caller's trace: the record's W3C headers, else the envelope's ``trace`` (each
    only when well formed: both are vendor-written)."""
    from_headers = trusted_trace(
        record.headers.get(TRACEPARENT_HEADER), record.headers.get(TRACESTATE_HEADER) or b""
    )
    return from_headers or envelope_trace


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
