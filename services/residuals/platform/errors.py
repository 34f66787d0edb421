"""Bad requests, reported the same way by every gRPC service.

A handler raises :class:`InvalidArgument` (one violation per bad field, named by its
request path: ``filter.licence_ids[2]``, ``page_token``) from anywhere; the shared
:class:`~residuals.platform.auth.AuthInterceptor` answers INVALID_ARGUMENT with a
``google.rpc.BadRequest`` of those field violations in the ``grpc-status-details-bin``
trailer and the message ``field: description; ...``. So a client can point at the field,
and nothing a caller sends turns into UNKNOWN.

Caller text is hostile: it is never echoed raw into a message (a terminal escape in a
filter must not reach the operator's terminal through the CLI), only through
:func:`echo`, which escapes it and bounds its length.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from residuals.codecs.timestamps import to_datetime
from residuals.domain.bounds import MAX_ID_CHARS, printable, text_problem, timestamp_problem
from residuals.domain.period import Period

E = TypeVar("E", bound=int)

#: Longest piece of caller text quoted back in an error message.
ECHO_CHARS = 64


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class InvalidArgument(Exception):
    """The request is malformed; every violation names its field."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def status(self) -> grpc.Status:
        """INVALID_ARGUMENT with the violations as ``google.rpc.BadRequest``."""
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(self))
        status.details.add().Pack(detail)
        return rpc_status.to_status(status)


def echo(value: str | bytes, limit: int = ECHO_CHARS) -> str:
    """Caller text as it may appear in a message: quoted, escaped, at most ``limit`` chars."""
    return f"'{printable(value, limit)}'"


def text_field(field: str, value: str, limit: int = MAX_ID_CHARS) -> str:
    """A caller's text (an id filter, a note): printable and at most ``limit`` characters.

    Filters are bound as query parameters and compared with ``=`` only (never LIKE), so
    ``' OR 1=1 --``, ``%`` or ``_`` simply match nothing; what PostgreSQL cannot even
    hold (NUL), what would reach a terminal as an escape sequence, or what would only
    cost memory (a 10,000-character id) is refused here.
    """
    problem = text_problem(value, limit)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return value


def text_fields(field: str, values: Sequence[str], limit: int = MAX_ID_CHARS) -> list[str]:
    """:func:`text_field` for a repeated field (``field[i]`` names the bad element)."""
    return [text_field(f"{field}[{i}]", v, limit) for i, v in enumerate(values)]


def period_field(field: str, text: str) -> Period:
    """A ``YYYY-MM`` period, refused naming ``field`` otherwise."""
    try:
        return Period.parse(text)
    except ValueError:
        raise InvalidArgument.field(field, f"{echo(text)} is not a period (YYYY-MM)") from None


def enum_filters(field: str, values: Sequence[E], known: Collection[int]) -> list[E]:
    """Values of a repeated enum filter, without UNSPECIFIED (0, "any"); a number the
    contract does not define is refused naming ``field[i]`` rather than ignored (ignoring
    it would silently widen the filter)."""
    for i, value in enumerate(values):
        if value and value not in known:
            raise InvalidArgument.field(f"{field}[{i}]", f"{value} is not a known value")
    return [v for v in values if v]


def timestamp_field(message: Any, field: str, path: str = "") -> datetime | None:
    """The Timestamp ``field`` of ``message`` as a datetime (None when unset), refused
    naming ``path`` (default ``field``) when its nanos or seconds are out of bounds."""
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    problem = timestamp_problem(value.seconds, value.nanos)
    if problem is not None:
        raise InvalidArgument.field(path or field, problem)
    return to_datetime(value)
