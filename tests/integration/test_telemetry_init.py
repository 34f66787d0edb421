"""init_telemetry in a fresh process: JSON logs with trace ids and a live /metrics port.

A subprocess, because OpenTelemetry's global tracer provider can be set once per process.
Needs no Kafka or PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from residuals.platform.ports import free_port

SCRIPT = textwrap.dedent(
    """
    import logging, urllib.request
    from residuals.platform.config import TelemetrySettings, load
    from residuals.platform.telemetry import init_telemetry, inject_kafka_headers

    t = init_telemetry(load(TelemetrySettings))
    log = logging.getLogger("probe")
    with t.tracer("probe").start_as_current_span("work"):
        log.info("inside", extra={"headers": dict(inject_kafka_headers())})
    log.info("outside")
    body = urllib.request.urlopen(f"http://127.0.0.1:{t.metrics_port}/metrics").read()
    log.info("metrics", extra={"has_python_info": b"python_info" in body})
    t.shutdown()
    """
)


def test_init_telemetry_logs_json_with_trace_and_serves_metrics() -> None:
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "probe-svc",
        "METRICS_PORT": str(free_port()),
        "LOG_FORMAT": "json",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert all(line["service"] == "probe-svc" for line in lines)

    inside = by_message["inside"]
    assert len(inside["trace_id"]) == 32 and len(inside["span_id"]) == 16
    # What goes into Kafka headers is the same trace as the log line.
    assert inside["trace_id"] in inside["headers"]["traceparent"]
    assert "trace_id" not in by_message["outside"]
    assert by_message["metrics"]["has_python_info"] is True
