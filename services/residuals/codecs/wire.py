"""Protobuf wire checks every strict decoder needs, whatever the message.

``FromString`` keeps a field sent with the wrong wire type (``versions`` as a varint, a
decimal string as a fixed64) as an *unknown* field and reads the real one as its default,
so the same bytes can mean "no versions" to one reader and garbage to another. A strict
decoder refuses them instead; field numbers this version does not know at all stay
allowed (a newer writer may send them).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message


def mistyped_field(message: Message) -> str | None:
    """The name of a field of ``message`` itself (not of the messages inside it: callers
    check those where they decode them) that arrived with a wire type its schema does not
    allow, or None."""
    fields = message.DESCRIPTOR.fields_by_number
    found = unknown_fields.UnknownFieldSet(message)
    for index in range(len(found)):
        field = fields.get(found[index].field_number)
        if field is not None:
            return str(field.name)
    return None


def reject_mistyped(message: Message, where: str) -> None:
    """:class:`DecodeError` naming the first field of ``message``, or of a message set
    inside it, that arrived with a wire type its schema does not allow."""
    found = unknown_fields.UnknownFieldSet(message)
    if len(found):
        fields = message.DESCRIPTOR.fields_by_number
        for index in range(len(found)):
            unknown = found[index]
            field = fields.get(unknown.field_number)
            if field is not None:
                raise DecodeError(
                    f"{where}: field {field.name} ({unknown.field_number}) has the wrong wire"
                    f" type {unknown.wire_type}"
                )
    for name, repeated, nested in _message_fields(message.DESCRIPTOR):
        if repeated:
            for item in getattr(message, name):
                reject_mistyped(item, f"{where}.{name}")
        elif message.HasField(name):
            inner = getattr(message, name)
            # A message with no messages inside and no unknown fields has nothing to refuse
            # (the common case, checked without a call: the meter decodes every record).
            if nested or len(unknown_fields.UnknownFieldSet(inner)):
                reject_mistyped(inner, f"{where}.{name}")


@functools.cache
def _message_fields(descriptor: Any) -> tuple[tuple[str, bool, bool], ...]:
    """The message-typed fields of a message type: name, repeated, and whether its type
    has message fields itself (looked up once per type: the gateway and the meter check
    every record they read)."""
    return tuple(
        (
            field.name,
            field.is_repeated,
            any(inner.message_type is not None for inner in field.message_type.fields),
        )
        for field in descriptor.fields
        if field.message_type is not None
    )
