"""What a caller hears when a handler fails in a way it did not mean to.

grpcio answers an exception that escapes a handler with UNKNOWN and the exception's text
as the message: SQL, table names and lock details would reach a vendor (and, through the
HTTP gateway, a browser). :class:`FailureBoundary` answers instead:

- UNAVAILABLE for a transient database failure (a deadlock, a serialization conflict, a
  lost or exhausted connection): the call did not take effect and a retry is the cure,
  which is what the SDKs and gateways do on UNAVAILABLE;
- INTERNAL for anything else, with only the trace id to quote to an operator, while the
  full exception goes to the log within the same trace.

A call that aborted on purpose (``context.abort``) keeps its status untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
from opentelemetry import trace

from residuals.platform.handlers import behavior_of, is_non_blocking, rewrap_handler

log = logging.getLogger(__name__)

TRANSIENT_MESSAGE = "the database was briefly unable to complete the call; retry it"


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a database failure that a retry of the whole call can cure."""
    # Deadlocks, serialization failures, lost connections and pool timeouts all are.
    return isinstance(error, psycopg.OperationalError)


def internal_message() -> str:
    trace_id = trace.get_current_span().get_span_context().trace_id
    if not trace_id:
        return "internal error; the service logged it"
    return f"internal error; the service logged it under trace {trace_id:032x}"


class FailureBoundary:
    """Unexpected exceptions as UNAVAILABLE or INTERNAL (a :class:`~residuals.platform.
    handlers.MethodWrapper`); must run inside the tracing wrapper so the span is current."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if is_non_blocking(handler):
            return handler
        behavior = behavior_of(handler)

        def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as error:
                _answer(context, method, error)

        def streaming_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except Exception as error:
                _answer(context, method, error)

        return rewrap_handler(handler, unary_response, streaming_response)


def _answer(context: grpc.ServicerContext, method: str, error: Exception) -> None:
    """Re-raise a deliberate abort; otherwise log ``error`` and abort with a safe status."""
    if context.code() is not None:
        raise error  # the handler chose its status (context.abort raises after setting it)
    if is_transient(error):
        log.warning("transient database failure", extra={"method": method, "error": repr(error)})
        context.abort(grpc.StatusCode.UNAVAILABLE, TRANSIENT_MESSAGE)
    log.error("handler failed", extra={"method": method}, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, internal_message())
