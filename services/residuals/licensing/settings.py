"""The licensing service's one settings object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from residuals.platform.config import (
    KafkaSettings,
    PostgresSettings,
    TelemetrySettings,
    env,
    group,
)
from residuals.platform.grpc_server import GrpcSettings

SERVICE_NAME = "licensing"


@dataclass(frozen=True)
class RelaySettings:
    """The outbox relay (PostgreSQL -> Kafka) that runs inside the service by default."""

    enabled: bool = env(
        "LICENSING_OUTBOX_RELAY",
        True,
        help="run the outbox relay in this process (a second one stands by until it can lock)",
    )
    batch_size: int = env(
        "LICENSING_OUTBOX_BATCH_SIZE", 500, help="rows per Kafka transaction at most", minimum=1
    )
    poll_seconds: float = env(
        "LICENSING_OUTBOX_POLL_SECONDS",
        1.0,
        help="longest wait for new rows without a NOTIFY",
        minimum=0.01,
    )


@dataclass(frozen=True)
class LicensingSettings:
    grpc: GrpcSettings = group(GrpcSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    kafka: KafkaSettings = group(KafkaSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    relay: RelaySettings = group(RelaySettings)
    auth_cache_seconds: float = env(
        "LICENSING_AUTH_CACHE_SECONDS",
        30.0,
        help="how long an API key lookup is cached (a revocation elsewhere shows within it)",
        minimum=0,
    )
    preflight_cache_licences: int = env(
        "LICENSING_PREFLIGHT_CACHE_LICENCES",
        20_000,
        help="licences whose CheckUse state (revision, quota used, approvals) is kept in"
        " memory, dropped as PostgreSQL notifies changes; 0: every check queries the database",
        minimum=0,
    )
    backdate_skew_seconds: float = env(
        "LICENSING_BACKDATE_SKEW_SECONDS",
        300.0,
        help="how far in the past a non-admin may make a suspension, reinstatement or"
        " revocation (licence or signing key) take effect; admins may backdate further only"
        " with a reason, and every such change is written to the audit log",
        minimum=0,
        maximum=86400,
    )
