"""Consuming ``residuals.alerts.v1``: decode, continue the trace, store once.

Runs inside :class:`~residuals.platform.sink.KafkaPostgresSink`, so each batch of
alerts is stored in the transaction that advances the consumer's offsets. Each record
gets a CONSUMER span whose parent is the trace context in the record's headers (the
meter's span, itself a child of the SDK's or gateway's), so the alert joins the trace of
the usage that caused it; the span's context is kept in the stored alert (``trace``) and
log lines about the alert carry its trace id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from psycopg import Connection

from residuals.alerts import store
from residuals.alerts.metrics import AlertMetrics
from residuals.alerts.query import severity_name
from residuals.alerts.store import Incoming, InvalidAlert, Raised
from residuals.codecs.timestamps import to_datetime
from residuals.domain.bounds import printable
from residuals.platform.pipeline_metrics import pipeline_metrics
from residuals.platform.quarantine import Pending, Quarantined
from residuals.platform.telemetry import extract_kafka_headers, trace_context_message
from residuals.v1 import alerts_pb2, common_pb2

log = logging.getLogger(__name__)

#: When the triggering usage was published: the meter copies the usage record's broker
#: timestamp onto every record it produces as epoch milliseconds (the ledger reads the same
#: header). ``residuals-received-at`` (RFC 3339, the gateway's receipt) is accepted too.
PUBLISHED_AT_HEADER = "residuals-published-at"
RECEIVED_AT_HEADER = "residuals-received-at"


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def published_at(headers: Any) -> datetime | None:
    """When the usage behind this alert was published, from the record headers, if known."""
    millis = _header(headers, PUBLISHED_AT_HEADER)
    if millis:
        try:
            return datetime.fromtimestamp(int(millis) / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            pass
    text = _header(headers, RECEIVED_AT_HEADER)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latency_origin(change_published: datetime | None, alert: alerts_pb2.Alert) -> tuple[str, float]:
    """(origin label, start time as epoch seconds) for latency metrics."""
    if change_published is not None:
        return "usage_published", change_published.timestamp()
    return "alert_raised", to_datetime(alert.raised_at).timestamp()


@dataclass
class Ingested:
    """What one ``apply`` stored, for ``after_commit``: new alerts and their spans."""

    raised: list[Raised] = field(default_factory=list)
    spans: dict[str, Span] = field(default_factory=dict)
    invalid: int = 0
    duplicates: int = 0


class AlertIngest:
    """``apply``/``after_commit`` for the sink; ``on_raised`` hears of new alerts after commit.

    A record that is not a usable alert (a tombstone, undecodable bytes, an invalid alert)
    is quarantined as consumer ``alerts`` in the batch's transaction and counted in
    ``residuals_alerts_invalid_total``.
    """

    def __init__(
        self,
        *,
        metrics: AlertMetrics,
        tracer: trace.Tracer | None = None,
        on_raised: Callable[[list[Raised]], None] | None = None,
        clock: Callable[[], float] | None = None,
        consumer: str = "alerts",
        quarantine: Pending | None = None,
    ) -> None:
        import time

        self.metrics = metrics
        self.pipeline = pipeline_metrics()
        self.tracer = tracer or trace.get_tracer(__name__)
        self.on_raised = on_raised
        self.clock = clock or time.time
        self.consumer = consumer
        #: Where set-aside records go until the sink's transaction commits.
        self.quarantine = quarantine or Pending()

    def apply(self, conn: Connection[Any], records: Sequence[Any]) -> Ingested:
        ingested = Ingested()
        incoming: list[Incoming] = []
        spans: list[Span] = []
        bad: list[Quarantined] = []
        for record in records:
            parent = extract_kafka_headers(record.headers())
            span = self.tracer.start_span(
                f"{record.topic()} process",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation": "process",
                    "messaging.destination.name": record.topic(),
                    "messaging.kafka.partition": record.partition(),
                    "messaging.kafka.offset": record.offset(),
                },
            )
            spans.append(span)
            value = record.value()
            try:
                if value is None:
                    raise InvalidAlert("tombstone (null value)")
                alert = alerts_pb2.Alert.FromString(value)
            except (DecodeError, InvalidAlert) as error:
                span.set_attribute("residuals.alert.invalid", "undecodable")
                bad.append(Quarantined.of(self.consumer, record, error))
                continue
            span.set_attribute("residuals.alert_id", printable(alert.alert_id, 64))
            context = trace.set_span_in_context(span)
            incoming.append(
                Incoming(
                    alert,
                    published_at(record.headers()),
                    trace_context_message(context=context),
                    record,
                )
            )
            ingested.spans[alert.alert_id] = span
        try:
            raised, duplicates, invalid = store.store_raised(conn, incoming)
            for item, reason in invalid:
                bad.append(Quarantined.of(self.consumer, item.record, reason))
            if bad:
                self.quarantine.store(conn, bad)
        finally:
            for span in spans:
                span.end()
        ingested.raised, ingested.invalid, ingested.duplicates = raised, len(bad), duplicates
        return ingested

    def after_commit(self, records: Sequence[Any], results: Sequence[Ingested]) -> None:
        now = self.clock()
        raised: list[Raised] = []
        for ingested in results:
            if ingested.invalid:
                self.metrics.invalid.inc(ingested.invalid)
            if ingested.duplicates:
                self.metrics.duplicates.inc(ingested.duplicates)
            for item in ingested.raised:
                self._stored(item, ingested.spans.get(item.alert.alert_id), now)
                raised.append(item)
        if raised and self.on_raised is not None:
            self.on_raised(raised)

    def _stored(self, item: Raised, span: Span | None, now: float) -> None:
        alert = item.alert
        kind = item.change.key.kind
        severity = severity_name(alert.severity)
        self.metrics.raised.labels(kind, severity).inc()
        self.metrics.changes.labels("raised").inc()
        if item.change.published_at is not None:
            self.pipeline.latency.labels("alert_stored").observe(
                max(0.0, now - item.change.published_at.timestamp())
            )
        level = logging.INFO if alert.severity >= common_pb2.SEVERITY_HIGH else logging.DEBUG
        if span is not None:
            with trace.use_span(span, end_on_exit=False):
                log.log(level, "alert stored", extra=_log_fields(item))
        else:
            log.log(level, "alert stored", extra=_log_fields(item))


def _log_fields(item: Raised) -> dict[str, Any]:
    alert = item.alert
    return {
        "alert_id": alert.alert_id,
        "kind": item.change.key.kind,
        "severity": severity_name(alert.severity),
        "licence_id": alert.licence_id,
        "talent_id": alert.talent_id,
        "vendor_id": alert.vendor_id,
        "sequence": item.change.sequence,
        "suspends": item.suspend,
    }
