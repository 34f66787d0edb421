"""Run a Residuals service as a real subprocess (``python -m residuals.<name>``) for tests:
free ports, readiness through gRPC health, JSON logs captured to a file, clean stop; plus
a tiny OTLP trace collector (a gRPC ``TraceService``) that records exported spans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from residuals.platform.ports import free_port
from residuals.platform.roles import role_env


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int
    metrics_port: int

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.process.returncode}:\n"
                        + self.log_path.read_text(errors="replace")[-4000:]
                    )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not healthy after {timeout} s")
                time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


@contextlib.contextmanager
def run_service(
    name: str, env: dict[str, str], log_dir: Path, *, module: str | None = None
) -> Iterator[ServiceProcess]:
    """Start ``python -m residuals.<name>`` (or ``module``) with ``env`` on free ports, as
    the service's own PostgreSQL role unless ``env`` says otherwise."""
    grpc_port, metrics_port = free_port(), free_port()
    module = module or f"residuals.{name}"
    full_env = {
        **os.environ,
        **role_env(module.removeprefix("residuals.")),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(metrics_port),
        "LOG_FORMAT": "json",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        **env,
    }
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(name, process, log_path, grpc_port, metrics_port)
    try:
        yield service
    finally:
        service.stop()


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
