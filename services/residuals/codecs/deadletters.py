"""Dead letters: ``residuals.v1.DeadLetter`` records for ``residuals.usage.dlq.v1``.

Every path that refuses a usage event (the ingest gateway now, the meter later) builds
its record here, so the topic has one shape: the §2 reason, a human detail, the vendor
(authenticated, never taken from the payload), the ids when they could be read, and the
ORIGINAL bytes exactly as received, whatever they were; an operator can always see what
arrived, and a poison record is parked here instead of blocking its partition.

The record key is the vendor id (empty when unknown), so one vendor's dead letters stay in
order; headers repeat the vendor and the reason, so tools can filter without decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from residuals.codecs.timestamps import set_timestamp
from residuals.domain.vocabulary import RejectReason
from residuals.v1 import common_pb2, usage_pb2

REASON_PREFIX = "REJECT_REASON_"
VENDOR_HEADER = "residuals-vendor"
REASON_HEADER = "residuals-reason"
RECEIVED_AT_HEADER = "residuals-received-at"


def reason_to_proto(reason: RejectReason) -> common_pb2.RejectReason.ValueType:
    return common_pb2.RejectReason.Value(REASON_PREFIX + reason.value)


def reason_from_proto(value: int) -> str:
    """``REJECT_REASON_OVERSIZED`` → ``OVERSIZED``; unknown numbers as ``REASON_<n>``."""
    try:
        name = common_pb2.RejectReason.Name(common_pb2.RejectReason.ValueType(value))
    except ValueError:
        return f"REASON_{value}"
    return name.removeprefix(REASON_PREFIX)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a refused record was read (Kafka consumers); the gateway has none."""

    topic: str = ""
    partition: int = 0
    offset: int = 0


def dead_letter(
    reason: RejectReason,
    detail: str,
    *,
    original: bytes,
    received_at: datetime,
    vendor_id: str = "",
    event_id: str = "",
    licence_id: str = "",
    source: Source | None = None,
    trace: common_pb2.TraceContext | None = None,
) -> usage_pb2.DeadLetter:
    """The DeadLetter message for one refused event."""
    message = usage_pb2.DeadLetter(
        reason=reason_to_proto(reason),
        detail=detail,
        vendor_id=vendor_id,
        event_id=event_id,
        licence_id=licence_id,
        original=original,
    )
    set_timestamp(message.received_at, received_at)
    if source is not None:
        message.source_topic = source.topic
        message.source_partition = source.partition
        message.source_offset = source.offset
    if trace is not None and trace.traceparent:
        message.trace.CopyFrom(trace)
    return message


def record_headers(message: usage_pb2.DeadLetter, received_at_text: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record (trace headers are added by the producer)."""
    return [
        (VENDOR_HEADER, message.vendor_id.encode("utf-8")),
        (REASON_HEADER, reason_from_proto(message.reason).encode("ascii")),
        (RECEIVED_AT_HEADER, received_at_text.encode("ascii")),
    ]
