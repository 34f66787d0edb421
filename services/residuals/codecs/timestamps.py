"""google.protobuf.Timestamp ↔ aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from residuals.domain.bounds import (
    EARLIEST_SECONDS,
    LATEST_SECONDS,
    NANOS_PER_SECOND,
    timestamp_problem,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(ts: Timestamp) -> datetime:
    seconds, nanos = ts.seconds, ts.nanos
    if EARLIEST_SECONDS <= seconds <= LATEST_SECONDS and 0 <= nanos < NANOS_PER_SECOND:
        # the same instant, twice as fast: every stored event is converted on each close
        return EPOCH + timedelta(0, seconds, nanos // 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def set_timestamp(target: Timestamp, value: datetime) -> None:
    """Fill ``target`` exactly (microsecond precision, integer arithmetic, no float)."""
    if value.tzinfo is None:
        value = value.astimezone(UTC)  # naive: local time, as datetime.timestamp() reads it
    since = value - EPOCH
    target.seconds = since.days * 86400 + since.seconds
    target.nanos = since.microseconds * 1000


def optional_datetime(message: object, field: str) -> datetime | None:
    """The field as a datetime when set, else None (proto3 message presence)."""
    if message.HasField(field):  # type: ignore[attr-defined]
        return to_datetime(getattr(message, field))
    return None


def bounded_datetime(message: object, field: str) -> datetime | None:
    """The field as a datetime when set and within the event model's bounds
    (:func:`residuals.domain.bounds.timestamp_problem`), else None: never raises, so a
    decoder can fall back to a time it trusts (nanos -1 or seconds 2^62 cannot convert)."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    ts = getattr(message, field)
    if timestamp_problem(ts.seconds, ts.nanos) is not None:
        return None
    return to_datetime(ts)
