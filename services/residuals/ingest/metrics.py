"""The gateway's Prometheus series: what it judged, what it refused whole, Kafka's answer time."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


class IngestMetrics:
    """Prometheus series of the gateway (one set per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "residuals_ingest_events_total",
            "Events judged by the gateway, by status and reject reason.",
            ("status", "reason"),
            registry=registry,
        )
        self.batch_events = Histogram(
            "residuals_ingest_batch_events",
            "Events per PublishBatch request / PublishStream message.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.refused = Counter(
            "residuals_ingest_requests_refused_total",
            "Requests refused whole, by cause (batch_limit, rate_limit, kafka, directory).",
            ("cause",),
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "residuals_ingest_kafka_ack_seconds",
            "Time from producing a request's records to Kafka acknowledging all of them.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


@functools.cache
def default_metrics() -> IngestMetrics:
    """The series on the global registry, created once per process."""
    return IngestMetrics()
