"""Shared set-up of the notify service's integration tests: its settings, its start and
the dead letters its rejection stream reads."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from residuals.codecs.timestamps import set_timestamp
from residuals.notify.app import NotifyApp
from residuals.notify.settings import DeliverySettings, NotifySettings
from residuals.platform.auth import StaticAuthenticator
from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings
from residuals.platform.grpc_server import GrpcSettings
from residuals.platform.roles import database_role
from residuals.platform.topics import ALERTS, APPROVALS, LICENCES, PAYOUTS, USAGE_DLQ
from residuals.v1 import common_pb2, usage_pb2

#: The topics the notify service consumes.
SOURCE_TOPICS = (ALERTS, LICENCES, APPROVALS, PAYOUTS, USAGE_DLQ)
SECRETS_KEY = base64.b64encode(b"k" * 32).decode()


def notify_settings(kafka: KafkaSettings, dsn: str, group: str) -> NotifySettings:
    """Loopback webhooks allowed (the SSRF guard's test allowance), 1 s heartbeats."""
    return NotifySettings(
        kafka=kafka,
        postgres=PostgresSettings(dsn=dsn, pool_min=1, pool_max=8, user=database_role("notify")),
        telemetry=TelemetrySettings(service_name="notify"),
        grpc=GrpcSettings(host="127.0.0.1", port=0, max_workers=32),
        delivery=DeliverySettings(allow_http=True, allow_networks=("127.0.0.0/8",)),
        consumer_group=group,
        heartbeat_seconds=1.0,
        statements_poll_seconds=0.2,
        secrets_key=SECRETS_KEY,
    )


def start_notify(settings: NotifySettings, auth: StaticAuthenticator) -> NotifyApp:
    """The service, once its consumer has its partitions."""
    app = NotifyApp(settings, authenticator=auth).start()
    assert app.sink is not None and app.sink.assigned.wait(60), "no partitions assigned"
    return app


def dead_letter(vendor_id: str, event_id: str) -> usage_pb2.DeadLetter:
    """A dead letter of ``vendor_id`` as the meter writes one (INVALID_QUANTITY)."""
    letter = usage_pb2.DeadLetter(
        reason=common_pb2.REJECT_REASON_INVALID_QUANTITY,
        detail="quantity 0 outside 1..1000000",
        vendor_id=vendor_id,
        event_id=event_id,
        licence_id="LIC-x",
        original=b"secret payload bytes",
        source_topic="residuals.usage.v1",
        source_partition=2,
        source_offset=41,
    )
    set_timestamp(letter.received_at, datetime.now(UTC).replace(microsecond=0))
    return letter
