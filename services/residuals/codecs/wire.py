"""Protobuf wire checks every strict decoder needs, whatever the message.

``FromString`` keeps a field sent with the wrong wire type (``versions`` as a varint, a
decimal string as a fixed64) as an *unknown* field and reads the real one as its default,
so the same bytes can mean "no versions" to one reader and garbage to another. A strict
decoder refuses them instead; field numbers this version does not know at all stay
allowed (a newer writer may send them).
"""

from __future__ import annotations

from google.protobuf import unknown_fields
from google.protobuf.message import Message


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
