"""The licensing service's Prometheus series: the outbox relay's publishing and backlog, and
the pre-flight check's verdicts (RPC counts and latencies are the shared gRPC series)."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.pending = Gauge(
            "residuals_outbox_pending",
            "Outbox rows committed but not yet published to Kafka.",
            registry=registry,
        )
        self.lag = Gauge(
            "residuals_outbox_lag_seconds",
            "Age of the oldest unpublished outbox row (0 when none).",
            registry=registry,
        )
        self.published = Counter(
            "residuals_outbox_published_total",
            "Outbox rows published to Kafka, by topic.",
            ("topic",),
            registry=registry,
        )
        self.recovered = Counter(
            "residuals_outbox_recovered_total",
            "Rows found already in Kafka at start-up (published before a crash, unmarked).",
            registry=registry,
        )
        self.failures = Counter(
            "residuals_outbox_failures_total",
            "Batches that failed and were retried.",
            registry=registry,
        )


@functools.cache
def default_metrics() -> RelayMetrics:
    """The series on the global registry, created once per process."""
    return RelayMetrics()


class PreflightMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.verdicts = Counter(
            "residuals_checkuse_verdicts_total",
            "Pre-flight CheckUse answers, by verdict (ALLOW, DENY, NEEDS_APPROVAL): how often"
            " vendors ask before a use the talent must approve or would be held.",
            ("verdict",),
            registry=registry,
        )
        self.state_reads = Counter(
            "residuals_checkuse_state_reads_total",
            "Where CheckUse found the state it judged on: memory (the cache) or database (a"
            " query: the licence was not cached, or changed since).",
            ("source",),
            registry=registry,
        )


@functools.cache
def default_preflight_metrics() -> PreflightMetrics:
    """The series on the global registry, created once per process."""
    return PreflightMetrics()
