"""A real gRPC server from make_grpc_server over a real socket: health, reflection,
metrics and tracing interceptors. Needs no Kafka or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from prometheus_client import CollectorRegistry

from residuals.platform.failures import TRANSIENT_MESSAGE
from residuals.platform.grpc_server import (
    GrpcMetrics,
    GrpcServer,
    GrpcSettings,
    Servicer,
    make_grpc_server,
)
from residuals.platform.telemetry import inject_grpc_metadata
from residuals.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
)

INGEST = "residuals.v1.IngestService"
ALERTS = "residuals.v1.AlertService"
PARENT_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self) -> None:
        self.seen_trace_ids: list[int] = []
        self.seen_spans: list[trace.Span] = []
        #: Raised by the next call, as a handler's bug or a database failure would be.
        self.fail_with: Exception | None = None

    def PublishBatch(
        self, request: ingest_pb2.PublishBatchRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.PublishBatchResponse:
        self.seen_spans.append(trace.get_current_span())
        self.seen_trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        if self.fail_with is not None:
            raise self.fail_with
        if not request.events:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty batch")
        return ingest_pb2.PublishBatchResponse(
            results=[
                ingest_pb2.PublishResult(index=i, status=ingest_pb2.PUBLISH_STATUS_ACCEPTED)
                for i, _ in enumerate(request.events)
            ]
        )


class FakeAlerts(alert_service_pb2_grpc.AlertServiceServicer):
    def __init__(self) -> None:
        self.seen_trace_ids: list[int] = []
        #: Raised after the first item of the next stream.
        self.fail_with: Exception | None = None

    def WatchAlerts(
        self, request: alert_service_pb2.WatchAlertsRequest, context: grpc.ServicerContext
    ) -> Iterator[alert_service_pb2.WatchAlertsResponse]:
        for sequence in (1, 2, 3):
            if sequence == 2 and self.fail_with is not None:
                raise self.fail_with
            self.seen_trace_ids.append(trace.get_current_span().get_span_context().trace_id)
            yield alert_service_pb2.WatchAlertsResponse(
                heartbeat=common_pb2.Heartbeat(latest_sequence=sequence)
            )


class Harness:
    def __init__(self, *, exported: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        if exported:
            provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.ingest, self.alerts = FakeIngest(), FakeAlerts()
        self.server: GrpcServer = make_grpc_server(
            GrpcSettings(host="127.0.0.1", port=0, max_workers=4, shutdown_grace_seconds=1),
            servicers=[
                Servicer(
                    self.ingest,
                    ingest_pb2_grpc.add_IngestServiceServicer_to_server,
                    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
                ),
                Servicer(
                    self.alerts,
                    alert_service_pb2_grpc.add_AlertServiceServicer_to_server,
                    alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"],
                ),
            ],
            metrics=GrpcMetrics(self.registry),
            tracer=provider.get_tracer("test"),
        ).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        grpc.channel_ready_future(self.channel).result(timeout=10)

    def handled(self, service: str, method: str, code: str, rpc_type: str = "unary") -> float:
        labels = {
            "grpc_service": service,
            "grpc_method": method,
            "grpc_type": rpc_type,
            "grpc_code": code,
        }
        return self.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=0)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def _check(channel: grpc.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_binds_an_ephemeral_port(harness: Harness) -> None:
    assert harness.server.port > 0
    assert harness.server.service_names == (INGEST, ALERTS)


def test_health_serving_then_not_serving(harness: Harness) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert _check(harness.channel) == serving
    assert _check(harness.channel, INGEST) == serving

    harness.server.set_serving(False, INGEST)
    assert _check(harness.channel, INGEST) == not_serving
    assert _check(harness.channel, ALERTS) == serving

    harness.server.set_serving(False)
    assert _check(harness.channel) == not_serving
    harness.server.set_serving(True)
    assert _check(harness.channel) == serving
    assert _check(harness.channel, INGEST) == serving

    with pytest.raises(grpc.RpcError) as unknown:
        _check(harness.channel, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(harness: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {
        INGEST,
        ALERTS,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # And it can serve the descriptors (so grpcurl can call methods without .proto files).
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=INGEST)
    (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    assert reply.file_descriptor_response.file_descriptor_proto


def test_prometheus_interceptor_counts_by_method_and_code(harness: Harness) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(harness.channel)
    batch = ingest_pb2.PublishBatchRequest(events=[signed_event()])
    assert stub.PublishBatch(batch, timeout=5).results[0].status == (
        ingest_pb2.PUBLISH_STATUS_ACCEPTED
    )
    stub.PublishBatch(batch, timeout=5)
    with pytest.raises(grpc.RpcError) as failed:
        stub.PublishBatch(ingest_pb2.PublishBatchRequest(), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert harness.handled(INGEST, "PublishBatch", "OK") == 2
    assert harness.handled(INGEST, "PublishBatch", "INVALID_ARGUMENT") == 1
    latency = harness.registry.get_sample_value(
        "grpc_server_handling_seconds_count",
        {"grpc_service": INGEST, "grpc_method": "PublishBatch", "grpc_type": "unary"},
    )
    assert latency == 3
    # Health checks go through the interceptors too.
    _check(harness.channel)
    assert harness.handled("grpc.health.v1.Health", "Check", "OK") == 1


def test_server_stream_is_counted_and_traced(harness: Harness) -> None:
    stub = alert_service_pb2_grpc.AlertServiceStub(harness.channel)
    parent = trace.set_span_in_context(
        NonRecordingSpan(
            SpanContext(
                trace_id=PARENT_TRACE_ID,
                span_id=0x00F067AA0BA902B7,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        )
    )
    items = list(
        stub.WatchAlerts(
            alert_service_pb2.WatchAlertsRequest(),
            metadata=inject_grpc_metadata(context=parent),
            timeout=5,
        )
    )
    assert [i.heartbeat.latest_sequence for i in items] == [1, 2, 3]
    assert harness.handled(ALERTS, "WatchAlerts", "OK", "server_stream") == 1
    # The handler's generator body ran inside the server span, child of the caller's trace.
    assert harness.alerts.seen_trace_ids == [PARENT_TRACE_ID] * 3
    (span,) = [s for s in harness.spans.get_finished_spans() if s.name.endswith("WatchAlerts")]
    assert span.kind == SpanKind.SERVER
    assert span.context.trace_id == PARENT_TRACE_ID
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0


def test_unary_span_marks_errors(harness: Harness) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(harness.channel)
    with pytest.raises(grpc.RpcError):
        stub.PublishBatch(ingest_pb2.PublishBatchRequest(), timeout=5)
    (span,) = [s for s in harness.spans.get_finished_spans() if s.name.endswith("PublishBatch")]
    assert span.name == f"{INGEST}/PublishBatch"
    assert not span.status.is_ok
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # No incoming context: a new trace, still active inside the handler.
    assert harness.ingest.seen_trace_ids == [span.context.trace_id]


def _parent(flags: int) -> Any:
    return trace.set_span_in_context(
        NonRecordingSpan(
            SpanContext(
                trace_id=PARENT_TRACE_ID,
                span_id=0x00F067AA0BA902B7,
                is_remote=True,
                trace_flags=TraceFlags(flags),
            )
        )
    )


@pytest.mark.parametrize("flags", [TraceFlags.SAMPLED, TraceFlags.DEFAULT])
def test_without_an_exporter_spans_record_nothing_but_continue_the_trace(flags: int) -> None:
    """No span processor (no OTLP endpoint): the handler still runs in a span of the
    caller's trace, with a span id of its own and the caller's sampling decision, so what
    it logs or produces joins that trace; nothing is recorded."""
    harness = Harness(exported=False)
    try:
        stub = ingest_pb2_grpc.IngestServiceStub(harness.channel)
        request = ingest_pb2.PublishBatchRequest(events=[signed_event()])
        stub.PublishBatch(request, metadata=inject_grpc_metadata(context=_parent(flags)))
        stub.PublishBatch(request)  # no caller context: a new trace
        (joined, root) = harness.ingest.seen_spans
        assert not joined.is_recording()
        context = joined.get_span_context()
        assert context.trace_id == PARENT_TRACE_ID
        assert context.is_valid and context.span_id != 0x00F067AA0BA902B7
        assert not context.is_remote
        assert context.trace_flags.sampled == bool(flags & TraceFlags.SAMPLED)
        # A root span is sampled, as the SDK's default sampler decides.
        assert root.get_span_context().is_valid and root.get_span_context().trace_flags.sampled
        assert root.get_span_context().trace_id != PARENT_TRACE_ID
        assert harness.handled(INGEST, "PublishBatch", "OK") == 2
    finally:
        harness.close()


def test_max_message_size_is_enforced() -> None:
    server = make_grpc_server(
        GrpcSettings(host="127.0.0.1", port=0, max_message_bytes=1024),
        servicers=[
            Servicer(
                FakeIngest(),
                ingest_pb2_grpc.add_IngestServiceServicer_to_server,
                ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
            )
        ],
        metrics=GrpcMetrics(CollectorRegistry()),
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            big = ingest_pb2.PublishBatchRequest(events=[signed_event(payload=b"x" * 4096)])
            with pytest.raises(grpc.RpcError) as too_big:
                stub.PublishBatch(big, timeout=5)
            assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(grace=0)


def signed_event(payload: bytes = b"\x0a\x01a") -> Any:
    from residuals.v1 import usage_pb2

    return usage_pb2.SignedUsageEvent(payload=payload, signature=b"s" * 64, key_id="k")


def test_a_handler_bug_answers_internal_without_its_text(harness: Harness) -> None:
    """grpcio would answer UNKNOWN with the exception's text (SQL, table names)."""
    stub = ingest_pb2_grpc.IngestServiceStub(harness.channel)
    harness.ingest.fail_with = KeyError("SELECT secret FROM notify_endpoints")
    with pytest.raises(grpc.RpcError) as failed:
        stub.PublishBatch(ingest_pb2.PublishBatchRequest(events=[signed_event()]), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "notify_endpoints" not in failed.value.details()
    trace_id = harness.ingest.seen_trace_ids[-1]
    assert failed.value.details().endswith(f"trace {trace_id:032x}")
    assert harness.handled(INGEST, "PublishBatch", "INTERNAL") == 1


def test_a_deadlock_answers_unavailable_so_the_caller_retries(harness: Harness) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(harness.channel)
    harness.ingest.fail_with = psycopg.errors.DeadlockDetected("deadlock detected DETAIL: ...")
    with pytest.raises(grpc.RpcError) as failed:
        stub.PublishBatch(ingest_pb2.PublishBatchRequest(events=[signed_event()]), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == TRANSIENT_MESSAGE
    # A deliberate abort keeps its own status and message.
    harness.ingest.fail_with = None
    with pytest.raises(grpc.RpcError) as refused:
        stub.PublishBatch(ingest_pb2.PublishBatchRequest(), timeout=5)
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty batch",
    )


def test_a_stream_failing_midway_ends_internal_after_what_it_sent(harness: Harness) -> None:
    stub = alert_service_pb2_grpc.AlertServiceStub(harness.channel)
    harness.alerts.fail_with = RuntimeError("/var/lib/residuals/secret.key")
    received: list[int] = []
    with pytest.raises(grpc.RpcError) as failed:
        for reply in stub.WatchAlerts(alert_service_pb2.WatchAlertsRequest(), timeout=5):
            received.append(reply.heartbeat.latest_sequence)
    assert received == [1]
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in failed.value.details()
