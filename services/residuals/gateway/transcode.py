"""HTTP request parts to a protobuf request, and protobuf responses to JSON.

Conversion itself is protobuf's ``json_format`` (Google's maintained proto3 JSON
mapping: lowerCamelCase names, 64-bit integers and bytes as strings, enums by name,
Timestamps in RFC 3339). Before it, :func:`check_json` walks the body against the
descriptor so that each refusal names its field with its JSON path
(``events[0].keyId``): ``json_format`` reports some type errors without one, and
quietly accepts a bytes field that is not base64.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from residuals.gateway.routes import Route

#: Well-known types whose JSON is not an object (left to json_format).
WELL_KNOWN = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.Empty",
        *(
            f"google.protobuf.{name}Value"
            for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool")
        ),
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)

_INTEGERS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Violation(Exception):
    """A bad request field: ``field`` is its JSON path (or query parameter)."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field (typed: never None here)."""
    assert field.message_type is not None, field.full_name
    return field.message_type


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    assert field.enum_type is not None, field.full_name
    return field.enum_type


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(message is not None and message.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def field_by_json_key(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    """The field a JSON key names: its lowerCamelCase JSON name or its proto name."""
    for field in descriptor.fields:
        if key in (field.json_name, field.name):
            return field
    return None


def check_json(value: Any, descriptor: Descriptor, path: str = "") -> None:
    """Raise :class:`Violation` for the first field of ``value`` the message cannot take."""
    if descriptor.full_name in WELL_KNOWN:
        return
    if not isinstance(value, dict):
        raise Violation(path or "(body)", "must be a JSON object")
    for key, item in value.items():
        field = field_by_json_key(descriptor, key)
        where = _join(path, key)
        if field is None:
            raise Violation(where, f"unknown field (not in {descriptor.full_name})")
        if item is None:
            continue
        if _is_map(field):
            if not isinstance(item, dict):
                raise Violation(where, "must be a JSON object (a map)")
            value_field = message_of(field).fields_by_name["value"]
            for map_key, map_value in item.items():
                if map_value is not None:
                    _check_single(map_value, value_field, f"{where}[{map_key!r}]")
        elif _is_repeated(field):
            if not isinstance(item, list):
                raise Violation(where, "must be a JSON array")
            for index, element in enumerate(item):
                _check_single(element, field, f"{where}[{index}]")
        else:
            _check_single(item, field, where)


def _check_single(value: Any, field: FieldDescriptor, where: str) -> None:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        check_json(value, message_of(field), where)
    elif kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise Violation(where, f"must be a string, not {_json_kind(value)}")
    elif kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            raise Violation(where, f"must be a base64 string, not {_json_kind(value)}")
        if not _is_base64(value):
            raise Violation(where, "is not base64 (RFC 4648, standard or URL-safe alphabet)")
    elif kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise Violation(where, f"must be true or false, not {_json_kind(value)}")
    elif kind in _INTEGERS:
        if isinstance(value, bool) or not (
            isinstance(value, int)
            or (isinstance(value, float) and value.is_integer())
            or (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value))
        ):
            raise Violation(where, f"must be an integer, not {_json_kind(value)}")
    elif kind in _FLOATS:
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) or (isinstance(value, str) and _is_float_text(value))
        ):
            raise Violation(where, f"must be a number, not {_json_kind(value)}")
    elif kind == FieldDescriptor.TYPE_ENUM:
        if isinstance(value, str):
            if enum_of(field).values_by_name.get(value) is None:
                names = ", ".join(v.name for v in enum_of(field).values)
                raise Violation(where, f"unknown value (one of {names})")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise Violation(where, f"must be an enum name (string), not {_json_kind(value)}")


def _is_float_text(value: str) -> bool:
    if value in ("NaN", "Infinity", "-Infinity"):
        return True
    try:
        return not math.isnan(float(value)) and value.strip() == value
    except ValueError:
        return False


def _is_base64(value: str) -> bool:
    text = value.rstrip("=")
    if re.fullmatch(r"[A-Za-z0-9+/]*|[A-Za-z0-9_-]*", text) is None or len(text) % 4 == 1:
        return False
    try:
        base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))
    except binascii.Error:
        return False
    return True


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


# --- path variables and query parameters ---------------------------------------------------


def _resolve_path(descriptor: Descriptor, dotted: str, source: str) -> list[FieldDescriptor]:
    """The fields along ``a.b.c`` (each part a proto or JSON name)."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in dotted.split("."):
        found = field_by_json_key(current, part) if current is not None else None
        if found is None:
            raise Violation(source, "unknown field")
        fields.append(found)
        current = found.message_type if found.type == FieldDescriptor.TYPE_MESSAGE else None
    return fields


def _scalar_from_text(text: str, field: FieldDescriptor, where: str) -> Any:
    """A query or path value (always text) as the JSON value of ``field``."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise Violation(where, "must be true or false")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if message_of(field).full_name in WELL_KNOWN:
            return text
        raise Violation(where, "is a message: send it in a request body")
    if field.type in _INTEGERS and not _INTEGER_TEXT.fullmatch(text):
        raise Violation(where, "must be an integer")
    if field.type in _FLOATS and not _is_float_text(text):
        raise Violation(where, "must be a number")
    _check_single(text, field, where)
    return text


def _set(target: dict[str, Any], fields: Sequence[FieldDescriptor], value: Any) -> None:
    for field in fields[:-1]:
        target = target.setdefault(field.json_name, {})
    target[fields[-1].json_name] = value


def _get(target: Mapping[str, Any], fields: Sequence[FieldDescriptor]) -> Any:
    current: Any = target
    for field in fields:
        if not isinstance(current, dict):
            return None
        current = current.get(field.json_name, current.get(field.name))
    return current


def build_request(
    route: Route,
    variables: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: Any,
) -> Message:
    """The gRPC request of an HTTP call (google.api.http rules); raise :class:`Violation`.

    ``body`` is the parsed JSON (None when the route takes none). Path variables win over
    nothing: a body that sets a bound field to another value is refused.
    """
    descriptor: Descriptor = route.method.input_type
    document: dict[str, Any] = {}
    if route.body == "*":
        check_json(body if body is not None else {}, descriptor)
        document = dict(body or {})
    elif route.body:
        (body_field,) = _resolve_path(descriptor, route.body, route.body)
        if body is not None:
            check_json({body_field.json_name: body}, descriptor)
            document[body_field.json_name] = body
    for name, text in variables.items():
        fields = _resolve_path(descriptor, name, name)
        value = _scalar_from_text(text, fields[-1], name)
        already = _get(document, fields)
        if already is not None and already != value:
            raise Violation(name, "differs between the path and the body")
        _set(document, fields, value)
    if query:
        if route.body == "*":
            raise Violation(
                query[0][0], "query parameters are not accepted here: the body is the whole request"
            )
        bound = set(variables) | ({route.body} if route.body else set())
        for name, text in query:
            fields = _resolve_path(descriptor, name, name)
            dotted = ".".join(f.name for f in fields)
            if any(dotted == b or dotted.startswith(f"{b}.") for b in bound):
                raise Violation(name, "is bound by the path or body, not the query")
            leaf = fields[-1]
            value = _scalar_from_text(text, leaf, name)
            if _is_repeated(leaf):
                existing = _get(document, fields)
                _set(document, fields, [*(existing or []), value])
            else:
                if _get(document, fields) is not None:
                    raise Violation(name, "given more than once")
                _set(document, fields, value)
    message = message_factory.GetMessageClass(descriptor)()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise Violation(_parse_error_field(str(error)), _parse_error_text(str(error))) from None
    return message


_AT = re.compile(r" at \"?([A-Za-z0-9_.\[\]]+?)\"?\.*$")
_FAILED = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error_field(text: str) -> str:
    """The JSON path json_format names (``at Request.a.b``), else its chain of fields."""
    first_line = text.splitlines()[0] if text else ""
    found = _AT.search(first_line)
    if found and "." in found.group(1):
        return found.group(1).split(".", 1)[1]
    chain = _FAILED.findall(text)
    return ".".join(chain) or "(body)"


def _parse_error_text(text: str) -> str:
    last = _FAILED.split(text.splitlines()[0] if text else "")[-1]
    return last.strip().rstrip(".") or "invalid value"


def to_json(message: Message, route: Route | None = None) -> Any:
    """A response as proto3 JSON (lowerCamelCase; fields at their default included, so a
    client never has to tell "zero" from "absent"; ``response_body`` honoured)."""
    document = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=False
    )
    if route is not None and route.response_body:
        field = message.DESCRIPTOR.fields_by_name[route.response_body]
        return document.get(field.json_name)
    return document
