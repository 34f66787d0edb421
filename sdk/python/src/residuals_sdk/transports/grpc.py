"""gRPC transport: ``IngestService.PublishBatch`` calls to the ingest gateway.

For vendors that cannot reach Kafka. The gateway authenticates the API key (metadata
``authorization: Bearer rsd_<key_id>_<secret>``), checks every event and answers per event
only after Kafka acknowledged the accepted ones, so ACCEPTED means durable. Per-event
answers are final (ACCEPTED, DUPLICATE, REJECTED with a reason); a failed call (gateway
down, deadline, rate limit) is retried with backoff, never dropped.

Batching adapts to load: a batch is started whenever a call slot is free
(``max_concurrent_calls``), with everything queued up to ``max_batch_events`` /
``max_batch_bytes``; while calls are in flight, new events accumulate into the next batch.
The request is assembled from the spooled envelope bytes as they are (field 1 of
``PublishBatchRequest``, length-delimited), so what was signed is exactly what is sent.
A RESOURCE_EXHAUSTED answer without a retry delay means the batch exceeded the gateway's
batch limits: the transport halves its batch size and re-sends.

The channel is TLS (system trust store, or the ``credentials`` given) unless the gateway
is on this machine or ``insecure=True`` (see :mod:`residuals_sdk.transports.security`).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from residuals_sdk import tracing
from residuals_sdk._proto import common_pb2, ingest_pb2, usage_pb2
from residuals_sdk.report import DeliveryStatus
from residuals_sdk.spool import SpooledEvent
from residuals_sdk.transports.base import Outcome
from residuals_sdk.transports.security import grpc_channel_credentials

log = logging.getLogger("residuals_sdk.grpc")

PUBLISH_BATCH = "/residuals.v1.IngestService/PublishBatch"
DEFAULT_MAX_BATCH_EVENTS = 500
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024
_REASON_PREFIX = "REJECT_REASON_"
_TRANSIENT_LOG = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_batch(envelopes: Sequence[bytes]) -> bytes:
    """``PublishBatchRequest`` bytes carrying the envelopes verbatim (field 1, repeated)."""
    return b"".join(b"\x0a" + _varint(len(e)) + e for e in envelopes)


def _retry_after(call: grpc.Call | Any) -> float:
    """The server's ``retry-after`` (seconds) from trailing metadata, else 0."""
    try:
        metadata = call.trailing_metadata() or ()
    except Exception:  # a failed call may not have metadata at all
        return 0.0
    for key, value in metadata:
        if key == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return 0.0
    return 0.0


def reason_name(value: int) -> str:
    """``REJECT_REASON_BAD_SIGNATURE`` → ``BAD_SIGNATURE``."""
    try:
        name = common_pb2.RejectReason.Name(common_pb2.RejectReason.ValueType(value))
    except ValueError:
        return f"REASON_{value}"
    return name.removeprefix(_REASON_PREFIX)


@dataclass
class _Call:
    events: list[SpooledEvent]
    future: Any


class GrpcTransport:
    """Sends batches to the gateway; outcomes are collected in :meth:`poll`."""

    name = "grpc"

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_concurrent_calls: int = 2,
        call_timeout: float = 30.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required (rsd_<key_id>_<secret>)")
        if max_batch_events < 1 or max_batch_bytes < 1024 or max_concurrent_calls < 1:
            raise ValueError("batch limits and concurrency must be positive")
        options = [
            ("grpc.max_send_message_length", max_batch_bytes + 64 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            *channel_options,
        ]
        chosen = grpc_channel_credentials(target, credentials, insecure=insecure)
        #: Whether the channel is encrypted (TLS).
        self.secure = chosen is not None
        self._channel = (
            grpc.secure_channel(target, chosen, options=options)
            if chosen is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._publish = self._channel.unary_unary(
            PUBLISH_BATCH,
            request_serializer=lambda raw: raw,
            response_deserializer=ingest_pb2.PublishBatchResponse.FromString,
        )
        self._auth = ("authorization", f"Bearer {api_key}")
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.max_concurrent_calls = max_concurrent_calls
        self.call_timeout = call_timeout
        self._queue: deque[SpooledEvent] = deque()
        self._active: dict[int, _Call] = {}
        self._done: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._next_call = 0

    # --- Transport ----------------------------------------------------------------------

    def send(self, events: Sequence[SpooledEvent]) -> Sequence[SpooledEvent]:
        self._queue.extend(events)
        return ()

    def poll(self, timeout: float) -> list[Outcome]:
        self._start_calls()
        deadline = time.monotonic() + timeout
        finished: list[int] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                finished.append(self._done.get(timeout=max(0.0, remaining)))
            except queue.Empty:
                break
            # Return as soon as something finished, collecting whatever else is ready.
            while True:
                try:
                    finished.append(self._done.get_nowait())
                except queue.Empty:
                    break
            break
        outcomes: list[Outcome] = []
        for call_id in finished:
            call = self._active.pop(call_id)
            outcomes.extend(self._outcomes(call))
        self._start_calls()
        return outcomes

    def close(self) -> None:
        for call in self._active.values():
            call.future.cancel()
        self._channel.close()

    # --- batching -----------------------------------------------------------------------

    def _take_batch(self) -> list[SpooledEvent]:
        batch: list[SpooledEvent] = []
        size = 0
        while self._queue and len(batch) < self.max_batch_events:
            event = self._queue[0]
            framed = len(event.envelope) + 6
            if batch and size + framed > self.max_batch_bytes:
                break
            batch.append(self._queue.popleft())
            size += framed
        return batch

    def _start_calls(self) -> None:
        while self._queue and len(self._active) < self.max_concurrent_calls:
            batch = self._take_batch()
            traces = [usage_pb2.SignedUsageEvent.FromString(e.envelope).trace for e in batch]
            request = encode_batch([e.envelope for e in batch])
            with tracing.batch_span("residuals.v1.IngestService/PublishBatch", traces) as md:
                future = self._publish.future(
                    request, timeout=self.call_timeout, metadata=[self._auth, *md]
                )
            call_id = self._next_call
            self._next_call += 1
            self._active[call_id] = _Call(batch, future)
            future.add_done_callback(lambda _f, cid=call_id: self._done.put(cid))

    def _outcomes(self, call: _Call) -> list[Outcome]:
        future = call.future
        error = future.exception()
        if error is not None:
            return self._failed(call.events, future)
        response: ingest_pb2.PublishBatchResponse = future.result()
        by_index = {r.index: r for r in response.results}
        outcomes: list[Outcome] = []
        for index, event in enumerate(call.events):
            result = by_index.get(index)
            if result is None:
                outcomes.append(Outcome.retry(event, "gateway gave no result for the event"))
            elif result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED:
                outcomes.append(Outcome(event, DeliveryStatus.DELIVERED))
            elif result.status == ingest_pb2.PUBLISH_STATUS_DUPLICATE:
                outcomes.append(Outcome(event, DeliveryStatus.DUPLICATE, detail=result.detail))
            elif result.status == ingest_pb2.PUBLISH_STATUS_REJECTED:
                outcomes.append(
                    Outcome(
                        event,
                        DeliveryStatus.REJECTED,
                        reason=reason_name(result.reason),
                        detail=result.detail,
                    )
                )
            else:
                outcomes.append(Outcome.retry(event, f"unknown publish status {result.status}"))
        return outcomes

    def _failed(self, events: list[SpooledEvent], future: Any) -> list[Outcome]:
        code = future.code() if hasattr(future, "code") else grpc.StatusCode.UNKNOWN
        details = future.details() if hasattr(future, "details") else str(future.exception())
        retry_after = _retry_after(future)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after == 0 and len(events) > 1:
            # Over the gateway's batch limits (a rate limit carries a retry delay): split.
            self.max_batch_events = max(1, len(events) // 2)
            log.warning(
                "gateway refused a batch of %d events (%s); batches now at most %d",
                len(events),
                details,
                self.max_batch_events,
            )
        elif code in _TRANSIENT_LOG:
            log.info("gateway call failed (%s: %s); will retry", code.name, details)
        else:
            # Authentication or configuration problems: keep the events, keep trying, shout.
            log.error("gateway call failed (%s: %s); events kept for retry", code.name, details)
        detail = f"{code.name}: {details}"
        return [Outcome.retry(e, detail, retry_after) for e in events]
