"""The notify service's one settings object, read from the environment at start-up."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from residuals.domain.notifications import DEFAULT_SCHEDULE
from residuals.platform.config import (
    ConfigError,
    KafkaSettings,
    PostgresSettings,
    TelemetrySettings,
    env,
    group,
)
from residuals.platform.grpc_server import GrpcSettings
from residuals.platform.sink import SinkSettings

SERVICE_NAME = "notify"


@dataclass(frozen=True)
class DeliverySettings:
    """How webhooks are sent: timeouts, concurrency, retries, and where they may go."""

    retry_schedule: tuple[float, ...] = env(
        "NOTIFY_RETRY_SCHEDULE_SECONDS",
        DEFAULT_SCHEDULE,
        help="waits before the 2nd, 3rd, ... attempt (each with 0.9-1.2x jitter); after the "
        "last, the delivery fails and the endpoint is disabled (default: ~27.6 hours)",
    )
    connect_timeout_seconds: float = env(
        "NOTIFY_CONNECT_TIMEOUT_SECONDS", 5.0, help="TCP/TLS connect deadline", minimum=0.1
    )
    request_timeout_seconds: float = env(
        "NOTIFY_REQUEST_TIMEOUT_SECONDS",
        10.0,
        help="deadline of one attempt, connect to response (a slower receiver is retried)",
        minimum=0.1,
    )
    max_in_flight: int = env(
        "NOTIFY_MAX_IN_FLIGHT",
        512,
        help="requests in flight at once across all endpoints (one per endpoint at most)",
        minimum=1,
    )
    lease_seconds: float = env(
        "NOTIFY_LEASE_SECONDS",
        15.0,
        help="how long a replica owns an endpoint's queue without renewing (a killed "
        "replica's endpoints move on after this)",
        minimum=1.0,
    )
    poll_seconds: float = env(
        "NOTIFY_POLL_SECONDS",
        1.0,
        help="longest wait before looking for due deliveries without a wake-up",
        minimum=0.01,
    )
    allow_networks: tuple[str, ...] = env(
        "NOTIFY_ALLOW_NETWORKS",
        (),
        help="CIDRs webhooks may reach although private, loopback or link-local (e.g. "
        "127.0.0.0/8 for local receivers); empty = public addresses only",
    )
    allow_http: bool = env(
        "NOTIFY_ALLOW_HTTP",
        False,
        help="accept http:// endpoint URLs (default: https:// only)",
    )
    ca_file: str | None = env(
        "NOTIFY_CA_FILE",
        None,
        help="PEM CA bundle receivers' certificates are checked against; unset = system CAs",
    )

    def __post_init__(self) -> None:
        if not self.retry_schedule or any(s < 0 for s in self.retry_schedule):
            raise ConfigError("NOTIFY_RETRY_SCHEDULE_SECONDS must list non-negative waits")
        for cidr in self.allow_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"NOTIFY_ALLOW_NETWORKS: {cidr!r} is not a CIDR") from None


@dataclass(frozen=True)
class NotifySettings:
    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    sink: SinkSettings = group(SinkSettings)
    delivery: DeliverySettings = group(DeliverySettings)
    consumer_group: str = env(
        "NOTIFY_CONSUMER_GROUP",
        "residuals-notify",
        help="Kafka consumer group (RESIDUALS_TOPIC_PREFIX goes in front) and offset rows",
    )
    batch_size: int = env(
        "NOTIFY_BATCH_SIZE", 500, help="source records stored per transaction at most", minimum=1
    )
    heartbeat_seconds: float = env(
        "NOTIFY_HEARTBEAT_SECONDS",
        5.0,
        help="WatchRejections heartbeat interval when the request asks for none",
        minimum=0.1,
    )
    max_endpoints_per_owner: int = env(
        "NOTIFY_MAX_ENDPOINTS_PER_OWNER",
        50,
        help="webhook endpoints one owner may have (a vendor, a talent; all of finance's count"
        " as one owner, as do admin's); CreateEndpoint answers RESOURCE_EXHAUSTED beyond",
        minimum=1,
    )
    statements_poll_seconds: float = env(
        "NOTIFY_STATEMENTS_POLL_SECONDS",
        5.0,
        help="how often closed statements are looked for (statement.ready)",
        minimum=0.1,
    )
    secrets_key: str | None = env(
        "NOTIFY_SECRETS_KEY",
        None,
        help="base64 of 32 bytes (from a Secret): endpoint signing secrets are stored "
        "encrypted with it (AES-256-GCM); unset = stored as they are",
    )

    def __post_init__(self) -> None:
        if self.secrets_key is not None:
            try:
                key = base64.b64decode(self.secrets_key, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise ConfigError("NOTIFY_SECRETS_KEY must be base64 of exactly 32 bytes")

    def __repr__(self) -> str:
        return f"NotifySettings(consumer_group={self.consumer_group!r}, secrets_key=<hidden>)"
