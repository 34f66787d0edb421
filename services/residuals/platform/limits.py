"""Caps on concurrent streaming RPCs, so that no caller can starve the others.

grpcio's synchronous server runs every RPC on one worker thread for its whole life, so a
``WatchAlerts`` stream holds a thread for hours. Without caps, 16 streams from one tenant
held all 16 threads and every other call queued behind them for as long as they stayed
open. :func:`residuals.platform.grpc_server.make_grpc_server` therefore installs, innermost
(after authentication, so the caller is known):

* at most ``GRPC_MAX_STREAMS_PER_PRINCIPAL`` open streams per principal (default 4);
* at most ``GRPC_MAX_STREAMS`` open streams in all (default: the worker threads less a
  quarter), so some threads are always free for unary calls;

and grpcio itself bounds every RPC in flight, running or queued for a thread
(``GRPC_MAX_CONCURRENT_RPCS``, default 4 x ``GRPC_MAX_WORKERS``). A stream beyond a cap
is refused at once with RESOURCE_EXHAUSTED and a message naming the cap; nothing that is
already open is disturbed. Streams are RPCs with a streaming request or response
(``WatchAlerts``, ``WatchPayouts``, ``PublishStream``, reflection); calls on public
services without a principal (reflection) share one anonymous allowance. Health ``Watch``
runs without a thread and is not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from residuals.platform.handlers import behavior_of, is_non_blocking, rewrap_handler

ANONYMOUS = "(anonymous)"


class StreamSlots:
    """Counts of open streams per principal and in all, under one lock."""

    def __init__(self, *, per_principal: int, total: int) -> None:
        if per_principal < 1 or total < 1:
            raise ValueError("stream limits must be at least 1")
        self.per_principal = per_principal
        self.total = total
        self._open: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()

    def acquire(self, who: str) -> str | None:
        """Take a slot for ``who``; None when granted, else why not (the client message)."""
        with self._lock:
            mine = self._open.get(who, 0)
            if mine >= self.per_principal:
                return (
                    f"{who} already has {mine} open streams, the most one caller may hold"
                    f" (GRPC_MAX_STREAMS_PER_PRINCIPAL={self.per_principal}); close one"
                    " before opening another"
                )
            if self._all >= self.total:
                return (
                    f"the server already serves {self._all} streams, its limit"
                    f" (GRPC_MAX_STREAMS={self.total}); retry with back-off"
                )
            self._open[who] = mine + 1
            self._all += 1
            return None

    def release(self, who: str) -> None:
        with self._lock:
            left = self._open.get(who, 0) - 1
            if left > 0:
                self._open[who] = left
            else:
                self._open.pop(who, None)
            self._all = max(0, self._all - 1)

    def open_streams(self, who: str | None = None) -> int:
        """Streams open now, of ``who`` or in all."""
        with self._lock:
            return self._all if who is None else self._open.get(who, 0)


class StreamLimitInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses a streaming RPC beyond :class:`StreamSlots`' caps with RESOURCE_EXHAUSTED.

    ``caller()`` names the principal of the RPC being handled (None on public services);
    it runs inside the handler, where the auth interceptor has set it.
    """

    def __init__(self, slots: StreamSlots, caller: Callable[[], str | None]) -> None:
        self.slots = slots
        self.caller = caller

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
        """``handler`` counted against the caps if it streams (:class:`~residuals.platform.
        handlers.MethodWrapper`); unary handlers unchanged."""
        if not (handler.request_streaming or handler.response_streaming) or is_non_blocking(
            handler
        ):
            return handler
        behavior = behavior_of(handler)
        slots, caller = self.slots, self.caller

        def take(context: grpc.ServicerContext) -> str:
            who = caller() or ANONYMOUS
            refused = slots.acquire(who)
            if refused is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
            return who

        def unary_response(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            who = take(context)
            try:
                return behavior(request_iterator, context)
            finally:
                slots.release(who)

        def streaming_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            who = take(context)
            try:
                yield from behavior(request, context)
            finally:
                slots.release(who)

        return rewrap_handler(handler, unary_response, streaming_response)
