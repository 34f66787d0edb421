"""`python -m residuals.licensing` as deployed: configured only by environment variables,
serving health and LicenceService, exposing Prometheus metrics (gRPC and outbox), stopping
cleanly on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from residuals.platform.processes import ServiceProcess
from residuals.platform.roles import role_env
from residuals.stack.settings import StackSettings
from residuals.v1 import licence_service_pb2, licence_service_pb2_grpc
from tests.support.licensing import create_topics, new_prefix


def test_service_main_serves_health_metrics_and_stops(stack: StackSettings, tmp_path: Path) -> None:
    prefix = new_prefix()
    create_topics(stack, prefix)
    env = {**stack.exports(), **role_env("licensing"), "RESIDUALS_TOPIC_PREFIX": prefix}
    service = ServiceProcess(
        "licensing", "residuals.licensing", env, tmp_path, unset=("OTEL_SERVICE_NAME",)
    ).start()
    grpc_port, metrics_port = service.grpc_port, service.metrics_port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(
                health_pb2.HealthCheckRequest(service="residuals.v1.LicenceService"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = licence_service_pb2_grpc.LicenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.ListLicences(licence_service_pb2.ListLicencesRequest(), timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = response.read().decode()
            if "residuals_outbox_pending" in text:
                break
            time.sleep(0.2)
        assert "residuals_outbox_pending 0.0" in text
        assert "residuals_outbox_lag_seconds" in text
        assert (
            'grpc_server_handled_total{grpc_code="UNAUTHENTICATED",grpc_method="ListLicences",'
            'grpc_service="residuals.v1.LicenceService",grpc_type="unary"} 1.0'
        ) in text
        service.terminate()
        assert service.wait(30) == 0
        output = service.log_text()
        assert (
            '"service": "licensing"' in output
            or '"service.name": "licensing"' in output
            or ("licensing service running" in output)
        )
        assert "Traceback" not in output
    finally:
        service.kill(timeout=10)


def test_cli_lists_the_service_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "residuals", "licensing", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "GRPC_PORT", "LICENSING_OUTBOX_RELAY"):
        assert name in result.stdout
