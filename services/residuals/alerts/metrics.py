"""Prometheus series of the alerts service (names are what dashboards and rules use)."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.raised = Counter(
            "residuals_alerts_raised_total",
            "Alerts stored for the first time, by violation kind and severity.",
            ("kind", "severity"),
            registry=registry,
        )
        self.duplicates = Counter(
            "residuals_alerts_duplicates_total",
            "Re-delivered alerts ignored (same deterministic alert_id).",
            registry=registry,
        )
        self.invalid = Counter(
            "residuals_alerts_invalid_total",
            "Records on the alerts topic that were not usable alerts.",
            registry=registry,
        )
        self.changes = Counter(
            "residuals_alert_changes_total",
            "Changes appended to the alert stream, by change.",
            ("change",),
            registry=registry,
        )
        self.stream_head = Gauge(
            "residuals_alert_stream_head_sequence",
            "Highest alert-stream sequence this process has seen.",
            registry=registry,
        )
        self.watchers = Gauge(
            "residuals_alert_watchers",
            "Open WatchAlerts streams.",
            registry=registry,
        )
        self.delivered = Counter(
            "residuals_alert_deliveries_total",
            "Alert changes sent on WatchAlerts streams, by phase (backlog or live).",
            ("phase",),
            registry=registry,
        )
        self.heartbeats = Counter(
            "residuals_alert_heartbeats_total",
            "Heartbeats sent on idle WatchAlerts streams.",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "residuals_alert_delivery_latency_seconds",
            "From publication of the triggering usage (else raised_at) to a live WatchAlerts "
            "subscriber being sent the alert.",
            ("origin",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.resolutions = Counter(
            "residuals_alert_resolutions_total",
            "Alerts resolved, by resolution (settle, waive, dispute).",
            ("resolution",),
            registry=registry,
        )
        self.suspensions = Counter(
            "residuals_alert_suspensions_total",
            "Automatic suspensions worked, by outcome (suspended, already, skipped, failed).",
            ("outcome",),
            registry=registry,
        )
        self.suspensions_pending = Gauge(
            "residuals_alert_suspensions_pending",
            "Automatic suspensions not yet confirmed by the licence registry.",
            registry=registry,
        )


@functools.cache
def default_metrics() -> AlertMetrics:
    """The series on the global registry, created once per process."""
    return AlertMetrics()
