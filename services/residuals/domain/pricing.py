"""Prices of in-scope and held units (docs/ROYALTY-RULES.md §5 held pricing, §7).

Every function returns an exact, unrounded amount; rounding happens once per statement line.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import NamedTuple

from residuals.domain.licences import RateCard
from residuals.domain.vocabulary import Kind

THOUSAND = Decimal(1000)


class TierSlice(NamedTuple):
    """Renders of one event priced in one tier (a named tuple: one or two per render)."""

    tier: int  # 1-based, as on statements
    units: int
    unit_price: Decimal


def render_tier_slices(rates: RateCard, already_billed: int, units: int) -> Iterator[TierSlice]:
    """Split ``units`` renders across graduated tiers, after ``already_billed`` in the period."""
    position, remaining = already_billed, units
    for index, tier in enumerate(rates.render_tiers, start=1):
        if remaining == 0:
            return
        if tier.up_to is None or position < tier.up_to:
            take = remaining if tier.up_to is None else min(remaining, tier.up_to - position)
            yield TierSlice(index, take, tier.unit_price)
            position += take
            remaining -= take


def view_rate(rates: RateCard, channel: str | None) -> Decimal:
    """Effective CPM: the licence's view CPM times the channel multiplier."""
    return rates.view_cpm * rates.multiplier(channel)


def view_amount(rates: RateCard, channel: str | None, units: int) -> Decimal:
    return units * view_rate(rates, channel) / THOUSAND


def ad_amount(rates: RateCard, channel: str | None, units: int, revenue: Decimal) -> Decimal:
    """Revenue share with a CPM floor, times the channel multiplier."""
    share = revenue * rates.ad_revenue_share
    floor = units * rates.ad_floor_cpm / THOUSAND
    return max(share, floor) * rates.multiplier(channel)


def held_amount(
    rates: RateCard, kind: Kind, channel: str | None, units: int, revenue: Decimal
) -> Decimal:
    """Out-of-scope use at its normal rate (renders at the first tier) times the penalty."""
    if kind is Kind.RENDER:
        normal = units * rates.render_tiers[0].unit_price
    elif kind is Kind.VIEW:
        normal = view_amount(rates, channel, units)
    else:
        normal = ad_amount(rates, channel, units, revenue)
    return normal * rates.unlicensed_use_multiplier
