"""HTTP routes from the ``google.api.http`` annotations of the contracts.

The routes are read from the compiled descriptors at start-up, never written by hand, so
the gateway, the OpenAPI document and the ``.proto`` files cannot disagree. Path
templates follow ``google/api/http.proto``: literals, ``*``, ``**``, ``{field}`` and
``{field=segments}`` variables and a trailing ``:verb``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

from residuals.v1 import (
    alert_service_pb2,
    approval_service_pb2,
    ingest_pb2,
    licence_service_pb2,
    notification_service_pb2,
    payout_service_pb2,
)

#: Every contract file that may carry HTTP routes.
CONTRACTS: tuple[FileDescriptor, ...] = (
    ingest_pb2.DESCRIPTOR,
    approval_service_pb2.DESCRIPTOR,
    alert_service_pb2.DESCRIPTOR,
    payout_service_pb2.DESCRIPTOR,
    notification_service_pb2.DESCRIPTOR,
    licence_service_pb2.DESCRIPTOR,
)

#: Which deployed service owns each gRPC service (the gateway forwards there). A routed
#: service missing here fails the start-up, so a new contract cannot be half-wired.
BACKENDS: dict[str, str] = {
    "residuals.v1.IngestService": "ingest",
    "residuals.v1.ApprovalService": "licensing",
    "residuals.v1.LicenceService": "licensing",
    "residuals.v1.AlertService": "alerts",
    "residuals.v1.PayoutService": "payouts",
    "residuals.v1.NotificationService": "notify",
}

_VERBS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A path template that ``google/api/http.proto`` does not allow."""


@dataclass(frozen=True)
class Variable:
    """``{field_path=segments}``: a request field filled from part of the path."""

    field_path: str
    segments: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template, matched against the raw (percent-encoded) request path."""

    text: str
    segments: tuple[str | Variable, ...]
    verb: str | None
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The variables' values (percent-decoded) if ``raw_path`` matches, else None."""
        found = self.pattern.fullmatch(raw_path)
        if found is None:
            return None
        return {
            variable.field_path: unquote(found.group(f"v{i}"))
            for i, variable in enumerate(self.variables)
        }

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: ``/v1/approvals/{approval_id}:approve``."""
        parts = ["{" + s.field_path + "}" if isinstance(s, Variable) else s for s in self.segments]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")


def _split_segments(text: str) -> list[str]:
    """Split on ``/`` outside braces (a variable's own segments may contain ``/``)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError("unbalanced '}'")
        if char == "/" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise TemplateError("unbalanced '{'")
    parts.append(current)
    return parts


_LITERAL = re.compile(r"[A-Za-z0-9._~%!$&'()+,;=@-]+")
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _plain_regex(segments: Sequence[str], where: str) -> str:
    out = []
    for index, segment in enumerate(segments):
        if segment == "*":
            out.append("[^/]+")
        elif segment == "**":
            if index != len(segments) - 1:
                raise TemplateError(f"'**' must be the last segment ({where})")
            out.append(".+")
        elif _LITERAL.fullmatch(segment):
            out.append(re.escape(segment))
        else:
            raise TemplateError(f"bad segment {segment!r} ({where})")
    return "/".join(out)


def parse_template(text: str) -> PathTemplate:
    """Parse a ``google.api.http`` path template; raise :class:`TemplateError` if invalid."""
    if not text.startswith("/"):
        raise TemplateError(f"{text!r} does not start with '/'")
    body, verb = text[1:], None
    colon = body.rfind(":")
    if colon != -1 and "/" not in body[colon:] and "}" not in body[colon:]:
        body, verb = body[:colon], body[colon + 1 :]
        if not _LITERAL.fullmatch(verb):
            raise TemplateError(f"bad verb {verb!r} in {text!r}")
    segments: list[str | Variable] = []
    regex: list[str] = []
    count = 0
    raw = _split_segments(body)
    for index, segment in enumerate(raw):
        if segment.startswith("{") and segment.endswith("}"):
            inner = segment[1:-1]
            name, _, sub = inner.partition("=")
            if not _FIELD_PATH.fullmatch(name):
                raise TemplateError(f"bad field path {name!r} in {text!r}")
            sub_segments = tuple(sub.split("/")) if sub else ("*",)
            if "**" in sub_segments and index != len(raw) - 1:
                raise TemplateError(f"'**' must be in the last segment of {text!r}")
            variable = Variable(name, sub_segments)
            if variable.field_path in {v.field_path for v in segments if isinstance(v, Variable)}:
                raise TemplateError(f"{name!r} bound twice in {text!r}")
            segments.append(variable)
            regex.append(f"(?P<v{count}>{_plain_regex(sub_segments, text)})")
            count += 1
        else:
            if segment == "**" and index != len(raw) - 1:
                raise TemplateError(f"'**' must be the last segment of {text!r}")
            segments.append(segment)
            regex.append(_plain_regex([segment], text))
    pattern = "/" + "/".join(regex) + (re.escape(f":{verb}") if verb else "")
    return PathTemplate(text, tuple(segments), verb, re.compile(pattern))


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: PathTemplate
    #: "" (no body: every unbound field from the query), "*" (the whole request) or the
    #: name of the one request field the body fills (the rest from the query).
    body: str
    response_body: str
    method: MethodDescriptor

    @property
    def service(self) -> str:
        return str(self.method.containing_service.full_name)

    @property
    def backend(self) -> str:
        return BACKENDS[self.service]

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def name(self) -> str:
        """A short, stable label for logs and metrics: ``AlertService.ListAlerts``."""
        return f"{self.method.containing_service.name}.{self.method.name}"


def _binding(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError("HttpRule without a pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), str(getattr(rule, kind))


def _check_field(method: MethodDescriptor, path: str, what: str) -> None:
    descriptor: Any = method.input_type
    for part in path.split("."):
        found = descriptor.fields_by_name.get(part) if descriptor is not None else None
        if found is None:
            raise TemplateError(f"{method.full_name}: {what} {path!r} is not a request field")
        descriptor = found.message_type


def routes_of(method: MethodDescriptor) -> list[Route]:
    """The routes of one method (its rule and additional bindings); none if unannotated."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    if method.client_streaming:
        raise TemplateError(f"{method.full_name}: client streaming has no HTTP mapping")
    rule = options.Extensions[annotations_pb2.http]
    routes = []
    for binding in [rule, *rule.additional_bindings]:
        verb, path = _binding(binding)
        template = parse_template(path)
        for variable in template.variables:
            _check_field(method, variable.field_path, "path variable")
        if binding.body not in ("", "*"):
            _check_field(method, binding.body, "body")
        if binding.response_body:
            _check_field_out(method, binding.response_body)
        routes.append(Route(verb, template, binding.body, binding.response_body, method))
    return routes


def _check_field_out(method: MethodDescriptor, name: str) -> None:
    if name not in method.output_type.fields_by_name:
        raise TemplateError(f"{method.full_name}: response_body {name!r} is not a field")


def load_routes(files: Iterable[FileDescriptor] = CONTRACTS) -> list[Route]:
    """Every route of every service in ``files``; raise on a bad or ambiguous annotation."""
    routes: list[Route] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods_by_name.values():
                found = routes_of(method)
                if found and service.full_name not in BACKENDS:
                    raise TemplateError(f"{service.full_name} has routes but no backend")
                routes.extend(found)
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        key = (route.http_method, route.template.text)
        if key in seen:
            raise TemplateError(f"{key[0]} {key[1]} bound by {seen[key]} and {route.name}")
        seen[key] = route.name
    return routes


@dataclass(frozen=True)
class Match:
    route: Route
    variables: dict[str, str]


class NoRoute(Exception):
    """No route has this path (404), or none with this method (405, ``allowed`` set)."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.allowed = tuple(sorted(set(allowed)))
        super().__init__("method not allowed" if self.allowed else "no such route")


class Router:
    """Finds the route of a request.

    A template with a ``:verb`` wins over a variable that would swallow the verb
    (``/v1/approvals/A1:approve`` is ApproveUse, never GetApproval of ``A1:approve``), so
    ``GET`` on a verb path is 405 rather than a lookup of a nonsense id.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)

    def match(self, http_method: str, raw_path: str) -> Match:
        candidates = [
            (route, found)
            for route in self.routes
            if (found := route.template.match(raw_path)) is not None
        ]
        with_verb = [c for c in candidates if c[0].template.verb is not None]
        if with_verb:
            candidates = with_verb
        if not candidates:
            raise NoRoute()
        for route, found in candidates:
            if route.http_method == http_method.upper():
                return Match(route, found)
        raise NoRoute([route.http_method for route, _ in candidates])
