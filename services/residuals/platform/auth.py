"""API-key authentication and role checks shared by every gRPC service.

Callers send ``authorization: Bearer rsd_<key_id>_<secret>`` in the call metadata.
:class:`AuthInterceptor` resolves the key to a :class:`Principal` through an
:class:`Authenticator` and makes it available to the handler as
:func:`current_principal`; handlers then check what the principal may do with
:func:`require_role` (and their own tenant checks: a vendor only sees its own data).

Keys are high-entropy random strings (``secrets.token_urlsafe(32)``: 256 bits), so the
server stores only ``SHA-256(secret)``. A slow password hash (bcrypt, argon2) exists to
make guessing *low*-entropy secrets expensive; with 256 random bits there is nothing to
guess, and a fast hash keeps the ingest hot path cheap. Hashes are compared with
:func:`hmac.compare_digest` so timing reveals nothing about a near miss. The ``key_id``
part is public (it appears in lists and logs) and only selects the stored hash.

The authentication itself runs inside the wrapped handler, i.e. in the server's worker
thread: ``intercept_service`` runs on grpc's polling thread, where a database lookup
would stall every other call on the server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
from opentelemetry import trace

from residuals.platform.errors import InvalidArgument
from residuals.platform.handlers import behavior_of, rewrap_handler

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

KEY_PREFIX = "rsd"
#: Bytes of randomness in a secret (``secrets.token_urlsafe`` encodes them as ~43 chars).
SECRET_BYTES = 32
#: Hex characters of a generated key id (64 random bits: unique, not secret).
KEY_ID_HEX_CHARS = 16

METADATA_KEY = "authorization"
MISSING_KEY_MESSAGE = "missing API key (metadata 'authorization: Bearer rsd_…')"
MALFORMED_KEY_MESSAGE = "malformed API key (metadata 'authorization: Bearer rsd_…')"
REJECTED_KEY_MESSAGE = "unknown or revoked API key"
BACKEND_UNAVAILABLE_MESSAGE = "authentication is temporarily unavailable; retry"

#: Services anyone may call: probes and tooling must work without credentials.
PUBLIC_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# fullmatch, never match with "$": "$" also matches before a trailing newline.
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_KEY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
# token_urlsafe alphabet; at least 43 chars = 32 bytes of entropy.
_SECRET = re.compile(r"[A-Za-z0-9_-]{43,256}")


class Role(StrEnum):
    """What a caller may do (docs/ARCHITECTURE.md: vendor, talent, finance, admin; plus the
    narrow service role below)."""

    VENDOR = "vendor"
    TALENT = "talent"
    FINANCE = "finance"
    ADMIN = "admin"
    #: A service principal (the alerts service) that may only record automatic
    #: suspensions: a leaked key can suspend, never read, revoke, amend or mint keys.
    SUSPENDER = "suspender"


#: Service roles and the only RPCs (full method names) their keys may call, on any server:
#: a leaked key of such a role can do no more than its service needs.
ROLE_METHODS: dict[Role, frozenset[str]] = {
    Role.SUSPENDER: frozenset({"/residuals.v1.LicenceService/SuspendLicence"}),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Vendors and talent are tied to exactly one tenant."""

    principal_id: str
    role: Role
    vendor_id: str | None = None
    talent_id: str | None = None

    def __post_init__(self) -> None:
        if self.role is Role.VENDOR and not self.vendor_id:
            raise ValueError(f"vendor principal {self.principal_id!r} needs a vendor_id")
        if self.role is Role.TALENT and not self.talent_id:
            raise ValueError(f"talent principal {self.principal_id!r} needs a talent_id")
        if self.role is not Role.VENDOR and self.vendor_id:
            raise ValueError(f"only vendor principals carry a vendor_id ({self.principal_id!r})")
        if self.role is not Role.TALENT and self.talent_id:
            raise ValueError(f"only talent principals carry a talent_id ({self.principal_id!r})")

    def describe(self) -> str:
        """``vendor:acme (principal p-1)``: for error messages and audit columns."""
        tenant = self.vendor_id or self.talent_id
        who = f"{self.role}:{tenant}" if tenant else str(self.role)
        return f"{who} (principal {self.principal_id})"


# --- key format and hashing -----------------------------------------------------------


def hash_secret(secret: str) -> bytes:
    """SHA-256 of the secret (32 bytes), the only form the server stores."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def verify_secret(secret: str, secret_hash: bytes) -> bool:
    """Constant-time comparison of ``secret`` against a stored :func:`hash_secret`."""
    return hmac.compare_digest(hash_secret(secret), bytes(secret_hash))


def format_api_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def generate_api_key() -> tuple[str, str, bytes]:
    """A new key: ``(key_id, plaintext "rsd_<key_id>_<secret>", SHA-256 of the secret)``.

    The plaintext is shown to its owner once; store only ``key_id`` and the hash.
    """
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, format_api_key(key_id, secret), hash_secret(secret)


def parse_api_key(text: str) -> tuple[str, str] | None:
    """``"rsd_<key_id>_<secret>"`` -> ``(key_id, secret)``; None when malformed.

    The key id never contains ``_`` (the secret may, token_urlsafe uses it), so the id ends
    at the second underscore. Nothing else is tolerated: no surrounding whitespace, no
    trailing newline (``$`` in a regex would allow one), no control characters.
    """
    if not _KEY_TEXT.fullmatch(text):
        return None
    prefix, sep, rest = text.partition("_")
    if prefix != KEY_PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def bearer_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``api_key``, for clients: ``stub.M(req, metadata=...)``."""
    return ((METADATA_KEY, f"Bearer {api_key}"),)


# --- authenticators -------------------------------------------------------------------


class Authenticator(Protocol):
    """Resolves a presented key to its principal, or None (unknown, revoked or wrong secret).

    Raising means the backend failed (database down): the caller gets UNAVAILABLE, not a
    false "unauthenticated".
    """

    def authenticate(self, key_id: str, secret: str) -> Principal | None: ...


@dataclass(frozen=True)
class StoredKey:
    """What an authenticator needs about one key."""

    key_id: str
    secret_hash: bytes
    principal: Principal
    revoked: bool = False


class StaticAuthenticator:
    """Keys held in memory: tests, and tools that run with a fixed set of keys."""

    def __init__(self, keys: list[StoredKey] | None = None) -> None:
        self._keys: dict[str, StoredKey] = {k.key_id: k for k in keys or []}
        self._lock = threading.Lock()

    def add(self, principal: Principal) -> str:
        """Create a key for ``principal`` and return its plaintext."""
        key_id, plaintext, secret_hash = generate_api_key()
        with self._lock:
            self._keys[key_id] = StoredKey(key_id, secret_hash, principal)
        return plaintext

    def revoke(self, key_id: str) -> None:
        with self._lock:
            key = self._keys[key_id]
            self._keys[key_id] = StoredKey(key.key_id, key.secret_hash, key.principal, True)

    def authenticate(self, key_id: str, secret: str) -> Principal | None:
        with self._lock:
            key = self._keys.get(key_id)
        if key is None or key.revoked or not verify_secret(secret, key.secret_hash):
            return None
        return key.principal


# --- the current principal -------------------------------------------------------------

_current: ContextVar[Principal | None] = ContextVar("residuals_principal", default=None)


class PermissionDenied(Exception):
    """The principal may not do this; :class:`AuthInterceptor` turns it into
    PERMISSION_DENIED with this message (raise it from anywhere inside a handler)."""


def current_principal() -> Principal:
    """The caller of the RPC being handled (set by :class:`AuthInterceptor`).

    Raises RuntimeError outside an authenticated handler: a service that forgot the
    interceptor must fail closed, not serve anonymous callers.
    """
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no authenticated principal: is AuthInterceptor installed?")
    return principal


def current_principal_id() -> str | None:
    """The principal id of the RPC being handled, None outside authenticated handlers
    (public services): what per-caller limits count by."""
    principal = _current.get()
    return None if principal is None else principal.principal_id


def may_call(principal: Principal, method: str) -> bool:
    """Whether ``principal``'s role may call ``method`` at all (``/pkg.Service/Method``);
    only service roles (:data:`ROLE_METHODS`) are restricted here, the others by handlers."""
    allowed = ROLE_METHODS.get(principal.role)
    return allowed is None or method in allowed


def require_role(*roles: Role) -> Principal:
    """The current principal if its role is one of ``roles``, else :class:`PermissionDenied`."""
    principal = current_principal()
    if principal.role not in roles:
        allowed = " or ".join(str(r) for r in roles)
        raise PermissionDenied(
            f"{principal.describe()} may not call this method: it requires role {allowed}"
        )
    return principal


@contextmanager
def principal_scope(principal: Principal) -> Iterator[Principal]:
    """Run code as ``principal`` (tests, in-process callers): ``with principal_scope(p):``."""
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)


# --- interceptor -----------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """``context.abort`` always raises; this tells the type checker so."""
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")


_REFUSALS = (PermissionDenied, InvalidArgument)


def _refuse(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    """PERMISSION_DENIED with the message, or INVALID_ARGUMENT with field violations."""
    if isinstance(error, InvalidArgument):
        context.abort_with_status(error.status())
        raise AssertionError("grpc context.abort_with_status returned")
    _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(error))


def _bearer(metadata: Any) -> str | None:
    """The token of ``authorization: Bearer <token>`` (RFC 6750: ``Bearer 1*SP token``),
    "" for another scheme, None without the header. The token is not trimmed:
    :func:`parse_api_key` refuses whitespace and control characters around it."""
    for key, value in metadata or ():
        if key.lower() == METADATA_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer":
                return ""
            return token.lstrip(" ")
    return None


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call except health and reflection; sets :func:`current_principal`.

    Outcomes: no ``authorization`` metadata or not ``Bearer rsd_…`` -> UNAUTHENTICATED;
    unknown, revoked or wrong secret -> UNAUTHENTICATED (indistinguishable on purpose);
    authenticator failure -> UNAVAILABLE; :class:`PermissionDenied` raised by the handler
    -> PERMISSION_DENIED with its message; :class:`~residuals.platform.errors.InvalidArgument`
    raised by the handler -> INVALID_ARGUMENT with ``google.rpc.BadRequest`` field violations.
    """

    def __init__(
        self, authenticator: Authenticator, *, public_services: frozenset[str] = PUBLIC_SERVICES
    ) -> None:
        self.authenticator = authenticator
        self.public_services = public_services

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` authenticating each call (:class:`~residuals.platform.handlers.
        MethodWrapper`); handlers of public services unchanged."""
        service = method.lstrip("/").partition("/")[0]
        if service in self.public_services:
            return handler
        return self._wrap(handler, method)

    def _authenticate(self, metadata: Any, method: str, context: grpc.ServicerContext) -> Principal:
        """The caller's principal if it may call ``method``, or abort the RPC (abort raises)."""
        token = _bearer(metadata)
        if token is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY_MESSAGE)
        parsed = parse_api_key(token)
        if parsed is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, MALFORMED_KEY_MESSAGE)
        key_id, secret = parsed
        try:
            principal = self.authenticator.authenticate(key_id, secret)
        except Exception:
            log.exception("authenticator failed", extra={"api_key_id": key_id})
            _abort(context, grpc.StatusCode.UNAVAILABLE, BACKEND_UNAVAILABLE_MESSAGE)
        if principal is None:
            log.info("rejected API key", extra={"api_key_id": key_id})
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, REJECTED_KEY_MESSAGE)
        span = trace.get_current_span()
        span.set_attribute("enduser.id", principal.principal_id)
        span.set_attribute("enduser.role", str(principal.role))
        if not may_call(principal, method):
            only = ", ".join(sorted(ROLE_METHODS[principal.role]))
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.describe()} may not call {method}: role {principal.role} may"
                f" call only {only}",
            )
        return principal

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = behavior_of(handler)
        check = self._authenticate

        def authenticate(context: grpc.ServicerContext) -> Principal:
            return check(context.invocation_metadata(), method, context)

        def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
            principal = authenticate(context)
            token = _current.set(principal)
            try:
                return behavior(request, context)
            except _REFUSALS as refused:
                _refuse(context, refused)
            finally:
                _current.reset(token)

        def streaming_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            principal = authenticate(context)
            # Set around each step rather than across yields: a generator abandoned
            # mid-stream must not leave its principal behind in the worker thread.
            token = _current.set(principal)
            try:
                responses = iter(behavior(request, context))
            except _REFUSALS as refused:
                _refuse(context, refused)
            finally:
                _current.reset(token)
            while True:
                token = _current.set(principal)
                try:
                    item = next(responses)
                except StopIteration:
                    return
                except _REFUSALS as refused:
                    _refuse(context, refused)
                finally:
                    _current.reset(token)
                yield item

        return rewrap_handler(handler, unary_response, streaming_response)
