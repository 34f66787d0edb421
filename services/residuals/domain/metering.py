"""The incremental API: classify and price one use given the licence and its counters.

The real-time meter calls :func:`rate_event` per event in arrival order (an estimate); the
period statement folds the same function over the period's events in
``(occurred_at, event_id)`` order (the contract). One function, so no rule exists twice.

Products and sums of rates and counts are exact in any decimal context (they need far fewer
than 28 digits); the one division that may not terminate, a pro-rata split of ad revenue,
runs in the 60-digit money context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from residuals.domain.approvals import Approval, approved
from residuals.domain.events import UsageEvent
from residuals.domain.licences import Licence, LicenceVersion, Quota
from residuals.domain.money import MONEY_CONTEXT, ZERO
from residuals.domain.pricing import (
    THOUSAND,
    ad_amount,
    held_amount,
    render_tier_slices,
    view_rate,
)
from residuals.domain.scope import exclusion, scope_violation
from residuals.domain.vocabulary import Kind, Metric, OnExceed, Violation


@dataclass(slots=True)
class LicenceCounters:
    """Per-licence state the rules need between events of one period.

    Tier position and quota usage reset with the period; an automatic suspension does not
    (it lasts until a person reinstates the licence).
    """

    period: str | None = None
    period_start: datetime | None = None
    billed_renders: int = 0
    quota_used: dict[str, int] = field(default_factory=dict)
    quota_near: set[str] = field(default_factory=set)
    auto_suspended_since: datetime | None = None
    #: Units of approved renders by approval id; an approval spans periods, so this does
    #: not reset with them (§5a).
    approval_renders: dict[str, int] = field(default_factory=dict)

    def copy(self) -> LicenceCounters:
        """An independent copy (what-if rating: the pre-flight check)."""
        return replace(
            self,
            quota_used=dict(self.quota_used),
            quota_near=set(self.quota_near),
            approval_renders=dict(self.approval_renders),
        )

    def enter_period(self, period: str, start: datetime | None = None) -> None:
        """Start counting ``period``; ``start`` marks where automatic windows stop applying."""
        if self.period != period:
            self.period = period
            self.period_start = start
            self.billed_renders = 0
            self.quota_used = {}
            self.quota_near = set()


class Portion(NamedTuple):
    """Units of one event that land on one statement line (billed) or one held line."""

    units: int
    version: int
    violation: Violation | None  # None: billed
    tier: int | None = None  # billed renders
    channel: str | None = None
    rate: Decimal | None = None  # render unit price / effective view CPM
    revenue: Decimal = ZERO  # ad impressions, pro rata to units
    amount: Decimal = ZERO  # exact, unrounded

    @property
    def held(self) -> bool:
        return self.violation is not None


class Rating(NamedTuple):
    """Everything one use did: exclusion, priced portions, violations, suspension."""

    event: UsageEvent
    version: int
    excluded: str | None = None  # "ivt" | "non_viewable"
    portions: tuple[Portion, ...] = ()
    violations: tuple[Violation, ...] = ()
    suspended_licence: bool = False

    @property
    def earned_estimate(self) -> Decimal:
        return sum((p.amount for p in self.portions if not p.held), ZERO)

    @property
    def held_estimate(self) -> Decimal:
        return sum((p.amount for p in self.portions if p.held), ZERO)


_METRICS: dict[str, Metric] = {m.value: m for m in Metric}


def _revenue_share(event: UsageEvent, units: int) -> Decimal:
    """Ad revenue for ``units`` of the event, pro rata when the event is split."""
    revenue = event.ad_revenue or ZERO
    if units == event.quantity:
        return revenue
    return MONEY_CONTEXT.divide(revenue * units, event.quantity)


def _held(event: UsageEvent, v: LicenceVersion, units: int, violation: Violation) -> Portion:
    revenue = _revenue_share(event, units) if event.kind is Kind.AD_IMPRESSION else ZERO
    amount = held_amount(v.rates, event.kind, event.channel, units, revenue)
    return Portion(
        units, v.version, violation, channel=event.channel, revenue=revenue, amount=amount
    )


def _billed(
    event: UsageEvent, v: LicenceVersion, units: int, counters: LicenceCounters
) -> list[Portion]:
    rates = v.rates
    if event.kind is Kind.RENDER:
        slices = list(render_tier_slices(rates, counters.billed_renders, units))
        counters.billed_renders += units
        return [
            Portion(
                s.units,
                v.version,
                None,
                tier=s.tier,
                rate=s.unit_price,
                amount=s.units * s.unit_price,
            )
            for s in slices
        ]
    if event.kind is Kind.VIEW:
        rate = view_rate(rates, event.channel)
        amount = units * rate / THOUSAND  # view_amount(), without working the rate out again
        return [Portion(units, v.version, None, channel=event.channel, rate=rate, amount=amount)]
    revenue = _revenue_share(event, units)
    amount = ad_amount(rates, event.channel, units, revenue)
    return [Portion(units, v.version, None, channel=event.channel, revenue=revenue, amount=amount)]


_NO_APPROVALS: Mapping[str, Approval] = {}


def rate_event(
    event: UsageEvent,
    licence: Licence,
    counters: LicenceCounters,
    approvals: Mapping[str, Approval] = _NO_APPROVALS,
) -> Rating:
    """Classify and price one valid, de-duplicated usage event (§4-7); updates ``counters``.

    ``approvals`` are the talent's approvals by id (§5a): a use in one of the version's
    approval-required categories needs a live one, else it is held as UNAPPROVED_USE."""
    if event.kind is Kind.RETRACTION:
        raise ValueError("retractions are resolved by identity, not rated")
    version = licence.version_at(event.occurred_at)
    excluded = exclusion(event)
    if excluded is not None:
        return Rating(event, version.version, excluded=excluded)

    violation = scope_violation(
        event, licence, version, counters.auto_suspended_since, counters.period_start
    )
    if (
        violation is None
        and event.category in version.scope.approval_required
        and not approved(event, approvals, counters.approval_renders)
    ):
        violation = Violation.UNAPPROVED_USE
    if violation is not None:
        suspends = (
            violation.suspends
            and version.auto_suspend_on_critical
            and counters.auto_suspended_since is None
        )
        if suspends:
            counters.auto_suspended_since = event.occurred_at
        held = _held(event, version, event.quantity, violation)
        return Rating(event, version.version, None, (held,), (violation,), suspends)
    return _rate_in_scope(event, version, counters)


def _rate_in_scope(event: UsageEvent, v: LicenceVersion, counters: LicenceCounters) -> Rating:
    metric = ""
    quota: Quota | None = None
    if v.quotas:  # the metric's name only when there are quotas (an enum's value costs)
        metric = event.kind.value
        quota = v.quota(_METRICS[metric])
    billable, over = event.quantity, 0
    violations: list[Violation] = []
    if quota is not None:
        used = counters.quota_used.get(metric, 0)
        now = used + event.quantity
        counters.quota_used[metric] = now
        if metric not in counters.quota_near and now * 5 >= quota.limit * 4:
            counters.quota_near.add(metric)
            violations.append(Violation.QUOTA_NEAR)
        if now > quota.limit:
            over = now - max(used, quota.limit)
            violations.append(Violation.QUOTA_EXCEEDED)
            if quota.on_exceed is OnExceed.BLOCK:
                billable -= over
    portions = _billed(event, v, billable, counters) if billable else []
    if over and quota is not None and quota.on_exceed is OnExceed.BLOCK:
        portions.append(_held(event, v, over, Violation.QUOTA_EXCEEDED))
    return Rating(event, v.version, None, tuple(portions), tuple(violations))
