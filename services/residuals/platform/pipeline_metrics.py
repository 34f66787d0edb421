"""Pipeline metrics that span services, declared once.

Dashboards (``deploy/grafana``) and alert rules (``deploy/prometheus``) use these names
next to each service's own series (``residuals_meter_*``, ``residuals_ingest_*``,
``residuals_alert*``); ``tests/e2e/test_observability.py`` fails when a panel or rule
names a series no running service exports. A service records into them through
:func:`pipeline_metrics` (one instance per process, on the global registry):

* ``latency``: publish -> stage, one histogram for the whole pipeline so one panel shows
  every hop: ``ledger`` (ledger writer), ``alert_stored`` and ``alert_delivered`` (alerts
  service); the meter's publish -> rated has its own series;
* ``accrued``: royalties by currency *and avatar* (the "top avatars" panel), recorded by
  the ledger writer from the uses it stores (exactly once, and off the meter's hot path);
* ``consumer_lag``: per consumer group and partition (the shared sink sets it from
  librdkafka statistics).

Money here is a float *estimate* for dashboards; the ledger and statements are exact.
``avatar_id`` cardinality is the number of active avatars, which Prometheus handles in
the tens of thousands.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

#: Seconds; fine around the 1 s (alert) and 2 s (ledger) targets.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
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
        self.consumer_lag = Gauge(
            "residuals_consumer_lag_records",
            "Records between a consumer group's position and the end of a partition.",
            ("group", "topic", "partition"),
            registry=registry,
        )
        #: ``labels()`` costs microseconds (a lock, label checks); a batch accrues for
        #: thousands of avatars, so children are kept here (Prometheus keeps them
        #: anyway: the cardinality is the same).
        self._accrued_children: dict[tuple[str, str], Any] = {}

    def observe_latency(self, stage: str, published_at: datetime, now: datetime) -> None:
        self.latency.labels(stage).observe(max(0.0, (now - published_at).total_seconds()))

    def accrue(self, currency: str, avatar_id: str, amount: Decimal) -> None:
        if amount > 0:
            child = self._accrued_children.get((currency, avatar_id))
            if child is None:
                child = self.accrued.labels(currency, avatar_id)
                self._accrued_children[(currency, avatar_id)] = child
            child.inc(float(amount))


@functools.cache
def pipeline_metrics() -> PipelineMetrics:
    """The process's instance on the global registry."""
    return PipelineMetrics()
