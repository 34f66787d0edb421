"""Kafka transport: produce envelopes straight to ``residuals.usage.v1``.

The producer is idempotent with ``acks=all`` (librdkafka retries inside one producer
session can neither lose nor duplicate a record, and order per partition holds). Records
follow the shared wire convention: key = licence id (a retraction: its original's licence
id, else the vendor id), value = ``SignedUsageEvent`` bytes, headers ``traceparent`` /
``tracestate`` and ``residuals-vendor``. The meter authenticates the vendor by verifying
the Ed25519 signature with the key registered for that vendor; the receive time is the
broker timestamp.

A broker that is not on this machine must be reached over TLS (``security.protocol``
``SASL_SSL`` or ``SSL`` in the config) unless ``insecure=True``; see
:mod:`residuals_sdk.transports.security`.

When the broker is unreachable librdkafka keeps the records queued until
``message.timeout.ms``; then their delivery reports fail and the client re-produces them
after a backoff. A fatal producer error (the idempotent session cannot continue) makes the
transport build a new producer; events in flight are re-sent from the spool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from residuals_sdk import tracing
from residuals_sdk._proto import usage_pb2
from residuals_sdk.report import DeliveryStatus
from residuals_sdk.spool import SpooledEvent
from residuals_sdk.transports.base import Outcome
from residuals_sdk.transports.security import check_kafka_security

log = logging.getLogger("residuals_sdk.kafka")

USAGE_TOPIC = "residuals.usage.v1"
VENDOR_HEADER = "residuals-vendor"

#: Defaults the SDK insists on (idempotence, acks=all) plus sensible batching.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "message.timeout.ms": 60_000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 2_000,
    "queue.buffering.max.messages": 200_000,
    "client.id": "residuals-sdk",
}
#: Settings a caller may not override: they are what makes delivery exactly-once per session.
REQUIRED = {"enable.idempotence": True, "acks": "all"}

#: Errors that no retry can fix: the record itself is unacceptable.
_PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,
}


class KafkaTransport:
    """Produces to the usage topic; outcomes come from delivery reports in :meth:`poll`."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        vendor_id: str,
        *,
        topic: str = USAGE_TOPIC,
        config: dict[str, Any] | None = None,
        insecure: bool = False,
    ) -> None:
        for key, value in REQUIRED.items():
            if config and key in config and config[key] not in (value, str(value).lower()):
                raise ValueError(f"{key} must stay {value!r} (it is what prevents loss/duplicates)")
        check_kafka_security(bootstrap_servers, config or {}, insecure=insecure)
        self.topic = topic
        self.vendor_id = vendor_id
        self._config = {"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS}
        self._config.update(config or {})
        self._config.update(REQUIRED)
        self._config["error_cb"] = self._on_error
        self._config.setdefault("logger", logging.getLogger("residuals_sdk.kafka.librdkafka"))
        self._outcomes: list[Outcome] = []
        self._fatal = threading.Event()
        self._producer = Producer(self._config)
        self._vendor_header = (VENDOR_HEADER, vendor_id.encode("utf-8"))

    # --- callbacks (run inside Producer.poll on the client's sender thread) -------------

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("fatal Kafka producer error, rebuilding the producer: %s", error)
            self._fatal.set()
        else:
            log.warning("Kafka producer: %s", error)

    def _delivered(self, event: SpooledEvent) -> Any:
        def report(error: KafkaError | None, message: Any) -> None:
            if error is None:
                self._outcomes.append(
                    Outcome(
                        event,
                        DeliveryStatus.DELIVERED,
                        partition=message.partition(),
                        offset=message.offset(),
                    )
                )
            elif error.code() in _PERMANENT:
                self._outcomes.append(
                    Outcome(event, DeliveryStatus.REJECTED, reason=error.name(), detail=error.str())
                )
            else:
                self._outcomes.append(Outcome.retry(event, f"{error.name()}: {error.str()}"))

        return report

    # --- Transport ----------------------------------------------------------------------

    def headers(self, event: SpooledEvent) -> list[tuple[str, str | bytes | None]]:
        trace = usage_pb2.SignedUsageEvent.FromString(event.envelope).trace
        return [*tracing.kafka_headers(trace), self._vendor_header]

    def send(self, events: Sequence[SpooledEvent]) -> Sequence[SpooledEvent]:
        for index, event in enumerate(events):
            try:
                self._producer.produce(
                    self.topic,
                    value=event.envelope,
                    key=event.routing_key.encode("utf-8"),
                    headers=self.headers(event),
                    on_delivery=self._delivered(event),
                )
            except BufferError:
                return events[index:]  # local queue full: the client retries shortly
        return ()

    def poll(self, timeout: float) -> list[Outcome]:
        if self._fatal.is_set():
            self._rebuild()
        self._producer.poll(timeout)
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def _rebuild(self) -> None:
        """Replace a producer in a fatal state; its queued records come back as retries."""
        old = self._producer
        self._fatal.clear()
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)  # purged records report _PURGE_QUEUE/_PURGE_INFLIGHT: retried
        self._producer = Producer(self._config)

    def close(self) -> None:
        """Drop records not yet sent (they stay in the spool); serve pending reports."""
        self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        self._producer.poll(0)
