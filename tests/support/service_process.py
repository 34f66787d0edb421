"""Run a Residuals service as a real subprocess for tests (``run_service``, on the shared
launcher :class:`residuals.platform.processes.ServiceProcess`: free ports, readiness through
gRPC health, JSON logs captured to a file, clean stop); plus a tiny OTLP trace collector (a
gRPC ``TraceService``) that records exported spans."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from residuals.platform.processes import ServiceProcess
from residuals.platform.roles import role_env

__all__ = ["ExportedSpan", "OtlpCollector", "ServiceProcess", "otlp_collector", "run_service"]


@contextlib.contextmanager
def run_service(
    name: str, env: dict[str, str], log_dir: Path, *, module: str | None = None
) -> Iterator[ServiceProcess]:
    """Start ``python -m residuals.<name>`` (or ``module``) with ``env`` on free ports, as
    the service's own PostgreSQL role unless ``env`` says otherwise; stop it on exit
    (SIGTERM, SIGKILL after 20 s)."""
    module = module or f"residuals.{name}"
    full_env = {
        **role_env(module.removeprefix("residuals.")),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        **env,
    }
    service = ServiceProcess(name, module, full_env, log_dir).start()
    try:
        yield service
    finally:
        service.stop(grace=20)


# --- OTLP collector stub ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ExportedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                        )
                    )
        with self.lock:
            self.spans.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """Spans received over OTLP/gRPC, queryable by trace id."""

    def __init__(self, collector: _Collector, port: int) -> None:
        self._collector = collector
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def spans(self, trace_id: str | None = None) -> list[ExportedSpan]:
        with self._collector.lock:
            spans = list(self._collector.spans)
        return [s for s in spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[ExportedSpan]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    "spans not exported in time; got:\n"
                    + "\n".join(f"{s.service} {s.name} {s.trace_id}" for s in spans)
                )
            time.sleep(0.1)


@contextlib.contextmanager
def otlp_collector() -> Iterator[OtlpCollector]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    collector = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OtlpCollector(collector, port)
    finally:
        server.stop(0)
