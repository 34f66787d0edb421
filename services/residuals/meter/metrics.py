"""Prometheus series of the meter (one set per process).

Dashboards and alert rules (deploy/) use these names. Series that span services (publish
-> ledger/alert latency, accrued royalties by avatar, sink consumer lag) are in
:mod:`residuals.platform.pipeline_metrics` (the ledger writer counts accrued-by-avatar).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class MeterMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records_in = Counter(
            "residuals_meter_records_in_total",
            "Usage records consumed, by source partition.",
            ("partition",),
            registry=registry,
        )
        self.events = Counter(
            "residuals_meter_events_total",
            "Usage events decided, by kind and outcome (accepted, held, excluded, duplicate, "
            "conflict, retracted, dead, skipped = already applied before a restart).",
            ("kind", "outcome"),
            registry=registry,
        )
        self.dead_letters = Counter(
            "residuals_meter_dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            ("reason",),
            registry=registry,
        )
        self.violations = Counter(
            "residuals_meter_violations_total",
            "Alerts raised, by violation kind and severity.",
            ("kind", "severity"),
            registry=registry,
        )
        self.accrued = Counter(
            "residuals_meter_accrued_estimate_total",
            "Estimated royalties rated, in currency units, state earned or held (dashboards "
            "only: statements are recomputed exactly from stored events).",
            ("currency", "state"),
            registry=registry,
        )
        self.latency = Histogram(
            "residuals_meter_publish_to_rated_seconds",
            "From the usage record's timestamp (publish) to its rated record being acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "residuals_meter_batch_seconds",
            "Time to rate a batch and write its records and state.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.batch_size = Histogram(
            "residuals_meter_batch_records",
            "Records per batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=registry,
        )
        self.lag = Gauge(
            "residuals_meter_consumer_lag_records",
            "Records between the last rated offset and the partition's high watermark.",
            ("partition",),
            registry=registry,
        )
        self.untrusted_timestamps = Counter(
            "residuals_meter_untrusted_timestamps_total",
            "Usage records timed by the meter's own clock because the topic carries producer "
            "timestamps (set message.timestamp.type=LogAppendTime on the usage topic).",
            registry=registry,
        )
        self.licences = Gauge(
            "residuals_meter_licences", "Licences in the local registry replica.", registry=registry
        )
