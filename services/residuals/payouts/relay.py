"""Publishes payout changes from ``payout_events`` to ``residuals.payouts.v1``.

The table is a transactional outbox: a payout change and its event commit together, and
this relay sends unpublished rows in sequence order with an idempotent producer, marking
them only after Kafka acknowledged every record of the batch. A crash in between re-sends
the batch (at-least-once; consumers de-duplicate on ``PayoutEvent.sequence``). Records are
keyed by payee id so one payee's changes stay in order, and carry the W3C trace context
of the operation that made the change.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from residuals.payouts import store
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import make_producer, topic_name
from residuals.platform.postgres import Database
from residuals.platform.topics import PAYOUTS
from residuals.v1 import payouts_pb2

log = logging.getLogger(__name__)


class PayoutRelay:
    def __init__(
        self, db: Database, kafka: KafkaSettings, *, producer: Any = None, batch: int = 500
    ) -> None:
        self.db = db
        self.topic = topic_name(kafka, PAYOUTS)
        self.producer = producer or make_producer(kafka, client_id="payouts-relay")
        self.batch = batch

    def publish_once(self, timeout: float = 30.0) -> int:
        """Publish one batch of unpublished events; returns how many were published."""
        with self.db.connection() as conn:
            rows = store.unpublished_events(conn, self.batch)
            if not rows:
                return 0
            errors: list[str] = []

            def delivered(err: Any, _msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))

            for _sequence, payee_id, payload in rows:
                event = payouts_pb2.PayoutEvent.FromString(payload)
                headers: list[tuple[str, str | bytes | None]] = []
                if event.trace.traceparent:
                    headers.append(("traceparent", event.trace.traceparent.encode()))
                    if event.trace.tracestate:
                        headers.append(("tracestate", event.trace.tracestate.encode()))
                self.producer.produce(
                    self.topic,
                    key=payee_id.encode("utf-8"),
                    value=payload,
                    headers=headers,
                    on_delivery=delivered,
                )
            remaining = self.producer.flush(timeout)
            if remaining or errors:
                raise RuntimeError(
                    f"payout events not acknowledged by Kafka: {remaining} pending, "
                    f"errors {errors[:3]}"
                )
            store.mark_published(conn, [r[0] for r in rows])
            return len(rows)

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        while not stop.is_set():
            try:
                published = self.publish_once()
            except Exception:
                log.exception("payout relay failed; retrying")
                published = 0
                stop.wait(max(poll_seconds, 1.0))
            if not published:
                stop.wait(poll_seconds)
        self.producer.flush(5.0)
