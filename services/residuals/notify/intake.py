"""Consuming the five source topics: records -> events, deliveries and rejections, once.

Runs inside :class:`~residuals.platform.sink.KafkaPostgresSink`: each batch's events
(:func:`residuals.notify.store.record_events`, once per batch), the deliveries they
queue and the vendors' rejection rows are written in the transaction that advances the
consumer's offsets, so a crash re-reads the batch and a re-read stores nothing twice
(webhook-ids and dead-letter positions are unique). A record that cannot become an
event is set aside in ``quarantine`` (consumer ``notify``) in the same transaction and
never stops its partition; a tombstone (a compacted licence deleted) is only counted.
After the commit the dispatcher is poked for the endpoints given work and
WatchRejections streams are woken.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from residuals.alerts.consumer import published_at
from residuals.notify import rejections, sources
from residuals.notify.events import NewEvent
from residuals.notify.metrics import NotifyMetrics
from residuals.notify.store import Recorded, record_events
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import topic_name
from residuals.platform.quarantine import Pending, Quarantined
from residuals.platform.topics import ALERTS, APPROVALS, LICENCES, PAYOUTS, USAGE_DLQ, Topic
from residuals.v1 import alerts_pb2, approvals_pb2, licence_pb2, payouts_pb2, usage_pb2

log = logging.getLogger(__name__)

CONSUMER = "notify"

#: The catalogue topics read, and which mapping each record gets.
SOURCES: tuple[tuple[Topic, str], ...] = (
    (ALERTS, sources.ALERT),
    (LICENCES, sources.LICENCE),
    (APPROVALS, sources.APPROVAL),
    (PAYOUTS, sources.PAYOUT),
    (USAGE_DLQ, sources.DEAD_LETTER),
)


def source_topics(kafka: KafkaSettings) -> dict[str, str]:
    """Physical topic name -> source kind."""
    return {topic_name(kafka, topic): kind for topic, kind in SOURCES}


@dataclass
class Taken:
    """What one ``apply`` stored, for ``after_commit``."""

    recorded: Recorded = field(default_factory=Recorded)
    rejections: list[rejections.StoredRejection] = field(default_factory=list)
    set_aside: int = 0
    tombstones: dict[str, int] = field(default_factory=dict)


class NotifyIntake:
    """``apply``/``after_commit`` of the notify sink."""

    def __init__(
        self,
        topics: Mapping[str, str],
        *,
        metrics: NotifyMetrics,
        quarantine: Pending | None = None,
        on_queued: Callable[[set[str]], None] | None = None,
        on_rejections: Callable[[], None] | None = None,
    ) -> None:
        self.topics = dict(topics)
        self.metrics = metrics
        self.quarantine = quarantine or Pending()
        self.on_queued = on_queued
        self.on_rejections = on_rejections

    def apply(self, conn: Connection[Any], records: Sequence[Any]) -> Taken:
        taken = Taken()
        events: list[NewEvent] = []
        rows: list[sources.RejectionRow] = []
        bad: list[Quarantined] = []
        for record in records:
            kind = self.topics.get(record.topic() or "")
            if kind is None:  # not subscribed to; cannot happen, never stops the line
                bad.append(Quarantined.of(CONSUMER, record, "record of an unexpected topic"))
                continue
            if record.value() is None and kind == sources.LICENCE:
                taken.tombstones[kind] = taken.tombstones.get(kind, 0) + 1
                continue
            try:
                found, row = self._map(conn, kind, record)
            except sources.Unusable as error:
                log.warning(
                    "record set aside: no event",
                    extra={
                        "topic": record.topic(),
                        "partition": record.partition(),
                        "offset": record.offset(),
                        "error": str(error),
                    },
                )
                bad.append(Quarantined.of(CONSUMER, record, error))
                continue
            events.extend(found)
            if row is not None:
                rows.append(row)
        taken.rejections = rejections.store(conn, rows)
        taken.recorded = record_events(conn, events)
        if bad:
            self.quarantine.store(conn, bad)
            taken.set_aside = len(bad)
        return taken

    def _map(
        self, conn: Connection[Any], kind: str, record: Any
    ) -> tuple[list[NewEvent], sources.RejectionRow | None]:
        message = sources.decode(kind, record.value())
        fallback = sources.record_time(record)
        if kind == sources.ALERT:
            assert isinstance(message, alerts_pb2.Alert)
            origin = published_at(record.headers())
            return sources.alert_events(message, fallback=fallback, origin_at=origin), None
        if kind == sources.LICENCE:
            assert isinstance(message, licence_pb2.Licence)
            return sources.licence_events(message, fallback=fallback), None
        if kind == sources.APPROVAL:
            assert isinstance(message, approvals_pb2.Approval)
            return sources.approval_events(message, fallback=fallback), None
        if kind == sources.PAYOUT:
            assert isinstance(message, payouts_pb2.PayoutEvent)
            payee = sources.payout_payee(message)
            if payee is None:
                return [], None
            return sources.payout_events(message, fallback=fallback), None
        assert isinstance(message, usage_pb2.DeadLetter)
        row, event = sources.rejection(
            message,
            dlq_topic=str(record.topic()),
            dlq_partition=int(record.partition()),
            dlq_offset=int(record.offset()),
            fallback=fallback,
        )
        return [event], row

    def after_commit(self, records: Sequence[Any], results: Sequence[Taken]) -> None:
        endpoints: set[str] = set()
        stored_rejections = False
        for taken in results:
            for event_type, count in taken.recorded.new_by_type.items():
                self.metrics.events.labels(event_type).inc(count)
            if taken.recorded.queued:
                self.metrics.queued.inc(taken.recorded.queued)
            endpoints |= taken.recorded.endpoints
            for stored in taken.rejections:
                self.metrics.rejections.labels(sources.reason_name(stored.reason)).inc()
                stored_rejections = True
            for kind, count in taken.tombstones.items():
                self.metrics.skipped.labels(kind).inc(count)
        if endpoints and self.on_queued is not None:
            self.on_queued(endpoints)
        if stored_rejections and self.on_rejections is not None:
            self.on_rejections()
