"""Licences: versions (amendments in force from a time), scope, rate card, quotas and terms.

A licence is immutable history: each amendment produces a new full :class:`LicenceVersion`
(the previous one with the amendment's fields laid over it), so "the version in force at
``t``" is a lookup, never a reconstruction. Parsing lives in :mod:`.licence_spec`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal

from residuals.domain.vocabulary import Metric, OnExceed

ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class RenderTier:
    up_to: int | None  # cumulative upper bound of renders in the period; None = open
    unit_price: Decimal


#: What a licence's terms mean when they leave a term unset: stated once, here, for the
#: dataclasses, the licence-spec parser and the protobuf codecs.
DEFAULT_UNLICENSED_USE_MULTIPLIER = Decimal(2)
DEFAULT_ON_EXCEED = OnExceed.BLOCK
DEFAULT_AUTO_SUSPEND_ON_CRITICAL = True


@dataclass(frozen=True, slots=True)
class RateCard:
    render_tiers: tuple[RenderTier, ...]
    view_cpm: Decimal = Decimal(0)
    ad_revenue_share: Decimal = Decimal(0)
    ad_floor_cpm: Decimal = Decimal(0)
    channel_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    unlicensed_use_multiplier: Decimal = DEFAULT_UNLICENSED_USE_MULTIPLIER

    def multiplier(self, channel: str | None) -> Decimal:
        if channel is None:
            return ONE
        return self.channel_multipliers.get(channel, ONE)


@dataclass(frozen=True, slots=True)
class Scope:
    categories_allowed: frozenset[str]
    categories_forbidden: frozenset[str] = frozenset()
    territories_allowed: frozenset[str] = frozenset()
    territories_forbidden: frozenset[str] = frozenset()
    channels_allowed: frozenset[str] = frozenset()
    #: Allowed categories whose every use needs the talent's approval (§5a, rules v1.1).
    approval_required: frozenset[str] = frozenset()


#: A scope's terms by name, in the order the spec and the wire list them.
SCOPE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Scope))


@dataclass(frozen=True, slots=True)
class Quota:
    metric: Metric
    limit: int
    on_exceed: OnExceed = DEFAULT_ON_EXCEED


@dataclass(frozen=True, slots=True)
class Window:
    """A suspension window ``[start, end)``; ``end`` None means open-ended.

    ``automatic`` windows were opened by the platform on critical misuse. The rules derive
    such a suspension from the events themselves, so when a period is computed an automatic
    window that began inside it is not applied again; its end still counts as the person's
    reinstatement. One that began before the period carries in like any window.
    """

    start: datetime
    end: datetime | None = None
    automatic: bool = False

    def contains(self, t: datetime) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True, slots=True)
class LicenceVersion:
    version: int
    effective_from: datetime | None  # None: from the beginning of the licence
    starts_at: datetime
    ends_at: datetime | None
    scope: Scope
    rates: RateCard
    quotas: tuple[Quota, ...] = ()
    minimum_guarantee: Decimal = Decimal(0)
    advance_outstanding: Decimal = Decimal(0)
    platform_fee: Decimal = Decimal(0)
    splits: tuple[tuple[str, Decimal], ...] = ()
    revoked_at: datetime | None = None
    wind_down_days: int = 0
    auto_suspend_on_critical: bool = DEFAULT_AUTO_SUSPEND_ON_CRITICAL

    def quota(self, metric: Metric) -> Quota | None:
        for quota in self.quotas:
            if quota.metric is metric:
                return quota
        return None

    @property
    def wind_down_ends(self) -> datetime | None:
        if self.revoked_at is None:
            return None
        return self.revoked_at + timedelta(days=self.wind_down_days)


@dataclass(frozen=True, slots=True)
class Licence:
    licence_id: str
    talent_id: str
    avatar_id: str
    vendor_id: str
    currency: str
    versions: tuple[LicenceVersion, ...]  # ascending by effective_from; first is None
    suspensions: tuple[Window, ...] = ()
    reinstatements: tuple[datetime, ...] = ()
    _starts: tuple[datetime, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        starts = tuple(v.effective_from for v in self.versions[1:] if v.effective_from)
        object.__setattr__(self, "_starts", starts)

    def version_at(self, t: datetime) -> LicenceVersion:
        """The version in force at ``t`` (amendments take effect at ``effective_from``)."""
        return self.versions[bisect_right(self._starts, t)]

    @property
    def latest(self) -> LicenceVersion:
        return self.versions[-1]

    def suspended_at(self, t: datetime, period_start: datetime | None = None) -> bool:
        """Inside a suspension window (automatic ones begun in the period excepted)."""
        for w in self.suspensions:
            if w.automatic and period_start is not None and w.start >= period_start:
                continue
            if w.contains(t):
                return True
        return False

    def reinstated_between(self, after: datetime, t: datetime) -> bool:
        """Did a person reinstate the licence after ``after`` and at or before ``t``?"""
        if any(after < r <= t for r in self.reinstatements):
            return True
        return any(
            w.automatic and w.end is not None and after < w.end <= t for w in self.suspensions
        )
