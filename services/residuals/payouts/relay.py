"""Publishes payout changes from ``payout_events`` to ``residuals.payouts.v1``.

The table is a transactional outbox: a payout change and its event commit together, and
this relay sends unpublished rows in sequence order with an idempotent producer, marking
them only after Kafka acknowledged every record of the batch. A crash in between re-sends
the batch (at-least-once; consumers de-duplicate on ``PayoutEvent.sequence``). Records are
keyed by payee id so one payee's changes stay in order, and carry the W3C trace context
of the operation that made the change.

A row Kafka refuses whatever is retried (larger than the topic's ``max.message.bytes``, a
payload that is not a ``PayoutEvent``) is set aside instead of being retried forever: the
failed batch is bisected down to it (:mod:`residuals.platform.setaside`), it is stored in
the quarantine table (consumer ``payouts-relay``) and marked ``quarantined_at``, and the
rows after it are published in order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

from confluent_kafka import KafkaException
from google.protobuf.message import DecodeError

from residuals.payouts import store
from residuals.platform.config import KafkaSettings
from residuals.platform.kafka import (
    AcknowledgedProducer,
    DeliveryFailed,
    topic_name,
    trace_headers,
)
from residuals.platform.postgres import Database
from residuals.platform.quarantine import describe
from residuals.platform.setaside import RecordRefused, is_permanent, publish_in_order, set_aside
from residuals.platform.topics import PAYOUTS
from residuals.v1 import payouts_pb2

log = logging.getLogger(__name__)

#: The consumer name of rows the relay sets aside (quarantine table, metric).
CONSUMER = "payouts-relay"
Row = tuple[int, str, bytes]  # sequence, payee id, PayoutEvent bytes


class PayoutRelay:
    def __init__(
        self,
        db: Database,
        kafka: KafkaSettings,
        *,
        producer: AcknowledgedProducer | None = None,
        batch: int = 500,
    ) -> None:
        self.db = db
        self.topic = topic_name(kafka, PAYOUTS)
        self.producer = producer or AcknowledgedProducer(kafka, client_id="payouts-relay")
        self.batch = batch

    def publish_once(self, timeout: float = 30.0) -> int:
        """Publish one batch of unpublished events; returns how many were published."""
        with self.db.connection() as conn:
            rows = store.unpublished_events(conn, self.batch)

            def send(chunk: Sequence[Row]) -> None:
                self._send(chunk, timeout)
                store.mark_published(conn, [r[0] for r in chunk])

            def aside(row: Row, error: str) -> None:
                set_aside(
                    conn,
                    consumer=CONSUMER,
                    table="payout_events",
                    id_column="sequence",
                    row_id=row[0],
                    topic=self.topic,
                    key=row[1].encode("utf-8", "backslashreplace"),
                    value=row[2],
                    headers=(),
                    error=error,
                )
                log.error(
                    "payout event set aside: Kafka refuses it; later events go on",
                    extra={"sequence": row[0], "error": error},
                )

            return publish_in_order(rows, send, aside)

    def _send(self, rows: Sequence[Row], timeout: float) -> None:
        """Produce ``rows`` and wait for every acknowledgement; :class:`RecordRefused`
        when Kafka refuses them for good, RuntimeError for anything to retry later."""
        for index, (_sequence, payee_id, payload) in enumerate(rows):
            try:
                self.producer.send(
                    self.topic, payee_id.encode("utf-8"), payload, headers=_trace_headers(payload)
                )
            except (KafkaException, DecodeError, UnicodeEncodeError) as error:
                if isinstance(error, KafkaException) and not is_permanent(error.args[0]):
                    raise
                with contextlib.suppress(DeliveryFailed):  # the refused record decides
                    self.producer.acknowledge(timeout)  # those before it go out
                raise RecordRefused(describe(error), culprit=index) from None
        self._acknowledged(timeout)

    def _acknowledged(self, timeout: float) -> None:
        try:
            self.producer.acknowledge(timeout)
        except DeliveryFailed as failed:
            if not failed.unacknowledged and all(is_permanent(e) for e in failed.errors):
                raise RecordRefused(describe(str(failed.errors[0]))) from None
            raise RuntimeError(f"payout events not acknowledged by Kafka: {failed}") from None

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
        self.producer.close(5.0)


def _trace_headers(payload: bytes) -> list[tuple[str, str | bytes | None]]:
    """The W3C trace context the event carries; DecodeError if it is not a PayoutEvent."""
    return [*trace_headers(payouts_pb2.PayoutEvent.FromString(payload).trace)]
