"""A gRPC server with what every Residuals API needs, built one way.

:func:`make_grpc_server` returns a bound (not yet started) server that has:

* bounded message sizes (4 MiB default): ingest batches are bounded, and an unbounded
  request is a memory exhaustion vector;
* the standard health service (``grpc.health.v1.Health``) for Kubernetes probes and load
  balancers, with a status per registered service; with TLS, optionally also on a
  plaintext port of its own (``GRPC_HEALTH_PORT``) that serves nothing else, because the
  kubelet's gRPC probe cannot speak TLS;
* server reflection, so ``grpcurl`` and similar tools work without the .proto files;
* Prometheus series: ``grpc_server_handled_total`` by service, method, type and status
  code, plus the ``grpc_server_handling_seconds`` latency histogram (the names of
  go-grpc-prometheus, so standard dashboards apply);
* OpenTelemetry tracing: the caller's W3C trace context is extracted from metadata and a
  server span opened per RPC, active while the handler runs, so logs and Kafka records
  produced by the handler join the caller's trace.

Both are one :class:`CallObserver`; with authentication and the stream caps it forms a
single interceptor that wraps each method once (:class:`~residuals.platform.handlers.
WrapperPipeline`), so a call pays for the observation itself and nothing else.
``opentelemetry-instrumentation-grpc`` is not a dependency; the interceptor here is small.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from residuals.platform.auth import current_principal_id
from residuals.platform.config import ConfigError, env
from residuals.platform.failures import FailureBoundary
from residuals.platform.handlers import (
    MethodWrapper,
    WrapperPipeline,
    behavior_of,
    is_non_blocking,
    rewrap_handler,
)
from residuals.platform.limits import StreamLimitInterceptor, StreamSlots
from residuals.platform.telemetry import extract_grpc_metadata, spans_exported, unexported_span
from residuals.platform.threadpool import LifoThreadPool

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class GrpcSettings:
    """Listening address and limits of a service's gRPC server (``group(GrpcSettings)``)."""

    host: str = env("GRPC_HOST", "0.0.0.0", help="address the gRPC server binds")
    port: int = env("GRPC_PORT", 50051, help="gRPC port (0 = ephemeral)", minimum=0, maximum=65535)
    max_message_bytes: int = env(
        "GRPC_MAX_MESSAGE_BYTES",
        4 * MIB,
        help="largest request or response message accepted",
        minimum=1024,
    )
    max_workers: int = env(
        "GRPC_MAX_WORKERS", 16, help="threads serving RPCs concurrently", minimum=2
    )
    max_concurrent_rpcs: int = env(
        "GRPC_MAX_CONCURRENT_RPCS",
        0,
        help="RPCs in flight (running or waiting for a thread) beyond which new ones get"
        " RESOURCE_EXHAUSTED (0 = 4 x GRPC_MAX_WORKERS)",
        minimum=0,
    )
    max_streams: int = env(
        "GRPC_MAX_STREAMS",
        0,
        help="open streaming RPCs in all, below GRPC_MAX_WORKERS so unary calls always find a"
        " thread (0 = GRPC_MAX_WORKERS less a quarter)",
        minimum=0,
    )
    max_streams_per_principal: int = env(
        "GRPC_MAX_STREAMS_PER_PRINCIPAL",
        4,
        help="open streaming RPCs one caller may hold; more get RESOURCE_EXHAUSTED",
        minimum=1,
    )
    tls_cert: Path | None = env(
        "GRPC_TLS_CERT", None, help="PEM certificate chain; unset = plaintext"
    )
    tls_key: Path | None = env("GRPC_TLS_KEY", None, help="PEM private key for GRPC_TLS_CERT")
    tls_client_ca: Path | None = env(
        "GRPC_TLS_CLIENT_CA", None, help="PEM CA bundle; set = require client certificates (mTLS)"
    )
    health_port: int | None = env(
        "GRPC_HEALTH_PORT",
        None,
        help="plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
        "(the kubelet's); unset = health only on GRPC_PORT",
        minimum=0,
        maximum=65535,
    )
    shutdown_grace_seconds: float = env(
        "GRPC_SHUTDOWN_GRACE_SECONDS",
        10.0,
        help="how long in-flight RPCs may finish on shutdown",
        minimum=0,
    )

    def __post_init__(self) -> None:
        if self.max_streams >= self.max_workers:
            raise ConfigError(
                f"GRPC_MAX_STREAMS={self.max_streams} must be below"
                f" GRPC_MAX_WORKERS={self.max_workers}: streams hold a thread each, and"
                " unary calls need one too"
            )

    @property
    def rpc_limit(self) -> int:
        """RPCs in flight at most (grpcio refuses the rest)."""
        return self.max_concurrent_rpcs or 4 * self.max_workers

    @property
    def stream_limit(self) -> int:
        """Open streams at most: a quarter of the threads (at least one) stays free."""
        return self.max_streams or self.max_workers - max(1, self.max_workers // 4)


@dataclass(frozen=True)
class Servicer:
    """A service implementation with the generated function that registers it.

    ``Servicer(MyIngest(), ingest_pb2_grpc.add_IngestServiceServicer_to_server,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"])``
    """

    implementation: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    descriptor: ServiceDescriptor

    @property
    def name(self) -> str:
        """Fully qualified service name, e.g. ``residuals.v1.IngestService``."""
        return str(self.descriptor.full_name)


# --- interceptors ------------------------------------------------------------------------


def _split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service or "unknown", method or "unknown"


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _final_code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the client receives: what the handler set, else OK / CANCELLED / UNKNOWN."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class GrpcMetrics:
    """The Prometheus series of gRPC servers (one set per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from RPC start to completion (streams: until the last message).",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


@functools.cache
def default_metrics() -> GrpcMetrics:
    """The series on the global registry, created once per process."""
    return GrpcMetrics()


class _MethodSeries:
    """One method's series: started, latency, and handled by status code."""

    def __init__(self, metrics: GrpcMetrics, labels: tuple[str, str, str]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.started = metrics.started.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.handled: dict[grpc.StatusCode, Any] = {}

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        self.latency.observe(seconds)
        counter = self.handled.get(code)
        if counter is None:
            counter = self.handled[code] = self.metrics.handled.labels(*self.labels, code.name)
        counter.inc()


class _ServerSpans:
    """The SERVER spans of one method, children of the caller's trace context."""

    def __init__(self, tracer: trace.Tracer, service: str, method: str) -> None:
        self.tracer = tracer
        self.name = f"{service}/{method}"
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    def start(self, metadata: Any) -> trace.Span:
        parent = extract_grpc_metadata(metadata)
        if not spans_exported(self.tracer):
            # Nothing would see the span's attributes: only its context, which is the same.
            return unexported_span(self.tracer, parent, self.name, SpanKind.SERVER, self.attributes)
        return self.tracer.start_span(
            self.name, context=parent, kind=SpanKind.SERVER, attributes=self.attributes
        )


class _Observed:
    """One RPC under observation: its span (current while the handler runs) and timing."""

    __slots__ = ("context", "series", "span", "started")

    def __init__(self, series: _MethodSeries, span: trace.Span) -> None:
        series.started.inc()
        self.series = series
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.started = time.perf_counter()

    def finish(self, code: grpc.StatusCode, error: BaseException | None) -> None:
        """Called exactly once when the RPC's outcome is known."""
        self.series.done(code, time.perf_counter() - self.started)
        span = self.span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if error is not None and not isinstance(error, GeneratorExit):
                span.record_exception(error)
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


class CallObserver(grpc.ServerInterceptor):  # type: ignore[misc]
    """Traces and counts every RPC (a :class:`~residuals.platform.handlers.MethodWrapper`).

    Each call gets a SERVER span, child of the W3C trace context in its metadata and current
    while the handler runs, so logs and Kafka records the handler produces join the caller's
    trace; and the Prometheus series of :class:`GrpcMetrics` by method and final status.
    When no span processor would receive the span (no exporter configured), the span
    carries the same context but records nothing (:func:`~residuals.platform.telemetry.
    unexported_span`): at a thousand calls a second the recording was a tenth of a call.
    """

    def __init__(
        self, tracer: trace.Tracer | None = None, metrics: GrpcMetrics | None = None
    ) -> None:
        self.tracer = tracer or trace.get_tracer(__name__)
        self.metrics = metrics or default_metrics()

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
        if is_non_blocking(handler):
            return handler
        service, name = _split_method(method)
        series = _MethodSeries(self.metrics, (service, name, _rpc_type(handler)))
        spans = _ServerSpans(self.tracer, service, name)
        behavior = behavior_of(handler)

        def unary_response(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Observed(series, spans.start(context.invocation_metadata()))
            token = attach(call.context)
            try:
                response = behavior(request, context)
            except BaseException as error:
                detach(token)
                call.finish(_final_code(context, error), error)
                raise
            detach(token)
            call.finish(_final_code(context, None), None)
            return response

        def streaming_response(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Observed(series, spans.start(context.invocation_metadata()))
            try:
                token = attach(call.context)
                try:
                    responses = iter(behavior(request, context))
                finally:
                    detach(token)
                while True:
                    # Current again for each item: the handler's generator runs in next().
                    token = attach(call.context)
                    try:
                        item = next(responses)
                    except StopIteration:
                        break
                    finally:
                        detach(token)
                    yield item
            except BaseException as error:
                call.finish(_final_code(context, error), error)
                raise
            call.finish(_final_code(context, None), None)

        return rewrap_handler(handler, unary_response, streaming_response)


def _pipelines(layers: Sequence[grpc.ServerInterceptor]) -> list[grpc.ServerInterceptor]:
    """``layers`` (outermost first) as grpc interceptors: consecutive
    :class:`~residuals.platform.handlers.MethodWrapper` become one :class:`WrapperPipeline`
    (each method wrapped once, not per call); any other interceptor stays as it is."""
    out: list[grpc.ServerInterceptor] = []
    run: list[MethodWrapper] = []
    for layer in layers:
        if isinstance(layer, MethodWrapper):
            run.append(layer)
            continue
        if run:
            out.append(WrapperPipeline(run))
            run = []
        out.append(layer)
    if run:
        out.append(WrapperPipeline(run))
    return out


# --- server ------------------------------------------------------------------------------

HEALTH_SERVICE = str(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)


class GrpcServer:
    """A bound gRPC server plus its health servicer; ``start()``/``stop()`` it."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        grace: float,
        health_server: tuple[grpc.Server, int] | None = None,
        *,
        threads: futures.Executor | None = None,
    ) -> None:
        self.server = server
        self._threads = threads
        #: The bound port (the ephemeral one when settings asked for port 0).
        self.port = port
        self.health = health_servicer
        self._health_server = health_server[0] if health_server else None
        #: The plaintext health-only port (GRPC_HEALTH_PORT), or None.
        self.health_port = health_server[1] if health_server else None
        #: Application services registered (without health and reflection).
        self.service_names = tuple(service_names)
        self.grace = grace

    def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Report SERVING/NOT_SERVING for one service, or for all and the server ("")."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [service] if service is not None else ["", *self.service_names]:
            self.health.set(name, status)

    def start(self) -> GrpcServer:
        self.server.start()
        if self._health_server is not None:
            self._health_server.start()
        log.info(
            "gRPC server listening", extra={"port": self.port, "health_port": self.health_port}
        )
        return self

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, then stop, letting in-flight RPCs finish for ``grace`` s."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace if grace is None else grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        if self._threads is not None:
            self._threads.shutdown(wait=False)  # idle threads end; a late handler may finish

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        return bool(self.server.wait_for_termination(timeout))


def _credentials(settings: GrpcSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None:
        return None
    if settings.tls_key is None:
        raise ValueError("GRPC_TLS_CERT is set but GRPC_TLS_KEY is not")
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    if settings.tls_client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=settings.tls_client_ca.read_bytes(), require_client_auth=True
    )


def client_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials for a service calling another: ``ca`` (unset = system CAs) checks the
    server; ``cert``/``key`` answer a server that requires client certificates (mTLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def is_loopback(address: str) -> bool:
    """Whether a gRPC target (``host:port``, ``[::1]:port``, ``dns:///host:port``, a unix
    socket) is on this machine: the SDK's rule, so operators and vendors agree on it."""
    from residuals_sdk.transports.security import all_loopback, grpc_target_hosts

    return all_loopback(grpc_target_hosts(address))


def operator_channel(
    address: str,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    plaintext: bool = False,
) -> grpc.Channel:
    """A channel for an operator's command: TLS (system CAs unless ``ca``; mTLS with
    ``cert``/``key``) to anything but this machine, plaintext to loopback or when asked:
    an admin key must not cross a network in the clear by default."""
    if ca or cert or not (plaintext or is_loopback(address)):
        return grpc.secure_channel(address, client_credentials(ca, cert, key))
    return grpc.insecure_channel(address)


def make_grpc_server(
    settings: GrpcSettings,
    *,
    servicers: Sequence[Servicer] = (),
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    metrics: GrpcMetrics | None = None,
    tracer: trace.Tracer | None = None,
) -> GrpcServer:
    """Build and bind a server with health, reflection, metrics and tracing.

    Interceptor order: tracing and metrics (outermost, so everything else runs inside the
    span), then the :class:`~residuals.platform.failures.FailureBoundary` (no exception
    text reaches a caller), then ``interceptors`` (authentication), then the stream caps of
    :mod:`residuals.platform.limits` (innermost: they need the authenticated caller); those
    that are :class:`~residuals.platform.handlers.MethodWrapper` (all of the platform's)
    run as one interceptor.
    Every registered service starts SERVING; flip it with :meth:`GrpcServer.set_serving`
    while a dependency is unavailable.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # A restarted server must be able to rebind at once; but two live servers must not
        # share a port by accident.
        ("grpc.so_reuseport", 0),
    ]
    threads = LifoThreadPool(settings.max_workers, thread_name_prefix="grpc-server")
    server = grpc.server(
        threads,
        interceptors=_pipelines(
            [
                CallObserver(tracer, metrics),
                FailureBoundary(),
                *interceptors,
                StreamLimitInterceptor(
                    StreamSlots(
                        per_principal=settings.max_streams_per_principal,
                        total=settings.stream_limit,
                    ),
                    current_principal_id,
                ),
            ]
        ),
        options=options,
        maximum_concurrent_rpcs=settings.rpc_limit,
    )
    for servicer in servicers:
        servicer.add_to_server(servicer.implementation, server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.name for s in servicers]
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)

    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    health_only = None
    if settings.health_port is not None:
        health_only = _health_server(settings.host, settings.health_port, health_servicer)
    return GrpcServer(
        server,
        port,
        health_servicer,
        names,
        settings.shutdown_grace_seconds,
        health_only,
        threads=threads,
    )


def _health_server(
    host: str, port: int, servicer: health.HealthServicer
) -> tuple[grpc.Server, int]:
    """A plaintext server with nothing but the (shared) health service, on its own threads.

    It reveals only SERVING/NOT_SERVING, so it needs no TLS; it lets the kubelet probe a
    server whose API port requires TLS (and, with mTLS, a client certificate).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health"),
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4096)],
        maximum_concurrent_rpcs=8,
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC health port {host}:{port}")
    return server, bound
