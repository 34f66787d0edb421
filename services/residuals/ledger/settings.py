"""The ledger writer's one settings object, read from the environment."""

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
from residuals.platform.sink import SinkSettings


@dataclass(frozen=True)
class LedgerSettings:
    kafka: KafkaSettings = group(KafkaSettings)
    postgres: PostgresSettings = group(PostgresSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    sink: SinkSettings = group(SinkSettings)
    consumer_group: str = env(
        "LEDGER_CONSUMER_GROUP",
        "ledger-writer",
        help="consumer group (prefixed with RESIDUALS_TOPIC_PREFIX) and offsets owner",
    )
    batch_size: int = env(
        "LEDGER_BATCH_SIZE", 5000, help="records written per transaction", minimum=1
    )
    poll_timeout: float = env(
        "LEDGER_POLL_TIMEOUT", 0.05, help="seconds to wait for records to fill a batch", minimum=0
    )
