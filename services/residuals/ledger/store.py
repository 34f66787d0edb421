"""One batch of rated usage and dead letters into PostgreSQL, inside the sink's transaction.

The ledger is the final authority on identity. Per batch, in record order:

* arrival sequence numbers are taken for every record, in consumption order, so a period's
  events can be replayed in the order the ledger accepted them;
* new uses are COPYed into a temporary table and inserted with
  ``ON CONFLICT DO NOTHING``; a row that was not inserted is either the same source record
  delivered again (nothing to do) or a re-send of an identity first accepted through
  another partition, which the meter could not see: the ledger classifies it with
  :func:`~residuals.domain.identity.classify_repeat` and records a DUPLICATE or CONFLICT;
* retractions are resolved against the stored events with
  :func:`~residuals.domain.identity.resolve_retraction` (an unknown original is a dead
  letter ``UNKNOWN_ORIGINAL``);
* repeats and dead letters are inserted idempotently on their source record's position;
* running totals are updated from the rows actually inserted;
* a use of a closed period is recorded as an adjustment of the next open period;
* a record that does not decode is quarantined (``quarantine`` table), and the records of
  ``residuals.quarantine.v1`` (set aside by consumers without a database) are stored there.

The caller (:class:`~residuals.platform.sink.KafkaPostgresSink`) advances the consumer
offsets in the same transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from psycopg import Connection, abc, adapt, pq
from psycopg.adapt import PyFormat

from residuals.codecs.signed import signed_envelope
from residuals.codecs.usage import to_raw
from residuals.domain.events import UsageEvent, parse_event
from residuals.domain.identity import Repeat, Retraction, classify_repeat, resolve_retraction
from residuals.domain.period import Period
from residuals.ledger.records import (
    Dead,
    Rated,
    UndecodableRecord,
    decode_dead,
    decode_quarantined,
    decode_rated,
)
from residuals.platform.quarantine import Pending, Quarantined, insert
from residuals.platform.telemetry import extract_trace_context_message
from residuals.v1 import usage_pb2

log = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "vendor_id",
    "event_id",
    "licence_id",
    "kind",
    "occurred_at",
    "payload",
    "received_at",
    "arrival_seq",
    "period",
    "adjustment_period",
    "signature",
    "key_id",
    "signature_proof",
    "authenticated_vendor_id",
    "avatar_id",
    "render_id",
    "category",
    "territory",
    "channel",
    "quantity",
    "viewable",
    "ivt",
    "ad_revenue",
    "ad_revenue_currency",
    "original_event_id",
    "approval_id",
    "outcome",
    "exclusion",
    "violation",
    "notices",
    "units_priced",
    "units_held",
    "estimated_amount",
    "held_amount",
    "currency",
    "licence_version",
    "tier",
    "published_at",
    "rated_at",
    "source_topic",
    "source_partition",
    "source_offset",
)
_COPY_EVENTS = f"COPY usage_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"

REPEAT_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "arrival_seq",
    "vendor_id",
    "event_id",
    "licence_id",
    "kind",
    "outcome",
    "decided_by",
    "occurred_at",
    "period",
    "adjustment_period",
    "payload",
    "signature",
    "key_id",
    "signature_proof",
    "received_at",
    "published_at",
)

DEAD_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "arrival_seq",
    "reason",
    "detail",
    "decided_by",
    "vendor_id",
    "event_id",
    "licence_id",
    "period",
    "original",
    "received_at",
    "published_at",
)

TOTAL_COLUMNS = (
    "licence_id",
    "period",
    "kind",
    "currency",
    "events",
    "units_priced",
    "units_held",
    "units_excluded",
    "estimated_amount",
    "held_amount",
    "duplicates",
    "conflicts",
    "retracted",
    "adjustments",
)

# Staging tables, emptied at commit and at the start of every call: the sink may apply
# parts of one batch in one transaction (savepoints, while isolating a poison record).
_TEMP = """
CREATE TEMP TABLE IF NOT EXISTS ledger_batch_events
    (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS ledger_batch_repeats
    (LIKE usage_repeats INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS ledger_batch_dead
    (LIKE dead_letters INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS ledger_batch_totals
    (LIKE ledger_totals INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
DELETE FROM ledger_batch_events;
DELETE FROM ledger_batch_repeats;
DELETE FROM ledger_batch_dead;
DELETE FROM ledger_batch_totals;
"""


@dataclass(slots=True)
class Totals:
    """Running-total increments of one (licence, period, kind)."""

    currency: str = ""
    events: int = 0
    units_priced: int = 0
    units_held: int = 0
    units_excluded: int = 0
    estimated_amount: Decimal = Decimal(0)
    held_amount: Decimal = Decimal(0)
    duplicates: int = 0
    conflicts: int = 0
    retracted: int = 0
    adjustments: int = 0


@dataclass(slots=True)
class BatchResult:
    """What one batch changed (for metrics and tests)."""

    events: int = 0
    repeats: int = 0
    dead: int = 0
    redelivered: int = 0
    #: Records quarantined because they do not decode, and quarantined records relayed
    #: from the quarantine topic.
    undecodable: int = 0
    relayed: int = 0
    inserted: list[Rated] = field(default_factory=list)


class _Periods:
    """Closed periods and where a use of one of them is recorded instead."""

    def __init__(self, conn: Connection[Any]) -> None:
        rows = conn.execute("SELECT period FROM closed_periods FOR SHARE").fetchall()
        self.closed = {str(r[0]) for r in rows}

    def adjustment(self, period: str) -> str | None:
        """None while ``period`` is open, else the first open period after it."""
        if period not in self.closed:
            return None
        later = Period.parse(period).next()
        while str(later) in self.closed:
            later = later.next()
        return str(later)


def _event_row(
    r: Rated, seq: int, adjustment: str | None, *, licence_id: str, period: str
) -> tuple[Any, ...]:
    e = r.event
    return (
        e.vendor_id,
        e.event_id,
        licence_id,
        e.kind.value,
        e.occurred_at,
        r.payload,
        r.received_at,
        seq,
        period,
        adjustment,
        r.signature,
        r.key_id,
        r.signature_proof,
        r.authenticated_vendor_id,
        e.avatar_id,
        e.render_id,
        e.category,
        e.territory,
        e.channel,
        e.quantity,
        e.viewable,
        e.ivt,
        e.ad_revenue,
        e.ad_currency,
        e.original_event_id,
        e.approval_id,
        r.outcome,
        r.exclusion,
        r.violation,
        r.notices,
        r.units_priced,
        r.units_held,
        r.estimated_amount,
        r.held_amount,
        r.currency,
        r.licence_version,
        r.tier,
        r.published_at,
        r.rated_at,
        r.source_topic,
        r.source_partition,
        r.source_offset,
    )


#: What COPY's text format escapes (as psycopg does), and NUL, which no text may hold
#: (psycopg refuses it): a row with any of them is not written by :func:`_event_line`.
_COPY_SPECIAL = re.compile("[\b\t\n\v\f\r\\\\\x00]")
_COPY_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    "\\": "\\\\",
}
_NULL = "\\N"
#: A bytea in hex, its backslash escaped for COPY.
_BYTEA = "\\\\x"


def _copy_escape(match: re.Match[str]) -> str:
    return _COPY_ESCAPES[match.group()]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``YYYY-MM-DD HH:MM:SS`` of recent UTC epoch seconds (a batch's times share seconds).
_SECONDS: dict[int, str] = {}


def _time_text(moment: datetime) -> str:
    """A UTC time as COPY text, half the cost of ``str(moment)`` (four a row): the same
    instant to the microsecond, its second's text cached."""
    if moment.tzinfo is not UTC:
        return str(moment)
    since = moment - _EPOCH
    seconds = since.days * 86400 + since.seconds
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) >= 65536:
            _SECONDS.clear()
        text = _SECONDS[seconds] = str(moment.replace(microsecond=0, tzinfo=None))
    micro = since.microseconds
    return f"{text}.{micro:06d}+00" if micro else f"{text}+00"


def _copy_line(row: Sequence[Any], tx: abc.Transformer) -> str:
    """A row exactly as psycopg's ``write_row`` writes it: its text dumpers (``tx``, of the
    connection), then COPY's escapes. The general case, for rows :func:`_event_line`
    leaves to it."""
    values = tx.dump_sequence(row, [PyFormat.TEXT] * len(row))
    encoding = tx.encoding
    return (
        "\t".join(
            _NULL if v is None else _COPY_SPECIAL.sub(_copy_escape, bytes(v).decode(encoding))
            for v in values
        )
        + "\n"
    )


def _event_line(
    r: Rated, seq: int, adjustment: str | None, *, licence_id: str, period: str
) -> str | None:
    """The row of :func:`_event_row` as one line of COPY text, in one f-string: psycopg's
    write_row costs a dumper call per value, 42 a row. Values are written exactly as its
    text dumpers write them (PostgreSQL parses them: its range checks still apply). None
    for a row with anything to escape or an array to write: :func:`_copy_line` then."""
    e = r.event
    texts = (
        e.vendor_id,
        e.event_id,
        licence_id,
        period,
        adjustment or "",
        r.key_id,
        r.authenticated_vendor_id,
        e.avatar_id or "",
        e.render_id or "",
        e.category or "",
        e.territory or "",
        e.channel or "",
        e.ad_currency or "",
        e.original_event_id or "",
        e.approval_id or "",
        r.exclusion or "",
        r.violation or "",
        r.currency,
        r.source_topic,
    )
    if _COPY_SPECIAL.search("".join(texts)) or r.notices:
        return None
    N = _NULL
    proof = N if r.signature_proof is None else _BYTEA + r.signature_proof.hex()
    revenue = e.ad_revenue
    published = N if r.published_at is None else _time_text(r.published_at)
    rated_at = N if r.rated_at is None else _time_text(r.rated_at)
    return (
        f"{e.vendor_id}\t{e.event_id}\t{licence_id}\t{e.kind.value}\t"
        f"{_time_text(e.occurred_at)}\t\\\\x{r.payload.hex()}\t{_time_text(r.received_at)}\t"
        f"{seq}\t{period}\t"
        f"{N if adjustment is None else adjustment}\t\\\\x{r.signature.hex()}\t{r.key_id}\t"
        f"{proof}\t{r.authenticated_vendor_id}\t"
        f"{N if e.avatar_id is None else e.avatar_id}\t"
        f"{N if e.render_id is None else e.render_id}\t"
        f"{N if e.category is None else e.category}\t"
        f"{N if e.territory is None else e.territory}\t"
        f"{N if e.channel is None else e.channel}\t{e.quantity}\t{'t' if e.viewable else 'f'}\t"
        f"{'t' if e.ivt else 'f'}\t{N if revenue is None else str(revenue)}\t"
        f"{N if e.ad_currency is None else e.ad_currency}\t"
        f"{N if e.original_event_id is None else e.original_event_id}\t"
        f"{N if e.approval_id is None else e.approval_id}\t{r.outcome}\t"
        f"{N if r.exclusion is None else r.exclusion}\t"
        f"{N if r.violation is None else r.violation}\t"
        f"{{}}\t{r.units_priced}\t{r.units_held}\t{r.estimated_amount}\t{r.held_amount}\t"
        f"{r.currency}\t{r.licence_version}\t{N if r.tier is None else r.tier}\t"
        f"{published}\t{rated_at}\t"
        f"{r.source_topic}\t{r.source_partition}\t{r.source_offset}\n"
    )


def _stored_event(payload: bytes) -> UsageEvent:
    event = parse_event(to_raw(usage_pb2.UsageEvent.FromString(payload)))
    if not isinstance(event, UsageEvent):
        raise UndecodableRecord("stored event does not parse")
    return event


@dataclass(slots=True)
class _Repeat:
    rated: Rated
    seq: int
    outcome: str
    decided_by: str
    licence_id: str
    period: str


class LedgerStore:
    """Writes batches; ``usage_topic`` is the (prefixed) topic the meter read."""

    def __init__(
        self,
        *,
        usage_topic: str,
        rated_topic: str,
        dlq_topic: str,
        quarantine_topic: str | None = None,
        consumer: str = "ledger",
        quarantine: Pending | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.usage_topic = usage_topic
        self.rated_topic = rated_topic
        self.dlq_topic = dlq_topic
        #: Where other consumers publish what they set aside (stored as received).
        self.quarantine_topic = quarantine_topic
        #: The ``consumer`` of the quarantine rows this writer makes itself, and where they
        #: go until the transaction commits (the sink's).
        self.consumer = consumer
        self.quarantine = quarantine or Pending()
        #: None when spans are not exported: no span is made (see :meth:`_spans`).
        self.tracer = tracer

    # --- entry point -----------------------------------------------------------------------

    def apply(self, conn: Connection[Any], messages: Sequence[Any]) -> BatchResult:
        """Store ``messages`` (confluent-kafka records) in the caller's transaction.

        A record that does not decode (tombstone, garbage, out of bounds) is quarantined
        here, in the same transaction; records of the quarantine topic are stored there.
        """
        result = BatchResult()
        items: list[Rated | Dead] = []
        undecodable: list[Quarantined] = []
        relayed: list[Quarantined] = []
        for message in messages:
            try:
                decoded = self.decode(message)
            except UndecodableRecord as error:
                undecodable.append(Quarantined.of(self.consumer, message, error))
                continue
            if isinstance(decoded, Quarantined):
                relayed.append(decoded)
            else:
                items.append(decoded)
        if undecodable:
            result.undecodable = self.quarantine.store(conn, undecodable)
        if relayed:  # counted by the consumer that published them, not again here
            result.relayed = len(insert(conn, relayed))
        if not items:
            return result
        spans = self._spans(items)
        try:
            return self._store(conn, items, result)
        finally:
            for span in spans:
                span.end()

    def decode(self, message: Any) -> Rated | Dead | Quarantined:
        """One consumed record by its topic; raises only :class:`UndecodableRecord`."""
        topic = message.topic()
        if topic == self.dlq_topic:
            return decode_dead(
                message.value(),
                topic,
                message.partition(),
                message.offset(),
                message.headers(),
                message.timestamp(),
            )
        if topic == self.quarantine_topic:
            return decode_quarantined(message.value())
        return decode_rated(
            message.value(), self.usage_topic, message.headers(), message.timestamp()
        )

    def _spans(self, items: Sequence[Rated | Dead]) -> list[Span]:
        """One CONSUMER span per record, a child of the meter's span carried in the record.

        Per record, not per batch with links: the ledger is bound by PostgreSQL (a batch
        transaction costs milliseconds, a span microseconds), and a child span keeps the
        record in its usage's trace, where a linked batch span would start a trace of its
        own. The spans end when the batch's writes are done.
        """
        tracer = self.tracer
        if tracer is None:
            return []
        spans: list[Span] = []
        for item in items:
            if isinstance(item, Rated):
                attributes = {
                    "residuals.licence_id": item.event.licence_id or "",
                    "residuals.event_id": item.event.event_id,
                    "residuals.outcome": item.outcome,
                }
            else:
                attributes = {
                    "residuals.licence_id": item.licence_id,
                    "residuals.event_id": item.event_id,
                    "residuals.outcome": "DEAD_LETTER",
                    "residuals.reject_reason": item.reason,
                }
            spans.append(
                tracer.start_span(
                    "ledger.store",
                    context=extract_trace_context_message(item.trace, context=Context()),
                    kind=SpanKind.CONSUMER,
                    attributes=attributes,
                )
            )
        return spans

    def _store(
        self, conn: Connection[Any], items: Sequence[Rated | Dead], result: BatchResult
    ) -> BatchResult:
        conn.execute(_TEMP)
        seqs = [
            int(r[0])
            for r in conn.execute(
                "SELECT nextval('ledger_arrival_seq') FROM generate_series(1, %s)", (len(items),)
            ).fetchall()
        ]
        periods = _Periods(conn)
        totals: dict[tuple[str, str, str], Totals] = {}
        uses: list[tuple[Rated, int]] = []
        retractions: list[tuple[Rated, int]] = []
        repeats: list[_Repeat] = []
        dead: list[tuple[Dead, int]] = []
        for item, seq in zip(items, sorted(seqs), strict=True):
            if isinstance(item, Dead):
                dead.append((item, seq))
            elif item.outcome in ("DUPLICATE", "CONFLICT"):
                repeats.append(self._meter_repeat(conn, item, seq))
            elif item.outcome == "RETRACTED":
                retractions.append((item, seq))
            else:
                uses.append((item, seq))

        repeats.extend(self._insert_uses(conn, uses, periods, totals, result))
        for rated, seq in retractions:
            outcome = self._retract(conn, rated, seq, periods, totals, result)
            if isinstance(outcome, _Repeat):
                repeats.append(outcome)
            elif isinstance(outcome, Dead):
                dead.append((outcome, seq))
        self._insert_repeats(conn, repeats, periods, totals, result)
        self._insert_dead(conn, dead, result)
        self._add_totals(conn, totals)
        return result

    # --- uses ------------------------------------------------------------------------------

    def _insert_uses(
        self,
        conn: Connection[Any],
        uses: list[tuple[Rated, int]],
        periods: _Periods,
        totals: dict[tuple[str, str, str], Totals],
        result: BatchResult,
    ) -> list[_Repeat]:
        if not uses:
            return []
        adjustment = periods.adjustment
        lines: list[str] = []
        tx: abc.Transformer | None = None
        for rated, seq in uses:
            licence_id, period = rated.event.licence_id or "", rated.period
            adjusted = adjustment(period)
            line = _event_line(rated, seq, adjusted, licence_id=licence_id, period=period)
            if line is None:
                tx = tx or adapt.Transformer(conn)
                row = _event_row(rated, seq, adjusted, licence_id=licence_id, period=period)
                line = _copy_line(row, tx)
            lines.append(line)
        if self._copy_new_uses(conn, lines):
            result.events += len(uses)
            result.inserted.extend(rated for rated, _ in uses)
            for rated, _ in uses:
                self._count_use(rated, rated.period, periods, totals, sign=1)
            return []
        inserted = self._insert_new_uses(conn, lines)
        left: list[tuple[Rated, int]] = []
        for rated, seq in uses:
            if seq in inserted:
                result.events += 1
                result.inserted.append(rated)
                self._count_use(rated, rated.period, periods, totals, sign=1)
            else:
                left.append((rated, seq))
        if not left:
            return []
        firsts = self._identities(conn, [r.event for r, _ in left])
        repeats: list[_Repeat] = []
        for rated, seq in left:
            first = firsts.get((rated.event.vendor_id, rated.event.event_id))
            if first is None:  # cannot happen: something prevented the insert
                raise RuntimeError(f"event {rated.event.identity} was neither new nor stored")
            if first["position"] == rated.position:
                result.redelivered += 1
                continue
            repeat = classify_repeat(_stored_event(first["payload"]), rated.event)
            repeats.append(
                _Repeat(
                    rated,
                    seq,
                    "DUPLICATE" if repeat is Repeat.DUPLICATE else "CONFLICT",
                    "ledger",
                    str(first["licence_id"]),
                    str(first["period"] or rated.period),
                )
            )
        return repeats

    def _copy_new_uses(self, conn: Connection[Any], lines: list[str]) -> bool:
        """COPY the rows (:func:`_event_line`) straight into usage_events, when none of
        them is stored yet (the usual batch); False when one is (a re-delivery, a re-send),
        which is rolled back.

        Half of PostgreSQL's work per event otherwise: every row written to a temporary
        table first, then inserted again with a speculative check per unique index."""
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            return False  # a savepoint needs the caller's transaction (the sink's)
        try:
            with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_EVENTS) as cp:
                cp.write("".join(lines).encode(conn.info.encoding))
        except psycopg.errors.UniqueViolation:
            return False
        return True

    def _insert_new_uses(self, conn: Connection[Any], lines: list[str]) -> set[int]:
        """Insert the rows not stored yet; the arrival numbers of those inserted."""
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY ledger_batch_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
            ) as cp:
                cp.write("".join(lines).encode(conn.info.encoding))
            cur.execute(
                f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "
                f"SELECT {', '.join(EVENT_COLUMNS)} FROM ledger_batch_events "
                "ORDER BY arrival_seq ON CONFLICT DO NOTHING RETURNING arrival_seq"
            )
            return {int(r[0]) for r in cur.fetchall()}

    def _identities(
        self, conn: Connection[Any], events: Iterable[UsageEvent]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        vendors, ids = zip(*[(e.vendor_id, e.event_id) for e in events], strict=True)
        rows = conn.execute(
            "SELECT u.vendor_id, u.event_id, u.payload, u.licence_id, u.period, u.kind, "
            "u.source_topic, u.source_partition, u.source_offset "
            "FROM usage_events u JOIN unnest(%s::text[], %s::text[]) AS k (v, e) "
            "ON u.vendor_id = k.v AND u.event_id = k.e",
            (list(vendors), list(ids)),
        ).fetchall()
        return {
            (str(v), str(e)): {
                "payload": bytes(payload),
                "licence_id": licence,
                "period": period,
                "kind": kind,
                "position": (topic, partition, offset),
            }
            for v, e, payload, licence, period, kind, topic, partition, offset in rows
        }

    def _count_use(
        self,
        rated: Rated,
        period: str,
        periods: _Periods,
        totals: dict[tuple[str, str, str], Totals],
        *,
        sign: int,
    ) -> None:
        adjustment = periods.adjustment(period)
        slot = (rated.event.licence_id or "", adjustment or period, rated.event.kind.value)
        t = totals.setdefault(slot, Totals(currency=rated.currency))
        t.events += sign
        t.units_priced += sign * rated.units_priced
        t.units_held += sign * rated.units_held
        if rated.outcome == "EXCLUDED":
            t.units_excluded += sign * rated.event.quantity
        t.estimated_amount += sign * rated.estimated_amount
        t.held_amount += sign * rated.held_amount
        if adjustment is not None:
            t.adjustments += 1

    # --- retractions -----------------------------------------------------------------------

    def _decided(self, conn: Connection[Any], position: tuple[str, int, int]) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM usage_events WHERE source_topic = %(t)s "
            "AND source_partition = %(p)s AND source_offset = %(o)s) "
            "OR EXISTS (SELECT 1 FROM usage_repeats WHERE source_topic = %(t)s "
            "AND source_partition = %(p)s AND source_offset = %(o)s) "
            "OR EXISTS (SELECT 1 FROM dead_letters WHERE source_topic = %(t)s "
            "AND source_partition = %(p)s AND source_offset = %(o)s)",
            {"t": position[0], "p": position[1], "o": position[2]},
        ).fetchone()
        return bool(row and row[0])

    def _retract(
        self,
        conn: Connection[Any],
        rated: Rated,
        seq: int,
        periods: _Periods,
        totals: dict[tuple[str, str, str], Totals],
        result: BatchResult,
    ) -> _Repeat | Dead | None:
        event = rated.event
        if self._decided(conn, rated.position):
            result.redelivered += 1
            return None
        own = self._identities(conn, [event]).get(event.identity)
        if own is not None:  # the retraction's own id was accepted before: a re-send
            repeat = classify_repeat(_stored_event(own["payload"]), event)
            outcome = "DUPLICATE" if repeat is Repeat.DUPLICATE else "CONFLICT"
            return _Repeat(rated, seq, outcome, "ledger", str(own["licence_id"]), own["period"])
        row = conn.execute(
            "SELECT payload, licence_id, period, kind, outcome, units_priced, units_held, "
            "estimated_amount, held_amount, quantity, currency, exclusion FROM usage_events "
            "WHERE vendor_id = %s AND event_id = %s",
            (event.vendor_id, event.original_event_id),
        ).fetchone()
        original = _stored_event(bytes(row[0])) if row is not None else None
        already = (
            conn.execute(
                "SELECT 1 FROM usage_events WHERE vendor_id = %s AND original_event_id = %s "
                "AND kind = 'RETRACTION'",
                (event.vendor_id, event.original_event_id),
            ).fetchone()
            is not None
        )
        verdict = resolve_retraction(event, original, already)
        if verdict is Retraction.UNKNOWN_ORIGINAL or row is None or original is None:
            return Dead(
                reason="UNKNOWN_ORIGINAL",
                detail=f"no stored usage event {event.original_event_id!r} of {event.vendor_id!r}",
                decided_by="ledger",
                vendor_id=event.vendor_id,
                event_id=event.event_id,
                licence_id="",
                period=rated.period,
                original=signed_envelope(
                    rated.payload, rated.signature, rated.key_id, rated.signature_proof
                ).SerializeToString(),
                received_at=rated.received_at,
                published_at=rated.published_at,
                source_topic=rated.source_topic,
                source_partition=rated.source_partition,
                source_offset=rated.source_offset,
            )
        licence_id, period = str(row[1]), str(row[2] or rated.period)
        if verdict is Retraction.ALREADY_RETRACTED:
            return _Repeat(rated, seq, "DUPLICATE", "ledger", licence_id, period)
        values = _event_row(
            rated, seq, periods.adjustment(period), licence_id=licence_id, period=period
        )
        inserted = conn.execute(
            f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))}) ON CONFLICT DO NOTHING "
            "RETURNING 1",
            values,
        ).fetchone()
        if inserted is None:  # another writer retracted it first (one-retraction index)
            return _Repeat(rated, seq, "DUPLICATE", "ledger", licence_id, period)
        result.events += 1
        result.inserted.append(rated)
        adjustment = periods.adjustment(period)
        t = totals.setdefault(
            (licence_id, adjustment or period, str(row[3])), Totals(currency=str(row[10] or ""))
        )
        t.retracted += 1
        t.events -= 1
        t.units_priced -= int(row[5] or 0)
        t.units_held -= int(row[6] or 0)
        if row[4] == "EXCLUDED":
            t.units_excluded -= int(row[9] or 0)
        t.estimated_amount -= Decimal(row[7] or 0)
        t.held_amount -= Decimal(row[8] or 0)
        if adjustment is not None:
            t.adjustments += 1
        return None

    # --- repeats and dead letters ----------------------------------------------------------

    def _meter_repeat(self, conn: Connection[Any], rated: Rated, seq: int) -> _Repeat:
        licence_id, period = rated.event.licence_id or "", rated.period
        if rated.event.kind.value == "RETRACTION":  # counted under the original's licence
            row = conn.execute(
                "SELECT licence_id, period FROM usage_events WHERE vendor_id = %s "
                "AND event_id = %s",
                (rated.event.vendor_id, rated.event.original_event_id),
            ).fetchone()
            if row is not None:
                licence_id, period = str(row[0]), str(row[1] or period)
        return _Repeat(rated, seq, rated.outcome, "meter", licence_id, period)

    def _insert_repeats(
        self,
        conn: Connection[Any],
        repeats: list[_Repeat],
        periods: _Periods,
        totals: dict[tuple[str, str, str], Totals],
        result: BatchResult,
    ) -> None:
        if not repeats:
            return
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY ledger_batch_repeats ({', '.join(REPEAT_COLUMNS)}) FROM STDIN"
            ) as cp:
                for rp in repeats:
                    r, e = rp.rated, rp.rated.event
                    cp.write_row(
                        (
                            r.source_topic,
                            r.source_partition,
                            r.source_offset,
                            rp.seq,
                            e.vendor_id,
                            e.event_id,
                            rp.licence_id,
                            e.kind.value,
                            rp.outcome,
                            rp.decided_by,
                            e.occurred_at,
                            rp.period,
                            periods.adjustment(rp.period),
                            r.payload,
                            r.signature,
                            r.key_id,
                            r.signature_proof,
                            r.received_at,
                            r.published_at,
                        )
                    )
            cur.execute(
                f"INSERT INTO usage_repeats ({', '.join(REPEAT_COLUMNS)}) "
                f"SELECT {', '.join(REPEAT_COLUMNS)} FROM ledger_batch_repeats "
                "ORDER BY arrival_seq ON CONFLICT DO NOTHING RETURNING arrival_seq"
            )
            inserted = {int(r[0]) for r in cur.fetchall()}
        for rp in repeats:
            if rp.seq not in inserted:
                result.redelivered += 1
                continue
            result.repeats += 1
            kind = rp.rated.event.kind.value
            if kind == "RETRACTION":
                continue  # a re-sent retraction is counted by its original's kind below
            adjustment = periods.adjustment(rp.period)
            t = totals.setdefault(
                (rp.licence_id, adjustment or rp.period, kind), Totals(currency=rp.rated.currency)
            )
            if rp.outcome == "DUPLICATE":
                t.duplicates += 1
            else:
                t.conflicts += 1

    def _insert_dead(
        self, conn: Connection[Any], dead: list[tuple[Dead, int]], result: BatchResult
    ) -> None:
        if not dead:
            return
        with conn.cursor() as cur:
            with cur.copy(f"COPY ledger_batch_dead ({', '.join(DEAD_COLUMNS)}) FROM STDIN") as cp:
                for d, seq in dead:
                    cp.write_row(
                        (
                            d.source_topic,
                            d.source_partition,
                            d.source_offset,
                            seq,
                            d.reason,
                            d.detail,
                            d.decided_by,
                            d.vendor_id,
                            d.event_id,
                            d.licence_id,
                            d.period,
                            d.original,
                            d.received_at,
                            d.published_at,
                        )
                    )
            cur.execute(
                f"INSERT INTO dead_letters ({', '.join(DEAD_COLUMNS)}) "
                f"SELECT {', '.join(DEAD_COLUMNS)} FROM ledger_batch_dead "
                "ORDER BY arrival_seq ON CONFLICT DO NOTHING RETURNING 1"
            )
            added = len(cur.fetchall())
        result.dead += added
        result.redelivered += len(dead) - added

    def _add_totals(
        self, conn: Connection[Any], totals: dict[tuple[str, str, str], Totals]
    ) -> None:
        if not totals:
            return
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY ledger_batch_totals ({', '.join(TOTAL_COLUMNS)}) FROM STDIN"
            ) as cp:
                for (licence_id, period, kind), t in totals.items():
                    cp.write_row(
                        (
                            licence_id,
                            period,
                            kind,
                            t.currency,
                            t.events,
                            t.units_priced,
                            t.units_held,
                            t.units_excluded,
                            t.estimated_amount,
                            t.held_amount,
                            t.duplicates,
                            t.conflicts,
                            t.retracted,
                            t.adjustments,
                        )
                    )
            summed = ", ".join(f"{c} = ledger_totals.{c} + EXCLUDED.{c}" for c in TOTAL_COLUMNS[4:])
            cur.execute(
                f"INSERT INTO ledger_totals ({', '.join(TOTAL_COLUMNS)}) "
                f"SELECT {', '.join(TOTAL_COLUMNS)} FROM ledger_batch_totals "
                "ORDER BY licence_id, period, kind "
                f"ON CONFLICT (licence_id, period, kind) DO UPDATE SET {summed}, "
                "currency = CASE WHEN ledger_totals.currency = '' THEN EXCLUDED.currency "
                "ELSE ledger_totals.currency END, updated_at = now()"
            )
