"""W3C trace context for published events, when OpenTelemetry is installed.

Each publish opens a PRODUCER span (``residuals.usage publish``) under the caller's
current context; its ``traceparent``/``tracestate`` go into the envelope
(``SignedUsageEvent.trace``) and from there into the Kafka record headers or, for the gRPC
transport, the per-batch client span links, so the trace continues through the gateway,
the meter and the ledger. Without the ``opentelemetry-api`` package (the ``otel`` extra)
nothing is traced and nothing is injected; the SDK works the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from residuals_sdk._proto import common_pb2

try:  # optional dependency
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised where OpenTelemetry is absent
    otel_trace = None  # type: ignore[assignment]
    otel_context = None  # type: ignore[assignment]
    _PROPAGATOR = None

TRACER_NAME = "residuals_sdk"


def available() -> bool:
    """True when the OpenTelemetry API is importable."""
    return otel_trace is not None


_EMPTY = common_pb2.TraceContext()


def _recording() -> bool:
    """True when an SDK tracer provider is installed (spans are recorded, not no-ops)."""
    provider = otel_trace.get_tracer_provider()
    return not isinstance(provider, (otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider))


def current_context() -> common_pb2.TraceContext:
    """The caller's active trace context, without opening a span (empty if none)."""
    if otel_trace is None:
        return _EMPTY
    if not otel_trace.get_current_span().get_span_context().is_valid:
        return _EMPTY
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return common_pb2.TraceContext(
        traceparent=carrier.get("traceparent", ""), tracestate=carrier.get("tracestate", "")
    )


@contextlib.contextmanager
def publish_span(kind: str, licence_id: str, event_id: str) -> Iterator[common_pb2.TraceContext]:
    """A PRODUCER span around one publish; yields the trace context to carry.

    Without a configured tracer provider no span is opened (that would only cost time):
    the caller's own active context, if any, is carried instead.
    """
    if otel_trace is None or not _recording():
        yield current_context()
        return
    tracer = otel_trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        "residuals.usage publish",
        kind=otel_trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "residuals",
            "messaging.operation": "publish",
            "messaging.message.id": event_id,
            "residuals.usage.kind": kind,
            "residuals.licence_id": licence_id,
        },
    ):
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        yield common_pb2.TraceContext(
            traceparent=carrier.get("traceparent", ""), tracestate=carrier.get("tracestate", "")
        )


def kafka_headers(trace: common_pb2.TraceContext) -> list[tuple[str, bytes]]:
    """``traceparent``/``tracestate`` record headers for a carried trace context."""
    headers: list[tuple[str, bytes]] = []
    if trace.traceparent:
        headers.append(("traceparent", trace.traceparent.encode("ascii")))
        if trace.tracestate:
            headers.append(("tracestate", trace.tracestate.encode("ascii")))
    return headers


@contextlib.contextmanager
def batch_span(
    method: str, traces: Sequence[common_pb2.TraceContext]
) -> Iterator[list[tuple[str, str]]]:
    """A CLIENT span for one gRPC call, linked to the events' publish spans.

    Yields the call metadata carrying the span's context (``traceparent``/``tracestate``).
    A batch mixes events from many traces, so the events' own contexts travel in their
    envelopes and appear here as span links.
    """
    if otel_trace is None:
        yield []
        return
    links = []
    for trace in traces[:64]:  # enough to navigate; a span with thousands of links is noise
        if not trace.traceparent:
            continue
        parent = _PROPAGATOR.extract({"traceparent": trace.traceparent})
        span_context = otel_trace.get_current_span(parent).get_span_context()
        if span_context.is_valid:
            links.append(otel_trace.Link(span_context))
    tracer = otel_trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        method,
        kind=otel_trace.SpanKind.CLIENT,
        links=links,
        attributes={"rpc.system": "grpc", "messaging.batch.message_count": len(traces)},
    ):
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        yield list(carrier.items())
