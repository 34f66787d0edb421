"""Every dashboard panel and alert rule has live data behind it after an end-to-end run.

Signed usage (a generated month slice plus political renders) goes through Kafka into the
real meter, ledger writer, alerts and notify service processes (the metering engineer's
``Pipeline`` harness), with a live WatchAlerts subscriber and a webhook receiver on
loopback that finance registered with NotificationService. Then every service's /metrics
is scraped, and the metric names parsed out of the Grafana dashboards and Prometheus
rules must all appear as samples (not just HELP lines) in some service's exposition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import psycopg

from residuals.domain.period import Period
from residuals.licensing import registry
from residuals.platform.auth import Principal, Role
from residuals.stack.settings import StackSettings
from residuals.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    alerts_pb2,
    common_pb2,
    ingest_pb2,
    notification_service_pb2,
    notification_service_pb2_grpc,
)
from tests.support.alerts import StreamReader
from tests.support.ingest import Gateway, Registry, envelope, render
from tests.support.metering import pipeline
from tests.support.month import make_events, make_licences
from tests.support.observability_catalogue import SYNTHETIC, referenced_metrics, sample_names
from tests.support.service_process import run_service

POLITICAL = 5


@contextmanager
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A webhook receiver on loopback that answers 204 and keeps the bodies."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_every_panel_and_rule_has_live_data(stack: StackSettings, tmp_path: Path) -> None:
    with pipeline(stack, tmp_path) as run:
        n = int(run.run_id, 16)
        period = Period(2040 + n % 50, 1 + (n // 50) % 12)
        specs = make_licences(6, 2)
        for spec in specs:
            spec["vendor_id"] = run.vendor(spec["vendor_id"])
        run.publish_licences(specs)
        run.publish_keys(sorted({s["vendor_id"] for s in specs}))
        events = list(make_events(specs, 600, period=str(period)))
        renders = [e for e in events if e["kind"] == "RENDER"][:POLITICAL]
        political = [
            {**e, "event_id": f"{e['event_id']}-political", "category": "political"}
            for e in renders
        ]
        records = run.sdk_records(events + political, receive_delay=timedelta(seconds=2), batch=1)
        with psycopg.connect(run.dsn) as conn:
            _, key = registry.create_api_key(
                conn, Principal(f"obs-{run.run_id}", Role.FINANCE), "obs", "test", datetime.now(UTC)
            )
        meter, ledger = run.meter(), run.ledger()
        alerts_env = {
            **run.service_env("alerts"),
            "ALERTS_CONSUMER_GROUP": f"alerts-{run.run_id}",
        }
        # The gateway publishes into the same usage topic. Its vendor is registered in
        # the licensing tables only (not on the meter's key topic), so the meter
        # dead-letters that event: live data for the dead-letter panels too.
        tenant = Registry(run.dsn, run.run_id).vendor("gw")
        gateway_env = {**run.service_env("ingest"), "INGEST_ACK_TIMEOUT_SECONDS": "10"}
        notify_env = {
            **run.service_env("notify"),
            "NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
            "NOTIFY_ALLOW_HTTP": "true",
        }
        with (
            run_service("alerts", alerts_env, tmp_path) as alerts,
            run_service("ingest", gateway_env, tmp_path) as gateway,
            run_service("notify", notify_env, tmp_path) as notify,
            receiver() as (hook_url, hook_bodies),
        ):
            meter.start()
            ledger.start()
            try:
                alerts.wait_healthy()
                notify.wait_healthy()
                with grpc.insecure_channel(f"127.0.0.1:{notify.grpc_port}") as hooks:
                    notification_service_pb2_grpc.NotificationServiceStub(hooks).CreateEndpoint(
                        notification_service_pb2.CreateEndpointRequest(
                            url=hook_url, event_types=["alert.raised"]
                        ),
                        metadata=[("authorization", f"Bearer {key}")],
                        timeout=10,
                    )
                channel = grpc.insecure_channel(f"127.0.0.1:{alerts.grpc_port}")
                reader = StreamReader(
                    channel,
                    key,
                    alert_service_pb2.WatchAlertsRequest(
                        live_only=True,
                        filter=alerts_pb2.AlertFilter(
                            kinds=[common_pb2.VIOLATION_KIND_FORBIDDEN_CATEGORY]
                        ),
                    ),
                )
                time.sleep(0.5)
                run.produce(records)
                gateway.wait_healthy()
                client = Gateway(gateway.grpc_port)
                (result,) = client.publish(
                    tenant.api_key, [envelope(render(tenant), tenant.signing_key)]
                )
                assert result.status == ingest_pb2.PUBLISH_STATUS_ACCEPTED
                client.channel.close()
                run.wait_ledgered(len(records), 300, [meter, ledger])
                got = reader.alerts(1, timeout=120)
                reader.cancel()
                assert got[0].severity == common_pb2.SEVERITY_CRITICAL
                alert_service_pb2_grpc.AlertServiceStub(channel).ListAlerts(
                    alert_service_pb2.ListAlertsRequest(),
                    metadata=[("authorization", f"Bearer {key}")],
                )
                channel.close()
                deadline = time.monotonic() + 60
                while not hook_bodies and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert hook_bodies, "no webhook reached the receiver"
                time.sleep(6)  # librdkafka statistics (lag) are emitted every 5 s
                import urllib.request

                exported: dict[str, set[str]] = {
                    "alerts": sample_names(alerts.metrics_text()),
                    "ingest": sample_names(gateway.metrics_text()),
                    "notify": sample_names(notify.metrics_text()),
                }
                for service in (meter, ledger):
                    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        exported[service.name] = sample_names(response.read().decode())
            finally:
                meter.stop()
                ledger.stop()

    everything = set().union(*exported.values()) | SYNTHETIC
    missing = {
        where: sorted(names - everything)
        for where, names in referenced_metrics().items()
        if names - everything
    }
    assert not missing, "panels/rules without live data:\n" + "\n".join(
        f"  {where}: {names}" for where, names in sorted(missing.items())
    )
