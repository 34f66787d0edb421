"""The alerts service's one settings object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from residuals.platform.auth import parse_api_key
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

SERVICE_NAME = "alerts"


@dataclass(frozen=True)
class LicensingClientSettings:
    """How the service reaches the licence registry to suspend licences automatically."""

    address: str | None = env(
        "ALERTS_LICENSING_ADDRESS",
        None,
        help="host:port of LicenceService; unset = automatic suspensions wait (stay pending)",
    )
    api_key: str | None = env(
        "ALERTS_LICENSING_API_KEY",
        None,
        help="API key of the service principal that suspends licences: role suspender"
        " (`residuals licences api-key create --role suspender`), which may do nothing else",
    )
    timeout_seconds: float = env(
        "ALERTS_LICENSING_TIMEOUT_SECONDS", 5.0, help="deadline of each registry call", minimum=0.1
    )
    tls: bool = env("ALERTS_LICENSING_TLS", False, help="use TLS to reach LicenceService")
    tls_ca: Path | None = env(
        "ALERTS_LICENSING_TLS_CA",
        None,
        help="PEM CA bundle LicenceService's certificate is checked against; unset = system CAs",
    )
    tls_cert: Path | None = env(
        "ALERTS_LICENSING_TLS_CERT",
        None,
        help="PEM client certificate, for a LicenceService that requires one (mTLS)",
    )
    tls_key: Path | None = env(
        "ALERTS_LICENSING_TLS_KEY", None, help="PEM private key of ALERTS_LICENSING_TLS_CERT"
    )

    def __post_init__(self) -> None:
        if self.api_key and parse_api_key(self.api_key) is None:
            raise ConfigError(
                "ALERTS_LICENSING_API_KEY is not an API key (rsd_<id>_<secret>, nothing"
                " around it: a trailing newline from a Secret file counts)"
            )
        if (self.tls_ca or self.tls_cert or self.tls_key) and not self.tls:
            raise ConfigError(
                "ALERTS_LICENSING_TLS_* files are set but ALERTS_LICENSING_TLS is not"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("ALERTS_LICENSING_TLS_CERT and ALERTS_LICENSING_TLS_KEY go together")


@dataclass(frozen=True)
class AlertsSettings:
    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    licensing: LicensingClientSettings = group(LicensingClientSettings)
    sink: SinkSettings = group(SinkSettings)
    consumer_group: str = env(
        "ALERTS_CONSUMER_GROUP", "residuals-alerts", help="Kafka consumer group (and offset rows)"
    )
    batch_size: int = env(
        "ALERTS_BATCH_SIZE", 500, help="alerts stored per transaction at most", minimum=1
    )
    heartbeat_seconds: float = env(
        "ALERTS_HEARTBEAT_SECONDS",
        5.0,
        help="WatchAlerts heartbeat interval when the request asks for none",
        minimum=0.1,
    )
    window_size: int = env(
        "ALERTS_WINDOW_SIZE",
        20_000,
        help="recent alert changes kept in memory for live subscribers",
        minimum=100,
    )
    tail_poll_seconds: float = env(
        "ALERTS_TAIL_POLL_SECONDS",
        0.5,
        help="longest wait before re-reading the change tail without a notification",
        minimum=0.01,
    )
    suspension_poll_seconds: float = env(
        "ALERTS_SUSPENSION_POLL_SECONDS",
        2.0,
        help="how often pending automatic suspensions are retried",
        minimum=0.1,
    )
