"""google.protobuf.Timestamp ↔ aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def to_datetime(ts: Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC).replace(microsecond=ts.nanos // 1000)


def set_timestamp(target: Timestamp, value: datetime) -> None:
    """Fill ``target`` exactly (microsecond precision, no float round-trip)."""
    value = value.astimezone(UTC)
    target.seconds = int(value.replace(microsecond=0).timestamp())
    target.nanos = value.microsecond * 1000


def optional_datetime(message: object, field: str) -> datetime | None:
    """The field as a datetime when set, else None (proto3 message presence)."""
    if message.HasField(field):  # type: ignore[attr-defined]
        return to_datetime(getattr(message, field))
    return None
