"""The meter's one settings object, read from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from residuals.platform.config import (
    KafkaSettings,
    ReceiptSettings,
    TelemetrySettings,
    env,
    group,
)
from residuals.platform.grpc_server import GrpcSettings


@dataclass(frozen=True)
class MeterSettings:
    kafka: KafkaSettings = group(KafkaSettings)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    grpc: GrpcSettings = group(GrpcSettings)
    receipt: ReceiptSettings = group(ReceiptSettings)
    data_dir: Path = env(
        "METER_DATA_DIR", Path("/tmp/residuals-meter"), help="faust data directory"
    )
    store: str = env(
        "METER_STORE",
        "memory://",
        help="faust table store (memory:// rebuilds state from the changelog on start)",
    )
    batch_size: int = env(
        "METER_BATCH_SIZE",
        2000,
        help="most records rated per batch (one state write-out); a batch is what the "
        "consumer fetched, cut to this size",
        minimum=1,
    )
    max_event_bytes: int = env(
        "METER_MAX_EVENT_BYTES", 64 * 1024, help="larger records are OVERSIZED", minimum=1024
    )
    licence_cache: int = env(
        "METER_LICENCE_CACHE",
        150_000,
        help="decoded licences kept in memory (~1 KB each)",
        minimum=1,
    )
    purge_every: float = env(
        "METER_PURGE_SECONDS",
        600.0,
        help="seconds between removals of identities and counters older than the replay window",
        minimum=1,
    )
    stall_seconds: float = env(
        "METER_STALL_SECONDS",
        120.0,
        help="exit (to be restarted) when an assigned partition has records waiting and its "
        "committed offset has not moved for this long",
        minimum=10,
    )
    instance_id: str | None = env(
        "METER_INSTANCE_ID",
        None,
        help="static consumer-group membership id, stable across restarts of this meter and "
        "unique among meters (e.g. the pod name): a restarted meter gets its partitions back "
        "at once instead of after the session timeout. Unset: dynamic membership",
    )
    standby_replicas: int = env(
        "METER_STANDBY_REPLICAS",
        0,
        help="standby copies of each state partition kept by other meters (faust's "
        "table_standby_replicas): each follows the others' changelogs record by record, "
        "which cost more CPU per event than the rating itself with two meters; 0 (Kafka "
        "Streams' default too) restores a partition from its changelog when it moves",
        minimum=0,
    )
    ready_timeout: float = env(
        "METER_READY_TIMEOUT",
        120.0,
        help="seconds to wait for the licence and key registries to load",
        minimum=1,
    )
