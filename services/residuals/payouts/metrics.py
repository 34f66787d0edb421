"""Prometheus series of the payouts service (one set per registry)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from residuals.domain.payouts import PayoutState

if TYPE_CHECKING:
    from residuals.payouts.close import CloseResult
    from residuals.payouts.reconcile import Report
    from residuals.platform.postgres import Database


class PayoutMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.statements_closed = Counter(
            "residuals_statements_closed_total",
            "Periods closed (statements written).",
            registry=registry,
        )
        self.adjustment_lines = Counter(
            "residuals_adjustment_lines_total",
            "Adjustment lines posted for late events and retractions of closed periods.",
            registry=registry,
        )
        self.payouts = Gauge(
            "residuals_payouts", "Payouts by state (all periods).", ["state"], registry=registry
        )
        self.reconciliation_differences = Gauge(
            "residuals_reconciliation_differences",
            "Failed checks of the latest reconciliation of a period.",
            ["period"],
            registry=registry,
        )

    def closed(self, result: CloseResult) -> None:
        self.statements_closed.inc()
        self.adjustment_lines.inc(result.adjustments)

    def reconciled(self, report: Report) -> None:
        self.reconciliation_differences.labels(report.period).set(
            sum(1 for c in report.checks if not c.ok)
        )

    def refresh_states(self, db: Database) -> None:
        with db.connection() as conn:
            counts = dict(conn.execute("SELECT state, count(*) FROM payouts GROUP BY state"))
        for state in PayoutState:
            self.payouts.labels(str(state)).set(int(counts.get(str(state), 0)))


@functools.cache
def default_metrics() -> PayoutMetrics:
    """The series on the global registry, created once per process."""
    return PayoutMetrics()
