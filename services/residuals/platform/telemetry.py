"""One telemetry initialisation for every service: logs, traces, metrics endpoint.

A service calls :func:`init_telemetry` once at start-up with its ``TelemetrySettings``
and gets back a :class:`Telemetry` to shut down on exit. It sets up:

* structured logging (:mod:`residuals.platform.logs`), JSON lines carrying trace ids;
* the OpenTelemetry ``TracerProvider`` with ``service.name`` from ``OTEL_SERVICE_NAME``.
  Spans are always created (so trace context propagates across Kafka and gRPC even when
  nothing is exported); they are exported over OTLP gRPC only when an endpoint is set.
  Without one, gRPC servers' spans carry their context but record nothing
  (:func:`unexported_span`);
* the Prometheus ``/metrics`` HTTP endpoint when ``METRICS_PORT`` > 0.

It also holds the W3C trace-context helpers. Usage events cross several Kafka hops
(SDK -> usage topic -> meter -> rated/alerts topics -> ledger/alerts), so the context is
injected into Kafka record headers (``list[tuple[str, bytes]]``, the confluent-kafka
shape) and gRPC metadata, and can be carried inside a message as
``residuals.v1.TraceContext``. The propagator is fixed to W3C Trace Context + Baggage,
not taken from ``OTEL_PROPAGATORS``, because every hop must agree on the wire format.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from residuals.platform.config import TelemetrySettings
from residuals.platform.logs import configure_logging

if TYPE_CHECKING:
    from residuals.v1 import common_pb2

log = logging.getLogger(__name__)

#: W3C Trace Context (traceparent/tracestate) plus W3C Baggage.
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

KafkaHeaders = list[tuple[str, bytes]]
GrpcMetadata = list[tuple[str, str]]
# What clients hand back: confluent-kafka gives list[tuple[str, bytes]] or None; aiokafka and
# faust may give a mapping; grpc gives a sequence of (key, value) pairs.
HeaderInput = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _pairs(carrier: HeaderInput) -> list[tuple[str, Any]]:
    if carrier is None:
        return []
    if isinstance(carrier, Mapping):
        return list(carrier.items())
    return [(key, value) for key, value in carrier]


class _PairsGetter(Getter[list[tuple[str, Any]]]):
    """Reads header/metadata pairs; names compare case-insensitively, values bytes or str."""

    def get(self, carrier: list[tuple[str, Any]], key: str) -> list[str] | None:
        wanted = key.lower()
        values = [_as_text(v) for k, v in carrier if k.lower() == wanted]
        found = [v for v in values if v is not None]
        return found or None

    def keys(self, carrier: list[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


class _DictSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


_GETTER = _PairsGetter()
_SETTER = _DictSetter()


def _inject(context: Context | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    PROPAGATOR.inject(fields, context=context, setter=_SETTER)
    return fields


def inject_kafka_headers(
    headers: Sequence[tuple[str, bytes]] | None = None, *, context: Context | None = None
) -> KafkaHeaders:
    """Headers for a Kafka record: ``headers`` plus the current (or given) trace context.

    Existing trace headers are replaced, so re-producing a consumed record with its
    headers carries the new span, not the old one. Without an active span, nothing is
    added.
    """
    fields = _inject(context)
    kept = [(k, v) for k, v in (headers or []) if k.lower() not in fields]
    return kept + [(k, v.encode("utf-8")) for k, v in fields.items()]


def extract_kafka_headers(headers: HeaderInput, *, context: Context | None = None) -> Context:
    """The trace context in a consumed record's headers (a no-op context if absent)."""
    return PROPAGATOR.extract(_pairs(headers), context=context, getter=_GETTER)


def inject_grpc_metadata(
    metadata: Sequence[tuple[str, str]] | None = None, *, context: Context | None = None
) -> GrpcMetadata:
    """Call metadata for a gRPC client call, with the current (or given) trace context."""
    fields = _inject(context)
    kept = [(k, v) for k, v in (metadata or []) if k.lower() not in fields]
    return kept + list(fields.items())


def extract_grpc_metadata(metadata: HeaderInput, *, context: Context | None = None) -> Context:
    """The trace context in a server call's ``context.invocation_metadata()``."""
    return PROPAGATOR.extract(_pairs(metadata), context=context, getter=_GETTER)


def trace_context_message(*, context: Context | None = None) -> common_pb2.TraceContext:
    """The current (or given) trace context as a ``residuals.v1.TraceContext`` message."""
    from residuals.v1 import common_pb2

    fields = _inject(context)
    return common_pb2.TraceContext(
        traceparent=fields.get("traceparent", ""), tracestate=fields.get("tracestate", "")
    )


def extract_trace_context_message(
    message: common_pb2.TraceContext | None, *, context: Context | None = None
) -> Context:
    """The context carried in a ``residuals.v1.TraceContext`` (no-op context if empty)."""
    pairs: list[tuple[str, Any]] = []
    if message is not None and message.traceparent:
        pairs.append(("traceparent", message.traceparent))
        if message.tracestate:
            pairs.append(("tracestate", message.tracestate))
    return TraceContextTextMapPropagator().extract(pairs, context=context, getter=_GETTER)


# --- spans nobody receives ----------------------------------------------------------------


def spans_exported(tracer: trace.Tracer) -> bool:
    """Whether a span of ``tracer`` would reach any span processor (an exporter, a test's
    in-memory one). False only for an SDK tracer whose provider has none: what
    :func:`init_telemetry` sets up when no OTLP endpoint is configured. Looked up on every
    call, so a processor added later is seen at once."""
    processor = getattr(tracer, "span_processor", None)
    processors = getattr(processor, "_span_processors", None)
    return processors is None or bool(processors)


def unexported_span(
    tracer: trace.Tracer,
    parent: Context,
    name: str,
    kind: trace.SpanKind,
    attributes: Mapping[str, Any],
) -> trace.Span:
    """The span ``tracer.start_span`` would start, without recording it (for a tracer whose
    spans reach no processor, :func:`spans_exported`): the same trace id, a new span id,
    the flags and trace state its sampler decides. So its context propagates exactly as
    the recorded span's would (to logs, Kafka headers, outgoing calls) while costing a
    fifth as much; its attributes and events, which nothing would receive, are dropped.
    ``tracer`` must be an SDK tracer (``span_processor``, ``sampler``, ``id_generator``)."""
    sdk: Any = tracer
    parent_context = trace.get_current_span(parent).get_span_context()
    ids = sdk.id_generator
    if parent_context.is_valid:
        trace_id = parent_context.trace_id
        random_trace_id = parent_context.trace_flags.random_trace_id
    else:
        trace_id = ids.generate_trace_id()
        random_trace_id = ids.is_trace_id_random()
    sampled = sdk.sampler.should_sample(parent, trace_id, name, kind, attributes)
    flags = trace.TraceFlags.SAMPLED if sampled.decision.is_sampled() else trace.TraceFlags.DEFAULT
    if random_trace_id:
        flags |= trace.TraceFlags.RANDOM_TRACE_ID
    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(flags),
            trace_state=sampled.trace_state,
        )
    )


# --- initialisation --------------------------------------------------------------------


@dataclass
class Telemetry:
    """What :func:`init_telemetry` set up; call :meth:`shutdown` on exit to flush spans."""

    settings: TelemetrySettings
    tracer_provider: TracerProvider
    log_handler: logging.Handler
    #: The /metrics server, when METRICS_PORT > 0.
    metrics_server: WSGIServer | None = None
    #: The port /metrics actually listens on (0 when disabled).
    metrics_port: int = 0
    _closed: bool = field(default=False, repr=False)

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer of this service's provider (use the module name, ``__name__``)."""
        return self.tracer_provider.get_tracer(name)

    def shutdown(self) -> None:
        """Flush and stop the span exporter and the metrics server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.tracer_provider.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


_installed_provider: TracerProvider | None = None


def _tracer_provider(settings: TelemetrySettings) -> TracerProvider:
    """The process-wide provider; OpenTelemetry allows setting the global one only once."""
    global _installed_provider
    if _installed_provider is not None:
        log.warning("telemetry already initialised; keeping the first tracer provider")
        return _installed_provider
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # http:// endpoints are plaintext, https:// use TLS (the exporter reads the scheme).
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _installed_provider = provider
    return provider


def _start_metrics_server(port: int) -> tuple[WSGIServer, int]:
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port)
    return server, int(server.server_port)


def init_telemetry(settings: TelemetrySettings) -> Telemetry:
    """Set up logging, tracing and the metrics endpoint for this process."""
    handler = configure_logging(
        settings.service_name, level=settings.log_level, log_format=settings.log_format
    )
    propagate.set_global_textmap(PROPAGATOR)
    provider = _tracer_provider(settings)
    telemetry = Telemetry(settings=settings, tracer_provider=provider, log_handler=handler)
    if settings.metrics_port > 0:
        telemetry.metrics_server, telemetry.metrics_port = _start_metrics_server(
            settings.metrics_port
        )
    log.info(
        "telemetry ready",
        extra={
            "otlp_endpoint": settings.otlp_endpoint or "",
            "metrics_port": telemetry.metrics_port,
        },
    )
    return telemetry
