"""The HTTP gateway's one settings object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from residuals.platform.config import ConfigError, TelemetrySettings, env, group

SERVICE_NAME = "gateway"

#: gRPC's own default receive limit (4 MiB), so HTTP admits what gRPC would.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class BackendSettings:
    """Where each gRPC service is; a service left unset answers 503 on its routes."""

    ingest: str | None = env(
        "GATEWAY_INGEST_ADDRESS", None, help="host:port of IngestService (the ingest service)"
    )
    licensing: str | None = env(
        "GATEWAY_LICENSING_ADDRESS",
        None,
        help="host:port of ApprovalService and LicenceService (the licensing service)",
    )
    alerts: str | None = env(
        "GATEWAY_ALERTS_ADDRESS", None, help="host:port of AlertService (the alerts service)"
    )
    payouts: str | None = env(
        "GATEWAY_PAYOUTS_ADDRESS", None, help="host:port of PayoutService (the payouts service)"
    )
    notify: str | None = env(
        "GATEWAY_NOTIFY_ADDRESS",
        None,
        help="host:port of NotificationService (the notify service)",
    )
    tls: bool = env("GATEWAY_BACKEND_TLS", False, help="use TLS to reach the gRPC services")
    tls_ca: Path | None = env(
        "GATEWAY_BACKEND_TLS_CA",
        None,
        help="PEM CA bundle the services' certificates are checked against; unset = system CAs",
    )
    tls_cert: Path | None = env(
        "GATEWAY_BACKEND_TLS_CERT",
        None,
        help="PEM client certificate, for services that require one (mTLS)",
    )
    tls_key: Path | None = env(
        "GATEWAY_BACKEND_TLS_KEY", None, help="PEM private key of GATEWAY_BACKEND_TLS_CERT"
    )

    def __post_init__(self) -> None:
        if (self.tls_ca or self.tls_cert or self.tls_key) and not self.tls:
            raise ConfigError("GATEWAY_BACKEND_TLS_* files are set but GATEWAY_BACKEND_TLS is not")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("GATEWAY_BACKEND_TLS_CERT and GATEWAY_BACKEND_TLS_KEY go together")

    def address(self, backend: str) -> str | None:
        return getattr(self, backend)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GatewaySettings:
    telemetry: TelemetrySettings = group(TelemetrySettings)
    backends: BackendSettings = group(BackendSettings)
    host: str = env("GATEWAY_HOST", "0.0.0.0", help="interface the HTTP server binds")
    port: int = env(
        "GATEWAY_PORT", 8080, help="HTTP port (0 = any free port)", minimum=0, maximum=65535
    )
    max_body_bytes: int = env(
        "GATEWAY_MAX_BODY_BYTES",
        DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted (413 beyond); default = gRPC's 4 MiB",
        minimum=1024,
    )
    timeout_seconds: float = env(
        "GATEWAY_TIMEOUT_SECONDS",
        30.0,
        help="deadline of each forwarded unary call (504 when it passes)",
        minimum=0.1,
    )
    stream_open_seconds: float = env(
        "GATEWAY_STREAM_OPEN_SECONDS",
        1.0,
        help="how long a Watch call waits for the service's first answer before sending the"
        " event-stream headers (a refusal in that time is a plain HTTP error)",
        minimum=0.0,
    )
