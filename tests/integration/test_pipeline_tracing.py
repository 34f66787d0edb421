"""One trace from the SDK through the meter, the ledger writer and the alerts service.

A signed political render (a FORBIDDEN_CATEGORY use, so the meter raises an alert) is
published to the usage topic with the SDK span's W3C ``traceparent`` header. The meter,
the ledger writer and the alerts service run as real processes on the local Kafka and
PostgreSQL, exporting over OTLP to a stub collector. Every service's span must be in the
SDK's trace: ``meter.rate`` a child of the SDK span, and the ledger's and the alerts
service's spans children of ``meter.rate`` (the meter carries its span in RatedUsage.trace
and in the alert record's ``traceparent`` header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from residuals.stack.settings import StackSettings
from tests.support.builders import ev, licence_spec
from tests.support.metering import pipeline
from tests.support.service_process import ExportedSpan, otlp_collector, run_service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SDK_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SDK_SPAN_ID}-01"


def _spans(spans: list[ExportedSpan], service: str) -> list[ExportedSpan]:
    return [s for s in spans if s.trace_id == TRACE_ID and s.service == service]


def test_one_trace_from_the_sdk_through_meter_ledger_and_alerts(
    stack: StackSettings, tmp_path: Path
) -> None:
    with pipeline(stack, tmp_path, partitions=2) as run, otlp_collector() as collector:
        vendor = run.vendor("VEN-TRACE")
        run.publish_keys([vendor])
        run.publish_licences([licence_spec(licence_id="LIC-TRACE", vendor_id=vendor)])
        raw: dict[str, Any] = ev(
            "RENDER",
            vendor_id=vendor,
            licence_id="LIC-TRACE",
            occurred_at="2026-10-07T10:00:00Z",
            category="political",
        )
        record = run.usage_record(raw)
        record.headers.append(("traceparent", TRACEPARENT.encode()))
        run.produce([record])

        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        meter = run.meter(**otel).start()
        ledger = run.ledger(**otel).start()
        try:
            with run_service(
                "alerts",
                {
                    "KAFKA_BOOTSTRAP_SERVERS": run.kafka.bootstrap_servers,
                    "RESIDUALS_TOPIC_PREFIX": run.kafka.topic_prefix,
                    "DATABASE_URL": run.dsn,
                    "ALERTS_CONSUMER_GROUP": f"trace-{run.kafka.topic_prefix}",
                    **otel,
                },
                tmp_path,
            ):
                run.wait_ledgered(1, timeout=120, services=[meter, ledger])
                spans = collector.wait_for(
                    lambda found: all(
                        _spans(found, name) for name in ("meter", "ledger", "alerts")
                    ),
                    timeout=60,
                )
        finally:
            meter.stop()
            ledger.stop()

    (rate,) = _spans(spans, "meter")
    assert rate.name == "meter.rate"
    assert rate.parent_span_id == SDK_SPAN_ID
    (store,) = _spans(spans, "ledger")
    assert store.name == "ledger.store"
    assert store.parent_span_id == rate.span_id
    consumed = [
        s for s in _spans(spans, "alerts") if s.name.endswith("residuals.alerts.v1 process")
    ]
    assert consumed and all(s.parent_span_id == rate.span_id for s in consumed), consumed
