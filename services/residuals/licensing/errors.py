"""What can go wrong in the registry, independent of gRPC (the service maps these to codes).

Validation problems carry field paths (request field names, ``terms.rates.view_cpm``), so a
client can point at the field; they become INVALID_ARGUMENT with ``google.rpc.BadRequest``
field violations. Permission problems reuse :class:`residuals.platform.auth.PermissionDenied`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class RegistryError(Exception):
    """Base of the registry's expected failures; ``str()`` is the client-facing message."""


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class InvalidArgument(RegistryError):
    """The request is malformed; every violation names its field."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(RegistryError):
    pass


class AlreadyExists(RegistryError):
    pass


class FailedPrecondition(RegistryError):
    """The request is well formed but the registry's state refuses it.

    ``field`` names the request field that refers to the missing or conflicting thing.
    """

    def __init__(self, message: str, *, field: str = "", subject: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.subject = subject


class Aborted(RegistryError):
    """Optimistic concurrency: the licence changed since the caller read it."""
