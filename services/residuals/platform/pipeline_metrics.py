"""The pipeline's business and flow metrics, declared once for every service that feeds them.

Dashboards (``deploy/grafana``) and alert rules (``deploy/prometheus``) are written
against these names; ``tests/e2e/test_observability.py`` fails when a panel or rule names
a series no running service exports. A service records into them through
:func:`pipeline_metrics` (one instance per process, on the global registry):

* the meter: ``usage_events`` (every usage record by kind and outcome), ``dead_letters``
  (source ``meter``), ``latency`` (stage ``rated``), ``accrued`` and ``held`` (estimates),
  ``consumer_lag``;
* the ingest gateway: ``dead_letters`` (source ``gateway``);
* the ledger writer: ``latency`` (stage ``ledger``), ``consumer_lag`` (the shared sink
  sets it);
* the alerts service: ``latency`` (stages ``alert_stored``, ``alert_delivered``).

Money here is a float *estimate* for dashboards; the ledger and statements are exact.
``avatar_id`` is a label of the royalties counters so dashboards can show top avatars;
its cardinality is the number of active avatars, which Prometheus handles in the tens of
thousands.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

#: Seconds; fine around the 1 s (alert) and 2 s (ledger) targets.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)

#: ``usage_events`` outcomes.
OUTCOMES = ("rated", "held", "excluded", "duplicate", "retracted", "dead")


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.usage_events = Counter(
            "residuals_usage_events_total",
            "Usage records processed by the meter, by usage kind and outcome "
            "(rated, held, excluded, duplicate, retracted, dead).",
            ("kind", "outcome"),
            registry=registry,
        )
        self.dead_letters = Counter(
            "residuals_dead_letters_total",
            "Events sent to the dead-letter topic, by reject reason and source (gateway, meter).",
            ("reason", "source"),
            registry=registry,
        )
        self.latency = Histogram(
            "residuals_pipeline_latency_seconds",
            "From publication of a usage event (gateway receipt or broker timestamp) to a "
            "pipeline stage: rated, ledger, alert_stored, alert_delivered.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.accrued = Counter(
            "residuals_royalties_accrued_total",
            "Estimated in-scope royalties accrued (unrounded, real-time estimate), by "
            "currency and avatar.",
            ("currency", "avatar_id"),
            registry=registry,
        )
        self.held = Counter(
            "residuals_royalties_held_total",
            "Estimated value of held (out-of-scope) use, by currency.",
            ("currency",),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "residuals_consumer_lag_records",
            "Records between a consumer group's position and the end of a partition.",
            ("group", "topic", "partition"),
            registry=registry,
        )

    def observe_latency(self, stage: str, published_at: datetime, now: datetime) -> None:
        self.latency.labels(stage).observe(max(0.0, (now - published_at).total_seconds()))

    def accrue(self, currency: str, avatar_id: str, amount: Decimal) -> None:
        if amount > 0:
            self.accrued.labels(currency, avatar_id).inc(float(amount))

    def hold(self, currency: str, amount: Decimal) -> None:
        if amount > 0:
            self.held.labels(currency).inc(float(amount))


_default: PipelineMetrics | None = None


def pipeline_metrics() -> PipelineMetrics:
    """The process's instance on the global registry."""
    global _default
    if _default is None:
        _default = PipelineMetrics()
    return _default
