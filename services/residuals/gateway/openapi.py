"""The OpenAPI 3.1 document of the HTTP API, generated from the same routes the gateway
serves (the descriptors' ``google.api.http`` annotations), so the two cannot drift.

Schemas follow the proto3 JSON mapping ``json_format`` implements: lowerCamelCase
properties, 64-bit integers as strings, bytes as base64 strings, enums by name,
``Timestamp`` as an RFC 3339 string. ``residuals protos gen`` writes it to
:data:`OPENAPI_PATH` and ``residuals protos check`` fails when that copy is stale; the
gateway serves the same document at ``/openapi.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from residuals.gateway.routes import Route
from residuals.gateway.transcode import WELL_KNOWN, enum_of, message_of

#: Where the committed copy lives, relative to the repository root.
OPENAPI_PATH = "protos/openapi/residuals.v1.json"

_REF = "#/components/schemas/"

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
}

_WELL_KNOWN_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is the gRPC status name.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "gRPC status name, e.g. INVALID_ARGUMENT"},
        "instance": {"type": "string"},
        "violations": {
            "type": "array",
            "description": "The bad fields (google.rpc.BadRequest field violations).",
            "items": {
                "type": "object",
                "required": ["field", "description"],
                "properties": {
                    "field": {"type": "string"},
                    "description": {"type": "string"},
                },
            },
        },
    },
}


class _Schemas:
    """Collects the component schemas of every message and enum a route reaches."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        name = enum.full_name
        if name not in self.schemas:
            self.schemas[name] = {"type": "string", "enum": [v.name for v in enum.values]}
        return {"$ref": _REF + name}

    def message(self, message: Descriptor) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN_SCHEMAS:
            return dict(_WELL_KNOWN_SCHEMAS[name])
        if name in WELL_KNOWN:
            return {}
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to themselves
            properties = {f.json_name: self.field(f) for f in message.fields}
            schema: dict[str, Any] = {"type": "object", "properties": properties}
            schema["additionalProperties"] = False
            oneofs = [o for o in message.oneofs if not o.name.startswith("_")]
            if oneofs:
                schema["description"] = "At most one of each group is set: " + "; ".join(
                    ", ".join(f.json_name for f in o.fields) for o in oneofs
                )
            self.schemas[name] = schema
        return {"$ref": _REF + name}

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(message_of(field))
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(enum_of(field))
        return dict(_SCALARS[field.type])

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": self.single(entry.fields_by_name["value"]),
            }
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def _query_parameters(
    schemas: _Schemas, message: Descriptor, prefix: str, bound: set[str]
) -> list[dict[str, Any]]:
    """Every scalar leaf not bound by the path or body, as ``a.b`` query parameters."""
    parameters: list[dict[str, Any]] = []
    for field in message.fields:
        dotted = f"{prefix}{field.name}"
        if dotted in bound:
            continue
        nested = field.message_type
        if nested is not None and nested.full_name not in _WELL_KNOWN_SCHEMAS:
            if nested.GetOptions().map_entry or field.is_repeated or nested.full_name in WELL_KNOWN:
                continue  # no query form for these (send them through a body route)
            parameters += _query_parameters(schemas, nested, f"{dotted}.", bound)
            continue
        parameter: dict[str, Any] = {
            "name": dotted,
            "in": "query",
            "required": False,
            "schema": schemas.field(field),
        }
        if field.is_repeated:
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _operation(schemas: _Schemas, route: Route) -> dict[str, Any]:
    method = route.method
    request: Descriptor = method.input_type
    bound = {v.field_path for v in route.template.variables}
    parameters: list[dict[str, Any]] = []
    for variable in route.template.variables:
        field: Any = None
        descriptor: Any = request
        for part in variable.field_path.split("."):
            field = descriptor.fields_by_name[part]
            descriptor = field.message_type
        parameters.append(
            {
                "name": variable.field_path,
                "in": "path",
                "required": True,
                "schema": schemas.field(field),
            }
        )
    operation: dict[str, Any] = {
        "operationId": f"{method.containing_service.name}_{method.name}",
        "tags": [method.containing_service.name],
        "summary": f"{method.full_name} over HTTP",
    }
    if route.body == "*":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": schemas.message(request)}},
        }
    else:
        if route.body:
            bound.add(route.body)
            operation["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": schemas.field(request.fields_by_name[route.body])
                    }
                },
            }
        parameters += _query_parameters(schemas, request, "", bound)
    if route.streaming:
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume after this sequence (sets after_sequence).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    output = schemas.message(method.output_type)
    if route.response_body:
        output = schemas.field(method.output_type.fields_by_name[route.response_body])
    if route.streaming:
        success = {
            "description": "Server-sent events: one `data:` line of JSON per message (the "
            "schema below), `event:` the item kind, `id:` its sequence.",
            "content": {"text/event-stream": {"schema": output}},
        }
    else:
        success = {"description": "OK", "content": {"application/json": {"schema": output}}}
    operation["responses"] = {
        "200": success,
        "default": {
            "description": "An error (RFC 9457 problem details).",
            "content": {"application/problem+json": {"schema": {"$ref": _REF + "Problem"}}},
        },
    }
    return operation


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (deterministic: same routes, same bytes)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.template.openapi_path(), r.http_method)):
        item = paths.setdefault(route.template.openapi_path(), {})
        item[route.http_method.lower()] = _operation(schemas, route)
    components = {name: schemas.schemas[name] for name in sorted(schemas.schemas)}
    components["Problem"] = PROBLEM_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Residuals HTTP API",
            "version": "v1",
            "description": "The gRPC APIs of Residuals (package residuals.v1) as HTTP/JSON, "
            "served by the `gateway` service. Generated from the protobuf contracts' "
            "google.api.http annotations by `residuals protos gen`; do not edit.",
        },
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: Authorization: Bearer rsd_<id>_<secret>.",
                }
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    """The committed text of the document (stable key order, trailing newline)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
