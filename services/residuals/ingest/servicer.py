"""``residuals.v1.IngestService``: PublishBatch and PublishStream.

Per request: authenticate (the :class:`~residuals.platform.auth.AuthInterceptor` did;
only vendor principals may publish, and the vendor is the key's, never the payload's),
enforce the batch limits and the vendor's rate, split the request into events
(:mod:`.wire`), judge each (:mod:`.admission`), write accepted events to the usage topic
and rejected ones to the dead-letter topic, wait for Kafka's acknowledgement of all of
them, and only then answer, per event.

Failures of the whole request, and what the client should do:

* RESOURCE_EXHAUSTED without retry delay: the batch is over the count or byte limit;
  split it. With ``retry-after`` (and google.rpc.RetryInfo): the vendor's rate limit;
  retry the same batch after the delay.
* UNAVAILABLE: Kafka did not acknowledge in time, or a directory lookup failed; retry the
  same batch (events that did land are answered DUPLICATE or de-duplicated downstream).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc
import psycopg
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from psycopg_pool import PoolTimeout

from residuals.codecs import receipt
from residuals.codecs.deadletters import dead_letter, reason_to_proto, record_headers
from residuals.codecs.receipt import RECEIPT_HEADER
from residuals.domain.bounds import printable
from residuals.domain.vocabulary import RejectReason
from residuals.ingest.admission import Admission, Status, Verdict
from residuals.ingest.metrics import IngestMetrics, default_metrics
from residuals.ingest.ratelimit import Decision, VendorRateLimiter
from residuals.ingest.wire import SplitRequest, split_events
from residuals.platform.auth import Role, require_role
from residuals.platform.kafka import AcknowledgedProducer, Outgoing, trace_headers
from residuals.platform.telemetry import inject_kafka_headers
from residuals.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)

SERVICE = "residuals.v1.IngestService"
VENDOR_HEADER = "residuals-vendor"
#: What a failing directory raises: the request is retried (UNAVAILABLE), not the event
#: dead-lettered (connection loss, a pool that timed out, a server going away).
DIRECTORY_UNAVAILABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    TimeoutError,
    ConnectionError,
)

_STATUS = {
    Status.ACCEPTED: ingest_pb2.PUBLISH_STATUS_ACCEPTED,
    Status.DUPLICATE: ingest_pb2.PUBLISH_STATUS_DUPLICATE,
    Status.REJECTED: ingest_pb2.PUBLISH_STATUS_REJECTED,
}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Limits:
    max_batch_events: int
    max_batch_bytes: int
    stream_max_wait_seconds: float
    ack_timeout_seconds: float


@dataclass(frozen=True)
class _Status:
    """A ``grpc.Status`` for ``context.abort_with_status`` (details + extra trailers)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")


def _abort_rate_limited(
    context: grpc.ServicerContext, retry_after: float, message: str
) -> NoReturn:
    """RESOURCE_EXHAUSTED with google.rpc.RetryInfo and a plain ``retry-after`` trailer."""
    seconds = max(0.001, retry_after)
    delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    info = error_details_pb2.RetryInfo(retry_delay=delay)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    status.details.add().Pack(info)
    context.abort_with_status(
        _Status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            message,
            (
                ("grpc-status-details-bin", status.SerializeToString()),
                ("retry-after", f"{seconds:.3f}"),
            ),
        )
    )
    raise AssertionError("grpc context.abort_with_status returned")


class IngestService:
    """The servicer; methods take and return raw bytes (see :func:`register`)."""

    def __init__(
        self,
        *,
        admission: Admission,
        producer: AcknowledgedProducer,
        limiter: VendorRateLimiter,
        limits: Limits,
        usage_topic: str,
        dlq_topic: str,
        metrics: IngestMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        receipt_key: bytes | None = None,
    ) -> None:
        self.admission = admission
        self.producer = producer
        self.limiter = limiter
        self.limits = limits
        self.usage_topic = usage_topic
        self.dlq_topic = dlq_topic
        self.metrics = metrics or default_metrics()
        self.clock = clock
        #: Stamps accepted events with the receipt time (:mod:`residuals.codecs.receipt`).
        self.receipt_key = receipt_key

    # --- RPCs ---------------------------------------------------------------------------

    def PublishBatch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        vendor_id = self._vendor()
        split = self._split(request, context)
        decision = self.limiter.acquire(vendor_id, self._count(split))
        if not decision.allowed:
            self._refuse_rate(context, vendor_id, decision)
        results = self._publish(vendor_id, split, 0, context)
        return ingest_pb2.PublishBatchResponse(results=results).SerializeToString()

    def PublishStream(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> bytes:
        vendor_id = self._vendor()
        response = ingest_pb2.PublishStreamResponse()
        index = 0
        for request in request_iterator:
            split = self._split(request, context)
            count = self._count(split)
            decision = self.limiter.wait(vendor_id, count, self.limits.stream_max_wait_seconds)
            if not decision.allowed:
                self._refuse_rate(context, vendor_id, decision)
            for result in self._publish(vendor_id, split, index, context):
                if result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED:
                    response.accepted += 1
                elif result.status == ingest_pb2.PUBLISH_STATUS_DUPLICATE:
                    response.duplicates += 1
                else:
                    response.rejected += 1
                    response.rejections.append(result)
            index += count
        return response.SerializeToString()

    # --- steps --------------------------------------------------------------------------

    @staticmethod
    def _vendor() -> str:
        principal = require_role(Role.VENDOR)
        assert principal.vendor_id is not None  # Principal guarantees it for vendors
        return principal.vendor_id

    @staticmethod
    def _count(split: SplitRequest) -> int:
        return len(split.events) + (1 if split.damaged else 0)

    def _split(self, request: bytes, context: grpc.ServicerContext) -> SplitRequest:
        limit = self.limits.max_batch_bytes
        if len(request) > limit:
            self.metrics.refused.labels("batch_limit").inc()
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(request):,} bytes exceeds the {limit:,}-byte batch limit;"
                " send smaller batches",
            )
        split = split_events(request)
        count = self._count(split)
        if count > self.limits.max_batch_events:
            self.metrics.refused.labels("batch_limit").inc()
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {count:,} events exceeds the limit of"
                f" {self.limits.max_batch_events:,}; send smaller batches",
            )
        self.metrics.batch_events.observe(count)
        return split

    def _refuse_rate(
        self, context: grpc.ServicerContext, vendor_id: str, decision: Decision
    ) -> NoReturn:
        self.metrics.refused.labels("rate_limit").inc()
        if math.isinf(decision.retry_after):
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "batch larger than the vendor's burst allowance; send smaller batches",
            )
        _abort_rate_limited(
            context,
            decision.retry_after,
            f"vendor {vendor_id} is over its publish rate; retry after {decision.retry_after:.3f}s",
        )

    def _judge(self, vendor_id: str, split: SplitRequest, received_at: datetime) -> list[Verdict]:
        verdicts: list[Verdict] = []
        accepted_here: dict[str, bytes] = {}
        for raw in split.events:
            verdict = self._judge_one(raw, vendor_id, received_at)
            if verdict.status is Status.ACCEPTED:
                if accepted_here.get(verdict.event_id) == verdict.digest:
                    verdict = Verdict(
                        Status.DUPLICATE,
                        raw,
                        event_id=verdict.event_id,
                        licence_id=verdict.licence_id,
                        routing_key=verdict.routing_key,
                        digest=verdict.digest,
                        trace=verdict.trace,
                    )
                else:
                    accepted_here[verdict.event_id] = verdict.digest
            verdicts.append(verdict)
        if split.damaged:
            verdicts.append(
                Verdict(
                    Status.REJECTED,
                    split.damaged,
                    RejectReason.MALFORMED,
                    f"request framing broken ({split.error}); the remaining"
                    f" {len(split.damaged):,} bytes could not be read as events",
                )
            )
        return verdicts

    def _judge_one(self, raw: bytes, vendor_id: str, received_at: datetime) -> Verdict:
        """One event's verdict. A directory that cannot answer fails the request (the
        client retries: UNAVAILABLE); any other failure is this event's alone: it is
        dead-lettered UNPROCESSABLE and the rest of the batch goes on."""
        try:
            return self.admission.judge(raw, vendor_id, received_at)
        except DIRECTORY_UNAVAILABLE:
            raise
        except Exception as error:
            log.exception("event could not be judged", extra={"vendor_id": vendor_id})
            detail = printable(f"the gateway failed on this event: {type(error).__name__}: {error}")
            return Verdict(Status.REJECTED, raw, RejectReason.UNPROCESSABLE, detail)

    def _publish(
        self,
        vendor_id: str,
        split: SplitRequest,
        base_index: int,
        context: grpc.ServicerContext,
    ) -> list[ingest_pb2.PublishResult]:
        received_at = self.clock()
        try:
            verdicts = self._judge(vendor_id, split, received_at)
        except DIRECTORY_UNAVAILABLE:
            log.exception("directory lookup failed", extra={"vendor_id": vendor_id})
            self.metrics.refused.labels("directory").inc()
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "signing keys or licences are temporarily unavailable; retry the batch",
            )
        records = [self._record(vendor_id, v, received_at) for v in verdicts]
        to_send = [r for r in records if r is not None]
        started = time.perf_counter()
        receipt = self.producer.send_group(
            to_send, give_up_at=time.monotonic() + self.limits.ack_timeout_seconds
        )
        acknowledged = receipt.wait(self.limits.ack_timeout_seconds)
        self.metrics.ack_seconds.observe(time.perf_counter() - started)
        if not acknowledged or receipt.errors:
            first = receipt.errors[0][1] if receipt.errors else "timed out"
            log.error(
                "Kafka did not acknowledge a publish",
                extra={"vendor_id": vendor_id, "records": len(to_send), "error": first},
            )
            self.metrics.refused.labels("kafka").inc()
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"Kafka did not acknowledge the batch ({first}); retry it: events already"
                " written are de-duplicated",
            )
        results = []
        for offset, verdict in enumerate(verdicts):
            if verdict.status is Status.ACCEPTED:
                self.admission.recent.remember(vendor_id, verdict.event_id, verdict.digest)
            reason = verdict.reason.value if verdict.reason else ""
            self.metrics.events.labels(verdict.status.value, reason).inc()
            result = ingest_pb2.PublishResult(
                index=base_index + offset,
                event_id=verdict.event_id,
                status=_STATUS[verdict.status],
                detail=verdict.detail,
            )
            if verdict.reason is not None:
                result.reason = reason_to_proto(verdict.reason)
            results.append(result)
        return results

    def _record(self, vendor_id: str, verdict: Verdict, received_at: datetime) -> Outgoing | None:
        """The Kafka record for a verdict: usage (accepted), dead letter (rejected), none."""
        stamp = rfc3339(received_at)
        context_headers = self._trace_headers(verdict.trace)
        if verdict.status is Status.ACCEPTED:
            headers: list[tuple[str, str | bytes | None]] = [
                *context_headers,
                (VENDOR_HEADER, vendor_id.encode("utf-8")),
            ]
            if self.receipt_key is not None:
                headers.append(
                    (RECEIPT_HEADER, receipt.stamp(self.receipt_key, received_at, verdict.raw))
                )
            return Outgoing(
                self.usage_topic, verdict.routing_key.encode("utf-8"), verdict.raw, headers
            )
        if verdict.status is Status.DUPLICATE:
            return None
        assert verdict.reason is not None
        original = verdict.raw
        detail = verdict.detail
        limit = self.admission.max_event_bytes
        if len(original) > limit:
            original = original[:limit]
            detail += f" (original truncated to its first {limit:,} bytes)"
        letter = dead_letter(
            verdict.reason,
            detail,
            original=original,
            received_at=received_at,
            vendor_id=vendor_id,
            event_id=verdict.event_id,
            licence_id=verdict.licence_id,
            trace=verdict.trace,
        )
        return Outgoing(
            self.dlq_topic,
            vendor_id.encode("utf-8"),
            letter.SerializeToString(),
            [*context_headers, *record_headers(letter, stamp)],
        )

    @staticmethod
    def _trace_headers(trace: common_pb2.TraceContext | None) -> list[tuple[str, bytes]]:
        """The event's own trace (from its envelope) if it has one, else this request's."""
        return trace_headers(trace) or inject_kafka_headers()


def register(service: IngestService, server: grpc.Server) -> None:
    """Add the service with byte-level request handling (see :mod:`.wire`)."""
    handlers: dict[str, Any] = {
        "PublishBatch": grpc.unary_unary_rpc_method_handler(
            service.PublishBatch, request_deserializer=None, response_serializer=None
        ),
        "PublishStream": grpc.stream_unary_rpc_method_handler(
            service.PublishStream, request_deserializer=None, response_serializer=None
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
