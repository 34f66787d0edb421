"""Prometheus series of the notify service (names are what dashboards and rules use)."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600)


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "residuals_notify_events_total",
            "Events stored for notification, by type (a re-read source record is not counted).",
            ("type",),
            registry=registry,
        )
        self.queued = Counter(
            "residuals_notify_deliveries_queued_total",
            "Deliveries queued (one per event and matching enabled endpoint).",
            registry=registry,
        )
        self.attempts = Counter(
            "residuals_notify_delivery_attempts_total",
            "Delivery attempts by outcome: delivered (2xx), retry (timeout, connection error, "
            "other status), gone (410: the endpoint is disabled).",
            ("outcome",),
            registry=registry,
        )
        self.failed = Counter(
            "residuals_notify_deliveries_failed_total",
            "Deliveries given up on after the whole retry schedule (or 410).",
            registry=registry,
        )
        self.lag = Histogram(
            "residuals_notify_delivery_lag_seconds",
            "From the event's origin (the usage's publication when known, else the event's "
            "storage) to the end of an attempt that delivered it, by attempt (first, retry).",
            ("attempt",),
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "residuals_notify_attempt_duration_seconds",
            "Duration of one HTTP attempt, by outcome.",
            ("outcome",),
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.endpoints = Gauge(
            "residuals_notify_endpoints",
            "Endpoints by state (enabled, disabled).",
            ("state",),
            registry=registry,
        )
        self.disabled = Counter(
            "residuals_notify_endpoints_disabled_total",
            "Endpoints disabled by the dispatcher, by reason (gone, failing).",
            ("reason",),
            registry=registry,
        )
        self.pending = Gauge(
            "residuals_notify_pending_deliveries",
            "Deliveries waiting to be sent (all endpoints).",
            registry=registry,
        )
        self.oldest_pending = Gauge(
            "residuals_notify_oldest_pending_seconds",
            "Age of the oldest pending delivery to an enabled endpoint (0: none).",
            registry=registry,
        )
        self.leased = Gauge(
            "residuals_notify_leased_endpoints",
            "Endpoints whose queues this replica sends.",
            registry=registry,
        )
        self.refused = Counter(
            "residuals_notify_refused_destinations_total",
            "Attempts refused before connecting: the URL resolved to a private, loopback or "
            "link-local address that is not allow-listed.",
            registry=registry,
        )
        self.rejections = Counter(
            "residuals_notify_rejections_total",
            "Vendors' dead-lettered usage events stored for WatchRejections, by reason.",
            ("reason",),
            registry=registry,
        )
        self.skipped = Counter(
            "residuals_notify_skipped_records_total",
            "Source records that became no event and were not set aside: tombstones (a "
            "compacted licence deleted), by source.",
            ("source",),
            registry=registry,
        )
        self.watchers = Gauge(
            "residuals_notify_rejection_watchers",
            "Open WatchRejections streams.",
            registry=registry,
        )


@functools.cache
def default_metrics() -> NotifyMetrics:
    """The process-wide instance on the default registry (each series is registered once)."""
    return NotifyMetrics()
