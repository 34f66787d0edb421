"""gRPC statuses as HTTP problems (RFC 9457 ``application/problem+json``).

Status codes follow the ``google.rpc.Code`` HTTP mapping of AIP-193 (also grpc-gateway's),
FAILED_PRECONDITION included: 400, not 409, because the request can only succeed after the
*caller* changes something (the state it asked about), and clients tell it apart by
``code``. Every body carries ``code``, the gRPC status name, so an HTTP client can branch
on exactly what a gRPC client would; ``violations`` carries the ``google.rpc.BadRequest``
field violations the services attach to INVALID_ARGUMENT, and 429 gets ``Retry-After``
from the service's ``google.rpc.RetryInfo`` (or its ``retry-after`` trailer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

PROBLEM_JSON = "application/problem+json"
#: Problem ``type`` URIs are tag URIs (RFC 4151): stable identifiers, not links.
TYPE_PREFIX = "tag:residuals.dev,2026:problem:"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

TITLES: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_name(code: grpc.StatusCode) -> str:
    return str(code.name)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class Problem(Exception):
    """An HTTP error answer: status, ``code`` (a gRPC status name) and its details."""

    status: int
    code: str
    detail: str
    violations: Sequence[FieldViolation] = ()
    retry_after: float | None = None
    allow: Sequence[str] = ()
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    @property
    def title(self) -> str:
        return TITLES.get(self.status, "Error")

    def body(self, instance: str | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": TYPE_PREFIX + self.code.lower().replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            document["instance"] = instance
        if self.violations:
            document["violations"] = [
                {"field": v.field, "description": v.description} for v in self.violations
            ]
        return document

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.allow:
            headers["Allow"] = ", ".join(self.allow)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="residuals"'
        return headers

    @classmethod
    def bad_request(cls, field: str, description: str) -> Problem:
        return cls(
            400, "INVALID_ARGUMENT", f"{field}: {description}", [FieldViolation(field, description)]
        )


def _metadata_value(metadata: Any, key: str) -> str | bytes | None:
    for item in metadata or ():
        name, value = item if isinstance(item, tuple) else (item.key, item.value)
        if name == key:
            return value  # type: ignore[no-any-return]
    return None


def from_rpc(code: grpc.StatusCode, details: str | None, trailing_metadata: Any) -> Problem:
    """The problem for a failed gRPC call, with the status details the service sent."""
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    raw = _metadata_value(trailing_metadata, "grpc-status-details-bin")
    if isinstance(raw, bytes):
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except Exception:  # a malformed detail must not hide the status itself
            status = status_pb2.Status()
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    if retry_after is None:
        plain = _metadata_value(trailing_metadata, "retry-after")
        if plain is not None:
            try:
                retry_after = float(plain)
            except ValueError:
                retry_after = None
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = None
    return Problem(
        http_status(code),
        status_name(code),
        details or status_name(code),
        violations,
        retry_after,
    )
