"""Helpers for server interceptors that wrap a method handler's behaviour.

Kept apart from :mod:`residuals.platform.grpc_server` so that interceptors the server
installs (stream limits) and the auth interceptor can share them without an import cycle.

Every interceptor of the platform is a :class:`MethodWrapper`: it wraps a method's handler
ONCE, and the wrapped behaviour reads what it needs of a call (its metadata) from the
call's context. :class:`WrapperPipeline` composes such wrappers into one
``grpc.ServerInterceptor`` that builds each method's wrapped handler on its first call and
reuses it, so a call pays for no interceptor set-up (grpcio's own interceptor chain builds
new wrappers for every call on its single polling thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import grpc


def behavior_of(handler: grpc.RpcMethodHandler) -> Any:
    """The function that serves ``handler``'s RPCs, whatever their kind."""
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def is_non_blocking(handler: grpc.RpcMethodHandler) -> bool:
    """grpc calls these (health Watch) with an extra callback argument that a wrapper
    would hide, turning them into thread-holding blocking streams: leave them be."""
    return bool(getattr(behavior_of(handler), "experimental_non_blocking", False))


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    unary_response: Callable[..., Any],
    streaming_response: Callable[..., Any],
) -> grpc.RpcMethodHandler:
    """The same RPC kind and serializers as ``handler``, with new behaviour functions.

    ``unary_response`` serves RPCs that answer once, ``streaming_response`` those that
    stream their answer; interceptors use this to wrap every kind alike.
    """
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_response, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming_response, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary_response, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming_response, **kwargs)


@runtime_checkable
class MethodWrapper(Protocol):
    """Wraps one method's handler for all of its calls (``method``: ``/pkg.Service/M``).

    The wrapped behaviour must take everything particular to a call from its arguments
    (``context.invocation_metadata()``), never from the call that happened to come first.
    Return ``handler`` itself to leave a method alone.
    """

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler: ...


class WrapperPipeline(grpc.ServerInterceptor):  # type: ignore[misc]
    """Several :class:`MethodWrapper` as one interceptor, the first outermost; each
    method's wrapped handler is built once and reused while the server's handler for it
    stays the same."""

    def __init__(self, wrappers: Sequence[MethodWrapper]) -> None:
        self.wrappers = tuple(wrappers)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = handler
        for wrapper in reversed(self.wrappers):
            wrapped = wrapper.wrap(wrapped, method)
        with self._lock:
            self._wrapped[method] = (handler, wrapped)
        return wrapped
