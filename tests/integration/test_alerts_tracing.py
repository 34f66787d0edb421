"""One trace across the Kafka hop into the alerts service, exported over OTLP.

The alerts service runs as a real subprocess (``python -m residuals.alerts``) exporting to
a stub OTLP collector (a gRPC TraceService in this test). An alert is produced the way
the meter produces it, with the meter span's W3C ``traceparent`` in the record headers;
the service's consumer span must carry the same trace id with the meter span as parent,
its log lines must carry that trace id, and its metrics endpoint and gRPC health must be
up.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from residuals.platform.telemetry import inject_kafka_headers
from residuals.stack.settings import StackSettings
from residuals.v1 import common_pb2
from tests.support.alerts import AlertProducer, Tenant, delete_topics, isolated_kafka
from tests.support.service_process import otlp_collector, run_service

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
METER_SPAN_ID = 0xEEE19B7EC3C1B174


def test_alerts_service_continues_the_trace_from_kafka_headers(
    stack: StackSettings, tmp_path: Path
) -> None:
    kafka = isolated_kafka(stack, "alerts-trace")
    tenant = Tenant()
    try:
        with (
            otlp_collector() as collector,
            run_service(
                "alerts",
                {
                    "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
                    "RESIDUALS_TOPIC_PREFIX": kafka.topic_prefix,
                    "DATABASE_URL": stack.dsn,
                    "ALERTS_CONSUMER_GROUP": f"trace-{kafka.topic_prefix}",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                },
                tmp_path,
            ) as service,
        ):
            service.wait_healthy()
            meter_span = SpanContext(
                trace_id=TRACE_ID,
                span_id=METER_SPAN_ID,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            headers = inject_kafka_headers(
                context=trace.set_span_in_context(NonRecordingSpan(meter_span), Context())
            )
            alert = tenant.alert(kind=common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY)
            AlertProducer(kafka).send(alert, headers=headers)
            trace_hex = f"{TRACE_ID:032x}"
            spans = collector.wait_for(
                lambda spans: any(s.trace_id == trace_hex and s.service == "alerts" for s in spans)
            )
            metrics = service.metrics_text()
            logs = service.logs()
    finally:
        delete_topics(kafka)

    consumer = [s for s in spans if s.trace_id == trace_hex and s.service == "alerts"]
    assert any(
        s.name.endswith("residuals.alerts.v1 process")
        and s.parent_span_id == f"{METER_SPAN_ID:016x}"
        for s in consumer
    ), consumer
    stored = [line for line in logs if line.get("message") == "alert stored"]
    assert stored and stored[0]["trace_id"] == trace_hex
    assert stored[0]["service"] == "alerts"
    assert stored[0]["alert_id"] == alert.alert_id
    assert (
        'residuals_alerts_raised_total{kind="FORBIDDEN_CATEGORY",severity="CRITICAL"} 1.0'
        in metrics
    )
    assert "grpc_server_handled_total" in metrics or "grpc_server_started_total" in metrics
