"""What can go wrong in the registry, independent of gRPC (the service maps these to codes).

Validation problems carry field paths (request field names, ``terms.rates.view_cpm``), so a
client can point at the field; they become INVALID_ARGUMENT with ``google.rpc.BadRequest``
field violations (the shared :mod:`residuals.platform.errors`, which every service uses).
Permission problems reuse :class:`residuals.platform.auth.PermissionDenied`.
"""

from __future__ import annotations

from residuals.platform.errors import FieldViolation, InvalidArgument

__all__ = [
    "Aborted",
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "RegistryError",
]


class RegistryError(Exception):
    """Base of the registry's expected failures; ``str()`` is the client-facing message."""


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
