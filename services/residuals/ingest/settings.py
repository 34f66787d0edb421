"""The ingest gateway's one settings object, from environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from residuals.platform.config import (
    ConfigError,
    KafkaSettings,
    PostgresSettings,
    ReceiptSettings,
    TelemetrySettings,
    env,
    group,
)
from residuals.platform.grpc_server import GrpcSettings

KIB = 1024
SERVICE_NAME = "ingest"


@dataclass(frozen=True)
class IngestSettings:
    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    receipt: ReceiptSettings = group(ReceiptSettings)
    max_event_bytes: int = env(
        "INGEST_MAX_EVENT_BYTES",
        64 * KIB,
        help="largest signed event accepted; larger ones are dead-lettered OVERSIZED",
        minimum=1 * KIB,
    )
    max_batch_events: int = env(
        "INGEST_MAX_BATCH_EVENTS",
        1000,
        help="most events in one PublishBatch (or one PublishStream message)",
        minimum=1,
    )
    max_batch_bytes: int = env(
        "INGEST_MAX_BATCH_BYTES",
        4 * 1024 * KIB,
        help="largest PublishBatch (or PublishStream message) in bytes",
        minimum=64 * KIB,
    )
    vendor_rate: float = env(
        "INGEST_VENDOR_RATE",
        20_000.0,
        help="events per second each vendor may publish (token bucket refill)",
        minimum=1,
    )
    vendor_burst: int = env(
        "INGEST_VENDOR_BURST",
        40_000,
        help="token bucket size per vendor (must hold one full batch)",
        minimum=1,
    )
    stream_max_wait_seconds: float = env(
        "INGEST_STREAM_MAX_WAIT_SECONDS",
        10.0,
        help="how long a PublishStream message may wait for rate-limit tokens",
        minimum=0,
    )
    dedupe_cache_events: int = env(
        "INGEST_DEDUPE_CACHE_EVENTS",
        200_000,
        help="recently accepted event ids remembered to answer DUPLICATE (0 = off)",
        minimum=0,
    )
    ack_timeout_seconds: float = env(
        "INGEST_ACK_TIMEOUT_SECONDS",
        15.0,
        help="how long a request waits for Kafka's acknowledgement before UNAVAILABLE",
        minimum=1,
    )
    key_cache_seconds: float = env(
        "INGEST_KEY_CACHE_SECONDS",
        30.0,
        help="how long signing keys and API keys are cached (revocations take this long)",
        minimum=0,
    )
    check_licences: bool = env(
        "INGEST_CHECK_LICENCES",
        True,
        help="reject unknown licences and vendor/avatar/currency mismatches at the gateway",
    )

    def __post_init__(self) -> None:
        if self.vendor_burst < self.max_batch_events:
            raise ConfigError(
                f"INGEST_VENDOR_BURST={self.vendor_burst} cannot hold one batch of"
                f" INGEST_MAX_BATCH_EVENTS={self.max_batch_events}"
            )
        if self.max_event_bytes > self.max_batch_bytes:
            raise ConfigError("INGEST_MAX_EVENT_BYTES must not exceed INGEST_MAX_BATCH_BYTES")
