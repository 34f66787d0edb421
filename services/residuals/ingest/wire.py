"""Reading a publish request off the wire one event at a time.

The gateway registers its methods with an identity deserializer and splits the request
itself, instead of letting gRPC parse the whole ``PublishBatchRequest``:

* each event's bytes are exactly what the vendor sent, so a dead letter carries the true
  original, and the size limit applies before anything is parsed;
* one bad event cannot spoil its batch: a damaged envelope is one MALFORMED result, and
  if the framing itself breaks (a truncated request), every event before the damage is
  still processed and the undecodable rest becomes one MALFORMED dead letter.

Both request messages (``PublishBatchRequest``, ``PublishStreamRequest``) have the same
layout: ``repeated SignedUsageEvent events = 1``. Unknown fields are skipped, as protobuf
parsers do for forward compatibility.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS_FIELD = 1
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The request framing is broken at ``offset``."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise WireError("truncated varint", start)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes", start)


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """The events of a request, and what could not be read (if anything)."""

    events: list[bytes]
    #: Bytes from the first framing error to the end (empty when the request was whole).
    damaged: bytes = b""
    error: str = ""


def split_events(data: bytes) -> SplitRequest:
    """The raw ``SignedUsageEvent`` bytes of field 1, in order, plus any damaged tail."""
    events: list[bytes] = []
    pos = 0
    size = len(data)
    while pos < size:
        start = pos
        try:
            key, pos = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise WireError("field number 0", start)
            if wire == _WIRE_LEN:
                length, pos = _varint(data, pos)
                end = pos + length
                if end > size:
                    raise WireError(
                        f"field {field} claims {length} bytes, {size - pos} left", start
                    )
                if field == EVENTS_FIELD:
                    events.append(data[pos:end])
                pos = end
            elif field == EVENTS_FIELD:
                raise WireError(f"events field with wire type {wire}", start)
            elif wire == _WIRE_VARINT:
                _, pos = _varint(data, pos)
            elif wire == _WIRE_I64:
                pos += 8
            elif wire == _WIRE_I32:
                pos += 4
            else:
                raise WireError(f"unsupported wire type {wire}", start)
            if pos > size:
                raise WireError("truncated field", start)
        except WireError as error:
            return SplitRequest(events, data[start:], str(error))
    return SplitRequest(events)
