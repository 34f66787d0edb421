"""Helpers for server interceptors that wrap a method handler's behaviour.

Kept apart from :mod:`residuals.platform.grpc_server` so that interceptors the server
installs (stream limits) and the auth interceptor can share them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
